"""The input-pipeline benchmark: its fake ImageNet, its PIL loader, a run.

The PIL loader's crop and mixing are checked against their closed forms
(torchvision's RandomResizedCrop rules, the pasted and blended pixels);
`--small` runs every stage of both loaders once, in worker processes, on a
tiny fake ImageNet whose labels are read back through tfds.
"""
import json
import math

import numpy as np
import pytest

from benchmarks import fake_imagenet
from benchmarks import input_pipeline

_SMALL_FAKE = {'num_classes': 2, 'train_per_class': 8, 'num_val': 4}


def _loader(**overrides) -> input_pipeline.PilLoader:
  spec = dict(image_size=16, eval_image_size=16, crop_padding=4, batch=4,
              seed=0, randaugment_layers=2, randaugment_magnitude=10.0,
              mixup_alpha=0.2, cutmix_alpha=1.0)
  spec.update(overrides)
  return input_pipeline.PilLoader(spec)


def test_random_resized_crop_box_follows_torchvision():
  rng = np.random.default_rng(0)
  width, height = 80, 60
  boxes = [input_pipeline.random_resized_crop_box(width, height, rng)
           for _ in range(300)]
  for top, left, h, w in boxes:
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    # Rounding w and h to pixels moves area and ratio a little.
    assert 0.08 * width * height * 0.8 <= h * w <= width * height
    assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
  assert len(set(boxes)) > 100
  # No box of 8%+ of the area fits a 10 x 200 strip at ratio 3/4..4/3:
  # torchvision's fallback is the central crop at the nearest ratio, 3/4.
  assert input_pipeline.random_resized_crop_box(10, 200, rng) == (
      (200 - 13) // 2, 0, 13, 10)


def test_pil_mix_pastes_and_blends_reversed_partners():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(8, 12, 10, 3)).astype(np.float32)
  labels = np.arange(8, dtype=np.int32)
  out = _loader().mix(images, labels, np.random.default_rng(2))
  np.testing.assert_array_equal(out['mix_labels'], [3, 2, 1, 0, 7, 6, 5, 4])
  partner = np.concatenate([images[:4][::-1], images[4:][::-1]])
  # CutMix: every pixel is its own or its partner's, in the stated ratio.
  for i in range(4):
    own = np.all(out['images'][i] == images[i], axis=-1)
    other = np.all(out['images'][i] == partner[i], axis=-1)
    assert np.all(own | other)
    np.testing.assert_allclose(own.mean(), out['mix_ratio'][i], atol=1e-6)
  # MixUp: one ratio r for the half, r * own + (1 - r) * partner.
  r = out['mix_ratio'][4:]
  assert np.all(r == r[0]) and 0 <= r[0] <= 1
  np.testing.assert_allclose(
      out['images'][4:], r[0] * images[4:] + (1 - r[0]) * partner[4:],
      rtol=1e-5, atol=1e-5)


def test_photo_jpegs_have_imagenet_like_sizes_and_differ():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  photos = fake_imagenet.source_photos()
  rng = np.random.default_rng(0)
  jpegs = [fake_imagenet.photo_jpeg(photos, rng) for _ in range(24)]
  assert len(set(jpegs)) == len(jpegs)
  # pylint: disable-next=protected-access
  aspects = [a for a, _ in fake_imagenet._ASPECTS]
  for jpeg in jpegs:
    width, height = Image.open(io.BytesIO(jpeg)).size
    assert 300 <= width <= 500
    assert any(height == round(width / a) for a in aspects)
  stats = fake_imagenet.jpeg_stats(jpegs)
  assert stats['count'] == 24
  # ImageNet's JPEGs average ~110 KB; a few dozen vary, but not 2x.
  assert 50e3 < stats['mean_bytes'] < 250e3


def test_fake_imagenet_refuses_a_directory_it_did_not_build(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(fake_imagenet.FakeImageNetError, match='not empty'):
    fake_imagenet.build(tmp_path, **_SMALL_FAKE)


def test_dashed_flags_parse_like_absl_ones():
  dashed = input_pipeline.parse_args(['--fake-dir', '/tmp/x', '--no-save',
                                      '--image-size', '64'])
  assert dashed == input_pipeline.parse_args(
      ['--fake_dir=/tmp/x', '--no_save', '--image_size=64'])
  assert dashed.randaugment_magnitude == 10.0
  assert dashed.randaugment_layers == 4


@pytest.mark.slow
def test_small_run_rates_every_stage_and_labels_round_trip(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  results = tmp_path / 'results.jsonl'
  fake_dir = tmp_path / 'fake'
  record = input_pipeline.run(input_pipeline.parse_args(
      ['--small', f'--fake_dir={fake_dir}', f'--results={results}']))
  saved = [json.loads(line) for line in results.read_text().splitlines()]
  assert len(saved) == 1 and saved[0]['rows'] == record['rows']
  stages = {(loader, split, stage)
            for loader, split, stage, _, _ in input_pipeline.STAGES}
  rows = record['rows']
  assert {(r['loader'], r['split'], r['stage']) for r in rows} == stages
  assert len(rows) == len(stages)
  for r in rows:
    assert r['threads'] == r['cores'] == 1
    assert math.isfinite(r['images_per_s']) and r['images_per_s'] > 0, r
    np.testing.assert_allclose(r['images_per_s'],
                               r['images'] / r['seconds'])
  assert len(record['load_start']) == 3
  summary = record['summary']['1']
  np.testing.assert_allclose(
      summary['train_over_pil'],
      summary['train_per_core'] / summary['pil_train_per_core'])
  chain = summary['train_stages_per_core']
  assert tuple(chain) == input_pipeline.TRAIN_CHAIN
  under = [s for s, rate in chain.items()
           if rate < 2 * summary['pil_train_per_core']]
  assert summary['first_stage_under_2x_pil'] == (under[0] if under else None)

  # The fake ImageNet's labels, read back through tfds, are the classes of
  # tfds' shipped labels.txt that its files were written for: train files
  # by name, the k-th validation file by line k of validation_labels.txt.
  built = fake_imagenet.build(fake_dir, **_SMALL_FAKE)  # Reused as it is.
  class_ids = {s: i for i, s in
               enumerate(fake_imagenet.read_tfds_list('labels.txt'))}
  val_labels = fake_imagenet.read_tfds_list('validation_labels.txt')
  builder = tfds.builder('imagenet2012', data_dir=str(built.data_dir))
  train = list(tfds.as_numpy(builder.as_dataset(split='train')))
  assert len(train) == 16
  for r in train:
    assert r['label'] == class_ids[r['file_name'].decode().split('_')[0]]
  val = list(tfds.as_numpy(builder.as_dataset(split='validation')))
  assert len(val) == 4
  for r in val:
    k = int(r['file_name'].decode()[len('ILSVRC2012_val_'):-5]) - 1
    assert r['label'] == class_ids[val_labels[k]]
  with pytest.raises(fake_imagenet.FakeImageNetError, match='built with'):
    fake_imagenet.build(fake_dir, **dict(_SMALL_FAKE, num_val=5))
