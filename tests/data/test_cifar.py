"""Tests for nfnets.data.cifar: CIFAR-10/100 through tensorflow-datasets.

The data are a real tfds CIFAR-10 and CIFAR-100, prepared offline by tfds'
own builders from binary files in the published layout
(`cifar-10-batches-bin/data_batch_*.bin`, `cifar-100-binary/train.bin`, ...)
holding random-noise images the test wrote. So every expected pixel is
known, and no two crops of different images coincide: each training image
can be traced back to the image, shift and flip it came from by brute force
in NumPy. (`tfds.testing.mock_data` would not do: it ignores the per-process
sub-splits, and its first read costs ~7 s here.)
"""
import itertools
import os
import pathlib
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from nfnets import data
from nfnets import errors

# Images per split: 24 = 3 steps of 8, or 2 processes x 3 steps of 4.
N_TRAIN, N_TEST = 24, 10
# The published per-channel statistics on 0..255 (see nfnets.data.base).
STATS = {'cifar10': ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
         'cifar100': ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4))}
# The binary layout tfds' builders read: (directory, label files and their
# number of names, files per split, label bytes per record).
_LAYOUT = {
    'cifar10': ('cifar-10-batches-bin', {'batches.meta.txt': 10},
                {'train': [f'data_batch_{i}.bin' for i in range(1, 6)],
                 'test': ['test_batch.bin']}),
    'cifar100': ('cifar-100-binary', {'coarse_label_names.txt': 20,
                                      'fine_label_names.txt': 100},
                 {'train': ['train.bin'], 'test': ['test.bin']}),
}


def _write_binaries(root: pathlib.Path, dataset: str,
                    rng: np.random.Generator) -> dict:
  """Writes a CIFAR download's extracted files; returns what they hold.

  Returns:
    split -> (uint8 [N, 32, 32, 3] images, int64 [N] labels, int64 [N]
    coarse labels (CIFAR-100; the fine label // 5 here)).
  """
  folder, label_files, split_files = _LAYOUT[dataset]
  path = root / folder
  path.mkdir(parents=True)
  for name, count in label_files.items():
    (path / name).write_text('\n'.join(f'{name}{i}' for i in range(count)))
  num_classes = 10 if dataset == 'cifar10' else 100
  written = {}
  for split, n in (('train', N_TRAIN), ('test', N_TEST)):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n)
    coarse = labels // 5
    for name, part in zip(split_files[split],
                          np.array_split(np.arange(n), len(split_files[split]))):
      with open(path / name, 'wb') as f:
        for i in part:
          head = ([labels[i]] if dataset == 'cifar10'
                  else [coarse[i], labels[i]])
          # Each record: label byte(s), then the image as [3, 32, 32].
          f.write(bytes(int(v) for v in head)
                  + images[i].transpose(2, 0, 1).tobytes())
    written[split] = (images, labels, coarse)
  return written


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(tfds data_dir, dataset -> split -> what `_write_binaries` wrote)."""
  root = tmp_path_factory.mktemp('cifar')
  rng = np.random.default_rng(0)
  written = {}
  for dataset in ('cifar10', 'cifar100'):
    source = root / 'downloads' / dataset
    written[dataset] = _write_binaries(source, dataset, rng)
    # The download is the only step that needs the internet.
    with mock.patch.object(tfds.download.DownloadManager,
                           'download_and_extract',
                           lambda self, url, src=source: str(src)):
      tfds.builder(dataset, data_dir=str(root / 'tfds')).download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              try_download_gcs=False))
  return root / 'tfds', written


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _config(data_dir, dataset='cifar10', **overrides):
  config = data.default_config(dataset)
  config.data_dir = str(data_dir)
  config.shuffle_buffer = N_TRAIN
  config.update(overrides)
  return config


def _file_order(data_dir, dataset, split):
  """Indices (into what was written) of a split's records in file order."""
  ds = tfds.builder(dataset, data_dir=str(data_dir)).as_dataset(
      split=split, shuffle_files=False)
  # tfds ids are '<split>_<index in the binary files>'.
  return np.array([int(r['id'].decode().rsplit('_', 1)[1])
                   for r in tfds.as_numpy(ds)])


def _trace(images, raw, dataset):
  """Finds each image's source, shift and flip by exhaustive search.

  Args:
    images: normalized float32 [B, 32, 32, 3] training images.
    raw: uint8 [N, 32, 32, 3] source images.
    dataset: picks the statistics.

  Returns:
    One (source index, dy, dx, flipped) per image: the image equals the
    source zero-padded by 4 px, cropped at offset (dy, dx) in [-4, 4] from
    the centre, then mirrored if flipped. Fails if there is no such match or
    more than one.
  """
  mean, std = (np.asarray(s, np.float32) for s in STATS[dataset])
  pixels = images * std + mean
  padded = np.pad(raw.astype(np.float32), ((0, 0), (4, 4), (4, 4), (0, 0)))
  found = [[] for _ in images]
  for dy, dx, flipped in itertools.product(range(9), range(9), (0, 1)):
    crops = padded[:, dy:dy + 32, dx:dx + 32]
    if flipped:
      crops = crops[:, :, ::-1]
    # Row 16 of every crop lies inside its image: compare it first ([B, N]),
    # then whole images for the candidates it leaves.
    err = np.abs(pixels[:, None, 16] - crops[None, :, 16]).max(axis=(2, 3))
    for b, j in zip(*np.nonzero(err < 0.01)):
      if np.abs(pixels[b] - crops[j]).max() < 0.01:
        found[b].append((int(j), dy - 4, dx - 4, bool(flipped)))
  for b, matches in enumerate(found):
    assert len(matches) == 1, f'image {b}: {matches or "no match"}'
  return [matches[0] for matches in found]


def test_train_images_are_padded_crops_and_flips_of_an_epoch(prepared):
  data_dir, written = prepared
  raw, labels, _ = written['cifar10']['train']
  epoch = _take(data.build_train(_config(data_dir), batch_size=8, seed=0), 3)
  batch = epoch[0]
  assert set(batch) == {'images', 'labels'}
  assert batch['images'].shape == (8, 32, 32, 3)
  assert batch['images'].dtype == np.float32
  assert batch['labels'].dtype == np.int32
  traced = _trace(np.concatenate([b['images'] for b in epoch]), raw,
                  'cifar10')
  # One epoch visits every image once, with its own label.
  sources = [j for j, *_ in traced]
  assert sorted(sources) == list(range(N_TRAIN))
  np.testing.assert_array_equal(
      np.concatenate([b['labels'] for b in epoch]), labels[sources])
  # Shifts span both directions along both axes, and both flips occur.
  dys = {dy for _, dy, _, _ in traced}
  dxs = {dx for _, _, dx, _ in traced}
  assert min(dys) < 0 < max(dys) and min(dxs) < 0 < max(dxs)
  assert {f for *_, f in traced} == {False, True}


def test_eval_is_the_normalized_image_and_pads_the_last_batch(prepared):
  data_dir, written = prepared
  raw, labels, _ = written['cifar100']['test']
  config = _config(data_dir, 'cifar100')
  batches = list(data.build_eval(config, batch_size=4))
  assert [int(b['mask'].sum()) for b in batches] == [4, 4, 2]
  assert all(b['images'].shape == (4, 32, 32, 3) for b in batches)
  np.testing.assert_array_equal(batches[-1]['images'][2:], 0)
  images = np.concatenate([b['images'][b['mask']] for b in batches])
  order = _file_order(data_dir, 'cifar100', 'test')
  np.testing.assert_array_equal(
      np.concatenate([b['labels'][b['mask']] for b in batches]),
      labels[order])
  mean, std = (np.asarray(s) for s in STATS['cifar100'])
  np.testing.assert_allclose(images, (raw[order] - mean) / std, atol=1e-5)
  # So the per-channel moments are those of the images, standardized.
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)),
                             (raw.mean(axis=(0, 1, 2)) - mean) / std,
                             atol=1e-5)
  np.testing.assert_allclose(images.std(axis=(0, 1, 2)),
                             raw.std(axis=(0, 1, 2)) / std, rtol=1e-4)
  np.testing.assert_allclose(data.preprocess_for_eval(raw[order], config),
                             images, atol=1e-5)


def test_other_resolutions_resize_bilinearly(prepared):
  data_dir, written = prepared
  raw = written['cifar10']['test'][0]
  config = _config(data_dir, image_size=16, eval_image_size=24)
  train = next(data.build_train(config, batch_size=4, seed=0))
  evals = next(data.build_eval(config, batch_size=N_TEST))
  assert train['images'].shape == (4, 16, 16, 3)
  assert evals['images'].shape == (N_TEST, 24, 24, 3)
  # tf.image.resize in tf.data against jax.image.resize (predict's path).
  order = _file_order(data_dir, 'cifar10', 'test')
  np.testing.assert_allclose(data.preprocess_for_eval(raw[order], config),
                             evals['images'], atol=1e-4)


def test_train_is_seeded_and_resumes_across_epochs_with_mixing(prepared):
  data_dir, _ = prepared
  config = _config(data_dir, mixup_alpha=0.2, cutmix_alpha=1.0)
  kwargs = dict(batch_size=8, seed=3)
  # 3 steps per epoch: step 4 is inside the second epoch.
  fresh = _take(data.build_train(config, **kwargs), 6)
  resumed = _take(data.build_train(config, start_step=4, **kwargs), 2)
  other = next(data.build_train(config, **{**kwargs, 'seed': 4}))
  assert set(fresh[0]) == {'images', 'labels', 'mix_labels', 'mix_ratio'}
  for b in fresh:
    assert b['mix_labels'].dtype == np.int32
    assert np.all((b['mix_ratio'] >= 0) & (b['mix_ratio'] <= 1))
    assert set(b['mix_labels']) <= set(b['labels'])
  for a, b in zip(fresh[4:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(other['images'], fresh[0]['images'])
  # Epochs are reshuffled, not replayed.
  assert not np.array_equal(fresh[0]['labels'], fresh[3]['labels'])


def test_two_processes_read_disjoint_shards(prepared):
  data_dir, written = prepared
  config = _config(data_dir)
  # Shards of 12: one epoch is 3 steps of 4 on each process.
  seen = []
  for p in range(2):
    epoch = _take(data.build_train(config, batch_size=4, seed=0,
                                   process_index=p, process_count=2), 3)
    seen.append({j for j, *_ in _trace(
        np.concatenate([b['images'] for b in epoch]),
        written['cifar10']['train'][0], 'cifar10')})
  assert len(seen[0]) == len(seen[1]) == N_TRAIN // 2
  assert seen[0] | seen[1] == set(range(N_TRAIN))
  # Eval: shards of 5 in batches of 3 (the last padded) on both processes.
  evals = [list(data.build_eval(config, batch_size=3, process_index=p,
                                process_count=2)) for p in range(2)]
  assert [len(e) for e in evals] == [2, 2]
  keys = [[im.tobytes() for b in e for im in b['images'][b['mask']]]
          for e in evals]
  assert len(keys[0]) == len(keys[1]) == N_TEST // 2
  whole = next(data.build_eval(config, batch_size=N_TEST))['images']
  assert sorted(keys[0] + keys[1]) == sorted(im.tobytes() for im in whole)


def test_cifar100_trains_on_its_100_fine_labels(prepared):
  data_dir, written = prepared
  raw, fine, coarse = written['cifar100']['train']
  config = _config(data_dir, 'cifar100')
  assert data.num_classes(config) == 100
  assert data.num_classes(_config(data_dir)) == 10
  epoch = _take(data.build_train(config, batch_size=8, seed=0), 3)
  sources = [j for j, *_ in _trace(
      np.concatenate([b['images'] for b in epoch]), raw, 'cifar100')]
  labels = np.concatenate([b['labels'] for b in epoch])
  np.testing.assert_array_equal(labels, fine[sources])
  assert np.any(labels != coarse[sources])


def test_sizes_come_from_the_prepared_metadata_or_the_published_ones(
    prepared, tmp_path):
  data_dir, _ = prepared
  assert data.num_examples(_config(data_dir)) == N_TRAIN
  assert data.num_examples(_config(data_dir, 'cifar100'), 'test') == N_TEST
  assert data.num_examples(_config(data_dir), 'train[:50%]') == N_TRAIN // 2
  data.check_available(_config(data_dir, 'cifar100'))
  # Without the data: the published sizes, so configs can be checked.
  for dataset in ('cifar10', 'cifar100'):
    config = _config(tmp_path, dataset)
    assert data.num_examples(config) == 50_000
    assert data.num_examples(config, 'test') == 10_000


def test_missing_data_names_the_prepare_command(tmp_path):
  config = _config(tmp_path)
  with pytest.raises(errors.UserError) as error:
    data.check_available(config)
  assert isinstance(error.value, FileNotFoundError)
  message = str(error.value)
  assert len(message.splitlines()) <= 3, message
  assert (f"tfds.builder('cifar10', data_dir='{tmp_path}')"
          '.download_and_prepare()') in message
  with pytest.raises(errors.UserError, match='download_and_prepare'):
    data.build_train(config, batch_size=2, seed=0)


@pytest.mark.parametrize('field, value, message', [
    ('crop_padding', 8, r'data\.crop_padding is only read by .*imagenet2012'),
    ('max_shift', 2, r"data\.max_shift is only read by 'digits'"),
    ('eval_crop', 'aspect', r"eval_crop for 'cifar10' must be one of"),
    ('eval_split', 'validation', r'known splits: train, test'),
])
def test_options_cifar_does_not_read_are_errors(field, value, message):
  with pytest.raises(ValueError, match=message):
    data.validate(_config(os.devnull, **{field: value}))


def test_options_cifar_reads_are_accepted():
  data.validate(_config(os.devnull, randaugment_layers=2, mixup_alpha=0.2,
                        cutmix_alpha=1.0, train_split='train[:10%]',
                        shuffle_buffer=100, prefetch=4, image_size=224))
