"""ImageNet (ILSVRC-2012) through tensorflow-datasets and tf.data.

Train: inception-style random crop (decoding only the crop), resize to
`image_size`, horizontal flip, optional RandAugment, normalization, then
CutMix/MixUp per batch. Eval: full decode, then the geometry
`data.eval_crop` names (see `nfnets.data.base.preprocess_for_eval`, which
reproduces it for in-memory images).

Each process reads its own contiguous share of the split
(`tfds.even_splits`, what `tfds.split_for_jax_process` does), so multi-host
runs read disjoint examples.

Determinism and resuming: an epoch's file order and shuffle use seeds
derived from (seed, process_index, epoch), and every example's augmentation
a stateless seed from (seed, process_index, epoch, position in the epoch).
An epoch is `min_p(shard_p) // batch_size` steps on every process. Resuming
at step k therefore rebuilds epoch k // steps_per_epoch and skips the first
(k mod steps_per_epoch) * batch_size records *before* decoding: the cost is
reading (not decoding) at most one epoch of this process's records, about
1/process_count of the 140 GB train set, and a new epoch starts a fresh
pipeline (one shuffle-buffer fill of stall per epoch).
"""
import functools
import os
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from nfnets import errors
from nfnets.data import augment
from nfnets.data import base

_PREPARE_HELP = """\
The tfds data set {name!r} is not prepared in {data_dir}.
ImageNet cannot be downloaded automatically. Download ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar from https://image-net.org into a directory M and
prepare it once (a few hours; needs ~300 GB free):

  python -c "import tensorflow_datasets as tfds; \\
tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare(\\
download_config=tfds.download.DownloadConfig(manual_dir='M'))"

then set --config.data.data_dir={data_dir}."""


class DataNotPreparedError(errors.UserError, FileNotFoundError):
  """The tfds data set has not been prepared in its data directory."""


def _builder(data_config: ml_collections.ConfigDict
             ) -> tfds.core.DatasetBuilder:
  return tfds.builder(data_config.dataset, data_dir=data_config.data_dir)


def _read(builder: tfds.core.DatasetBuilder, split, *,
          shuffle_seed=None) -> tf.data.Dataset:
  """Records with the image left as encoded bytes; explains missing data."""
  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed,
      # Keep the record order a function of the seed alone.
      interleave_cycle_length=16, interleave_block_length=1)
  read_config.options.deterministic = True
  try:
    return builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=read_config)
  except AssertionError as e:
    # tfds reports an unprepared data set with an AssertionError.
    # builder.data_dir is <root>/<name>/<version>; the config names <root>.
    root = os.path.dirname(os.path.dirname(builder.data_dir))
    raise DataNotPreparedError(_PREPARE_HELP.format(
        name=builder.name, data_dir=root)) from e


def check_available(data_config: ml_collections.ConfigDict) -> None:
  """Raises a `nfnets.errors.UserError` if a configured split is unusable.

  `DataNotPreparedError` (with the prepare command) if the train or eval
  split cannot be read; `errors.InputError` if one holds no examples, e.g. a
  percent slice of a small prepared subset. Sizes come from the prepared
  metadata, so no record is read.
  """
  builder = _builder(data_config)
  for kind, split in (('train', base.train_split(data_config)),
                      ('eval', base.eval_split(data_config))):
    whole = split.split('[', 1)[0]
    _read(builder, whole)
    # tfds refuses to open an empty slice with a bare ValueError.
    if num_examples(data_config, split) == 0:
      raise errors.InputError(
          f'The {kind} split {split!r} of {builder.name} holds no examples '
          f'(the prepared {whole!r} has {num_examples(data_config, whole)}); '
          f'choose another with --config.data.{kind}_split, e.g. {whole}.')
    _read(builder, split)


def _shards(split: str, process_count: int) -> list:
  return tfds.even_splits(split, n=process_count, drop_remainder=False)


@functools.lru_cache(maxsize=16)
def _count(dataset: str, data_dir, split) -> int:
  """Examples in a (sub)split.

  From the prepared data set's metadata; without it, the published size for
  a whole split (so configs can be checked on a machine without the data),
  else by counting records (e.g. under tfds.testing.mock_data), which reads
  bytes but decodes nothing.
  """
  builder = tfds.builder(dataset, data_dir=data_dir)
  try:
    return builder.info.splits[split].num_examples
  except KeyError:
    pass
  if isinstance(split, str) and split in base.get_spec(dataset).splits:
    return base.get_spec(dataset).splits[split]
  return _count_records(dataset, data_dir, split)


def _shard_size(dataset: str, data_dir, split) -> int:
  """Examples in one process's shard: metadata, else counted records."""
  builder = tfds.builder(dataset, data_dir=data_dir)
  try:
    return builder.info.splits[split].num_examples
  except KeyError:
    return _count_records(dataset, data_dir, split)


@functools.lru_cache(maxsize=16)
def _count_records(dataset: str, data_dir, split) -> int:
  builder = tfds.builder(dataset, data_dir=data_dir)
  return int(_read(builder, split).reduce(
      np.int64(0), lambda n, _: n + 1).numpy())


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Size of a split or tfds slice such as 'train[:10%]'."""
  return _count(data_config.dataset, data_config.data_dir, split)


def _seed_words(*words: int) -> int:
  """A 31-bit seed mixing non-negative integers (stable across runs)."""
  return int(np.random.SeedSequence(list(words)).generate_state(1)[0] >> 1)


def _resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """[h, w, 3] -> float32 [size, size, 3], clipped to [0, 255]."""
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method)
  return tf.clip_by_value(image, 0.0, 255.0)


def _normalize(image: tf.Tensor,
               data_config: ml_collections.ConfigDict) -> tf.Tensor:
  mean, std = base.mean_std(data_config)
  return (image - mean) / std


def _train_example(index: tf.Tensor, example: dict[str, tf.Tensor], *,
                   epoch_seed: int, data_config: ml_collections.ConfigDict
                   ) -> dict[str, tf.Tensor]:
  """Encoded record -> {'images': float32 [S, S, 3], 'labels': int32 []}."""
  spec = base.get_spec(data_config.dataset)
  seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
  crop_seed, flip_seed, ra_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = augment.decode_and_random_crop(example['image'], crop_seed)
  image = _resize(image, data_config.image_size, spec.resize_method)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if data_config.randaugment_layers:
    image = augment.randaugment(image, ra_seed,
                                data_config.randaugment_layers,
                                data_config.randaugment_magnitude)
  return {'images': _normalize(image, data_config),
          'labels': tf.cast(example['label'], tf.int32)}


def eval_image(image_bytes: tf.Tensor,
               data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """Encoded image -> float32 [S, S, 3] unnormalized, on 0..255.

  Same geometry as `base.preprocess_for_eval`.
  """
  spec = base.get_spec(data_config.dataset)
  size, pad = data_config.eval_image_size, data_config.crop_padding
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  crop = base.eval_crop(data_config)
  if crop == 'resize':
    return _resize(image, size, spec.resize_method)
  if crop == 'resize_crop':
    image = _resize(image, size + pad, spec.resize_method)
    top = (pad + 1) // 2
    return image[top:top + size, top:top + size]
  # 'aspect': the window of base.center_crop_window, in tensors.
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  shorter = tf.cast(tf.minimum(height, width), tf.float64)
  side = tf.maximum(tf.cast(size / (size + pad) * shorter, tf.int32), 1)
  top, left = (height - side + 1) // 2, (width - side + 1) // 2
  return _resize(image[top:top + side, left:left + side], size,
                 spec.resize_method)


def _train_epoch(builder: tfds.core.DatasetBuilder, split,
                 data_config: ml_collections.ConfigDict, *, seed: int,
                 process_index: int, epoch: int, steps: int, skip_steps: int,
                 batch_size: int) -> tf.data.Dataset:
  """Batches [skip_steps, steps) of one epoch of this process's shard."""
  epoch_seed = _seed_words(seed, process_index, epoch)
  ds = _read(builder, split, shuffle_seed=_seed_words(seed, process_index,
                                                      epoch, 1))
  ds = ds.shuffle(data_config.shuffle_buffer,
                  seed=_seed_words(seed, process_index, epoch, 2))
  ds = ds.take(steps * batch_size).enumerate()
  # Skipping before the map costs record reads only, no decoding.
  ds = ds.skip(skip_steps * batch_size)
  ds = ds.map(functools.partial(_train_example, epoch_seed=epoch_seed,
                                data_config=data_config),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  mix_seed = _seed_words(seed, process_index, epoch, 3)
  ds = ds.enumerate(start=skip_steps).map(
      lambda step, batch: augment.maybe_mix(
          batch, tf.stack([tf.constant(mix_seed, tf.int64), step]),
          data_config.mixup_alpha, data_config.cutmix_alpha),
      num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(data_config.prefetch)


def build_train(data_config: ml_collections.ConfigDict, *, batch_size: int,
                seed: int, start_step: int = 0, process_index: int = 0,
                process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-process training batches; see `nfnets.data` for the contract.

  Raises:
    FileNotFoundError: with preparation instructions, if the data set is not
      prepared in data.data_dir.
    ValueError: if a process's shard holds less than one batch.
  """
  builder = _builder(data_config)
  split = base.train_split(data_config)
  shards = _shards(split, process_count)
  sizes = [_shard_size(data_config.dataset, data_config.data_dir, s)
           for s in shards]
  steps_per_epoch = min(sizes) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f'Per-process batch size {batch_size} exceeds the '
                     f'smallest shard of {split!r} ({min(sizes)} examples).')

  def batches():
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
      yield from tfds.as_numpy(_train_epoch(
          builder, shards[process_index], data_config, seed=seed,
          process_index=process_index, epoch=epoch, steps=steps_per_epoch,
          skip_steps=skip, batch_size=batch_size))
      epoch, skip = epoch + 1, 0

  return batches()


def build_eval(data_config: ml_collections.ConfigDict, *, batch_size: int,
               process_index: int = 0, process_count: int = 1
               ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split, last batch padded with mask=False rows.

  Every process yields ceil(largest shard / batch_size) batches so jitted
  eval steps line up across processes.
  """
  builder = _builder(data_config)
  split = base.eval_split(data_config)
  shards = _shards(split, process_count)
  sizes = [_shard_size(data_config.dataset, data_config.data_dir, s)
           for s in shards]
  total = -(-max(sizes) // batch_size) * batch_size
  size = data_config.eval_image_size

  def process(example):
    image = eval_image(example['image'], data_config)
    return {'images': _normalize(tf.ensure_shape(image, [size, size, 3]),
                                 data_config),
            'labels': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(True)}

  padding = tf.data.Dataset.from_tensors({
      'images': tf.zeros([size, size, 3], tf.float32),
      'labels': tf.constant(0, tf.int32),
      'mask': tf.constant(False)}).repeat(total - sizes[process_index])
  ds = _read(builder, shards[process_index]).map(
      process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
  return iter(tfds.as_numpy(ds.prefetch(data_config.prefetch)))
