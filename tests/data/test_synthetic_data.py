"""Tests for nfnets.data.synthetic: one noise batch per process, repeated."""
import itertools

import numpy as np
import pytest

from nfnets import data
from nfnets import train
from nfnets.cli import config_flag
from nfnets.train import config as train_config
from tests.train import test_experiment


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _config(**overrides):
  config = data.default_config('synthetic')
  config.image_size = config.eval_image_size = 8
  config.update(overrides)
  return config


def test_defaults_are_imagenet_sized():
  config = data.default_config('synthetic')
  data.validate(config)
  assert (config.image_size, config.eval_image_size) == (224, 224)
  assert data.num_classes(config) == 1000
  # ImageNet's train split, so epoch-based schedules give the same steps.
  assert data.num_examples(config) == 1_281_167
  assert data.num_examples(config, 'validation') == 2048
  config.num_classes = 7
  assert data.num_classes(config) == 7


def test_batches_are_standard_normal_images_with_labels_in_range():
  config = _config(image_size=16, num_classes=7)
  batch = next(data.build_train(config, batch_size=64, seed=0))
  assert set(batch) == {'images', 'labels'}
  assert batch['images'].shape == (64, 16, 16, 3)
  assert batch['images'].dtype == np.float32
  assert batch['labels'].shape == (64,) and batch['labels'].dtype == np.int32
  assert batch['labels'].min() >= 0 and batch['labels'].max() < 7
  assert len(set(batch['labels'])) == 7  # 64 draws hit all 7 classes.
  # 49,152 N(0, 1) samples: the mean's standard error is 0.0045.
  assert abs(batch['images'].mean()) < 0.02
  assert abs(batch['images'].std() - 1) < 0.02


def test_every_step_yields_the_same_read_only_batch():
  stream = data.build_train(_config(), batch_size=4, seed=0)
  first = next(stream)
  for batch in _take(stream, 100):
    assert batch is first
  for array in first.values():
    assert not array.flags.writeable
    with pytest.raises(ValueError):
      array[0] = 0


def test_start_step_seed_and_process_layout():
  config = _config()
  fresh = next(data.build_train(config, batch_size=8, seed=1))
  resumed = next(data.build_train(config, batch_size=8, seed=1,
                                  start_step=5))
  other = next(data.build_train(config, batch_size=8, seed=2))
  for k in fresh:
    np.testing.assert_array_equal(fresh[k], resumed[k])
  assert not np.array_equal(fresh['images'], other['images'])
  # Two processes of 4 hold the two halves of the one-process batch of 8.
  halves = [next(data.build_train(config, batch_size=4, seed=1,
                                  process_index=p, process_count=2))
            for p in range(2)]
  for k in fresh:
    np.testing.assert_array_equal(
        np.concatenate([h[k] for h in halves]), fresh[k])


def test_mixing_adds_targets_the_train_step_reads():
  config = _config(image_size=1, mixup_alpha=0.2, cutmix_alpha=1.0,
                   num_classes=5)
  batch = next(data.build_train(config, batch_size=2000, seed=0))
  assert set(batch) == {'images', 'labels', 'mix_labels', 'mix_ratio'}
  assert batch['mix_labels'].dtype == np.int32
  assert batch['mix_ratio'].dtype == np.float32
  assert batch['mix_labels'].min() >= 0 and batch['mix_labels'].max() < 5
  ratio = batch['mix_ratio']
  assert np.all((ratio >= 0) & (ratio <= 1))
  # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)): CutMix's
  # alpha = 1 (uniform, 1/12) at even positions, MixUp's 0.2 (0.179) at odd.
  for part, alpha in ((ratio[::2], 1.0), (ratio[1::2], 0.2)):
    assert abs(part.mean() - 0.5) < 0.05
    assert abs(part.var() - 1 / (4 * (2 * alpha + 1))) < 0.02


def test_eval_pads_the_last_batch_and_lines_up_across_processes():
  config = _config()
  batches = list(data.build_eval(config, batch_size=600))
  assert [int(b['mask'].sum()) for b in batches] == [600, 600, 600, 248]
  assert all(b['images'].shape == (600, 8, 8, 3) for b in batches)
  assert all(b['labels'].max() < 1000 for b in batches)
  shards = [list(data.build_eval(config, batch_size=300, process_index=p,
                                 process_count=2)) for p in range(2)]
  for shard in shards:
    assert [int(b['mask'].sum()) for b in shard] == [300, 300, 300, 124]
  # The processes hold the two halves of the one-process eval set.
  np.testing.assert_array_equal(
      np.concatenate([shards[0][0]['images'][:8], shards[1][0]['images'][:8]]),
      next(data.build_eval(config, batch_size=2048))['images'][
          np.r_[0:8, 1024:1032]])
  # A batch larger than the split is one padded batch.
  (only,) = data.build_eval(config, batch_size=4096)
  assert only['images'].shape[0] == 4096 and only['mask'].sum() == 2048


@pytest.mark.parametrize('field, value', [
    ('data_dir', '/data/tfds'), ('randaugment_layers', 2),
    ('crop_padding', 8), ('max_shift', 2), ('shuffle_buffer', 10),
    ('eval_crop', 'aspect'),
])
def test_a_recipes_host_options_are_accepted_and_not_read(field, value):
  plain = data.build_train(_config(), batch_size=4, seed=0)
  config = _config(**{field: value})
  data.validate(config)
  run_config = test_experiment.tiny_config()
  run_config.data = config
  train_config.validate_config(run_config, num_devices=1)
  changed = data.build_train(config, batch_size=4, seed=0)
  first, second = next(plain), next(changed)
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])


def test_split_slices_are_errors():
  config = _config(train_split='train[:10%]')
  with pytest.raises(ValueError, match=r'slices are a tensorflow-datasets'):
    data.validate(config)


@pytest.mark.slow
def test_runner_trains_two_steps_on_synthetic_data(tmp_path):
  config = test_experiment.tiny_config(num_steps=2)
  config.data.dataset = 'synthetic'
  config.data.max_shift = 0  # A digits option.
  config.data.num_classes = 10
  config.eval.batch_size = 512
  metrics = train.train_and_evaluate(config, tmp_path)
  assert metrics['step'] == 2
  assert np.isfinite(metrics['train/loss'])
  # Random labels: any accuracy is chance, but the eval path ran.
  assert 0 <= metrics['eval/top1'] <= metrics['eval/top5'] <= 1


@pytest.mark.parametrize('name', ['nfnet_f0', 'efficientnet_b0',
                                  'eca_nfnet_l0', 'shufflenet_v2_x1_0',
                                  'nf_resnet50', 'ho_resnet_cifar'])
def test_any_recipe_switches_with_the_one_flag(name):
  config = config_flag.load(name)
  config.data.dataset = 'synthetic'
  train_config.validate_config(config, num_devices=1)
  assert data.num_classes(config.data) == 1000
