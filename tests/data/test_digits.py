"""Few-example digits: the fixed class-balanced subset and its batches."""
import numpy as np
import pytest

from nfnets import data
from nfnets import errors
from nfnets.data import digits


def test_subset_is_balanced_fixed_and_nested():
  _, labels = digits.raw_images('train')
  # Up to 10x the smallest class every class can get its share.
  for num in (10, 95, 200, 10 * np.bincount(labels).min()):
    idx = digits.train_subset(num)
    assert len(idx) == len(np.unique(idx)) == num
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < len(labels)
    counts = np.bincount(labels[idx], minlength=10)
    # Dealt out in turn: floor(num / 10) or one more per class.
    assert counts.min() == num // 10 and counts.max() <= -(-num // 10)
  np.testing.assert_array_equal(digits.train_subset(200),
                                digits.train_subset(200))
  assert set(digits.train_subset(100)) <= set(digits.train_subset(200))
  np.testing.assert_array_equal(digits.train_subset(1437), np.arange(1437))


def test_batches_of_a_subset_cycle_through_exactly_its_images():
  config = data.default_config()
  config.image_size, config.max_shift = 8, 0
  num, batch_size = 30, 10
  stream = digits.build_train(config, batch_size=batch_size, seed=5,
                              train_examples=num)
  epoch = [next(stream) for _ in range(num // batch_size)]
  images = np.concatenate([b['images'] for b in epoch])[..., 0]
  labels = np.concatenate([b['labels'] for b in epoch])
  # At 8 px the pixels are the raw ones, normalized: undo that in NumPy.
  mean, std = data.mean_std(config)
  raw = np.round(images * std[0] + mean[0]).astype(np.uint8)
  all_x, all_y = digits.raw_images('train')
  keep = digits.train_subset(num)
  want = sorted((x.tobytes(), int(y)) for x, y in zip(all_x[keep],
                                                      all_y[keep]))
  got = sorted((x.tobytes(), int(y)) for x, y in zip(raw, labels))
  assert got == want  # One epoch: each subset image exactly once.


@pytest.mark.parametrize('num', [0, 1438])
def test_subset_size_out_of_range_is_a_user_error(num):
  with pytest.raises(errors.InputError, match='1 to 1437'):
    digits.train_subset(num)
