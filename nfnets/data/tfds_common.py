"""tensorflow-datasets plumbing shared by the tfds pipelines (ImageNet, CIFAR).

A tfds pipeline module supplies what is particular to its data set: the
per-example train transform, the eval geometry and the text that says how to
prepare the data. This module does the rest, identically for all of them:

* Reading: records come with the image left as encoded bytes, so resuming
  can skip records before any decoding; an unprepared data set raises
  `DataNotPreparedError` with the module's prepare command.
* Sharding: each process reads its own contiguous share of the split
  (`tfds.even_splits`, what `tfds.split_for_jax_process` does), so
  multi-host runs read disjoint examples.
* Determinism and resuming: an epoch's file order and shuffle use seeds
  derived from (seed, process_index, epoch), and every example's
  augmentation a stateless seed from (seed, process_index, epoch, position in
  the epoch). An epoch is `min_p(shard_p) // batch_size` steps on every
  process. Resuming at step k rebuilds epoch k // steps_per_epoch and skips
  the first (k mod steps_per_epoch) * batch_size records *before* decoding,
  so the stream from `start_step=k` is exactly the fresh stream after k
  batches, at the cost of reading (not decoding) at most one epoch of this
  process's records. A new epoch starts a fresh pipeline (one shuffle-buffer
  fill of stall per epoch).
* Eval: one pass over this process's shard, padded with mask=False rows to
  the same number of batches on every process.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from nfnets import errors
from nfnets.data import augment
from nfnets.data import base

# (index int64 [], encoded record, *, epoch_seed, data_config) ->
# {'images': float32 [S, S, 3] normalized, 'labels': int32 []}.
TrainExampleFn = Callable[..., dict[str, tf.Tensor]]
# (encoded image bytes, data_config) -> float32 [S, S, 3] on 0..255.
EvalImageFn = Callable[[tf.Tensor, ml_collections.ConfigDict], tf.Tensor]


class DataNotPreparedError(errors.UserError, FileNotFoundError):
  """The tfds data set has not been prepared in its data directory."""


def builder(data_config: ml_collections.ConfigDict
            ) -> tfds.core.DatasetBuilder:
  """The tfds builder of the configured data set in `data.data_dir`."""
  return tfds.builder(data_config.dataset, data_dir=data_config.data_dir)


def read(ds_builder: tfds.core.DatasetBuilder, split, *, prepare_help: str,
         shuffle_seed=None) -> tf.data.Dataset:
  """Records with the image left as encoded bytes; explains missing data.

  Args:
    ds_builder: the data set's builder.
    split: a split name, tfds slice or `tfds.core.ReadInstruction`.
    prepare_help: the message for an unprepared data set, formatted with
      `name` (the tfds name) and `data_dir` (the tfds root directory).
    shuffle_seed: seeds the file order; None reads files in order.

  Returns:
    A deterministic `tf.data.Dataset` of records.

  Raises:
    DataNotPreparedError: the data set is not prepared in its directory.
  """
  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed,
      # Keep the record order a function of the seed alone.
      interleave_cycle_length=16, interleave_block_length=1)
  read_config.options.deterministic = True
  try:
    return ds_builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=read_config)
  except AssertionError as e:
    # tfds reports an unprepared data set with an AssertionError.
    # builder.data_dir is <root>/<name>/<version>; the config names <root>.
    root = os.path.dirname(os.path.dirname(ds_builder.data_dir))
    raise DataNotPreparedError(prepare_help.format(
        name=ds_builder.name, data_dir=root)) from e


def check_available(data_config: ml_collections.ConfigDict, *,
                    prepare_help: str) -> None:
  """Raises a `nfnets.errors.UserError` if a configured split is unusable.

  `DataNotPreparedError` (with `prepare_help`) if the train or eval split
  cannot be read; `errors.InputError` if one holds no examples, e.g. a
  percent slice of a small prepared subset. Sizes come from the prepared
  metadata, so no record is read.
  """
  ds_builder = builder(data_config)
  for kind, split in (('train', base.train_split(data_config)),
                      ('eval', base.eval_split(data_config))):
    whole = split.split('[', 1)[0]
    read(ds_builder, whole, prepare_help=prepare_help)
    count = functools.partial(num_examples, data_config,
                              prepare_help=prepare_help)
    # tfds refuses to open an empty slice with a bare ValueError.
    if count(split) == 0:
      raise errors.InputError(
          f'The {kind} split {split!r} of {ds_builder.name} holds no examples '
          f'(the prepared {whole!r} has {count(whole)}); '
          f'choose another with --config.data.{kind}_split, e.g. {whole}.')
    read(ds_builder, split, prepare_help=prepare_help)


def shards(split: str, process_count: int) -> list:
  """The per-process contiguous shares of a split, in process order."""
  return tfds.even_splits(split, n=process_count, drop_remainder=False)


@functools.lru_cache(maxsize=16)
def _count(dataset: str, data_dir, split, prepare_help: str) -> int:
  """Examples in a (sub)split.

  From the prepared data set's metadata; without it, the published size for
  a whole split (so configs can be checked on a machine without the data),
  else by counting records (e.g. under tfds.testing.mock_data), which reads
  bytes but decodes nothing.
  """
  ds_builder = tfds.builder(dataset, data_dir=data_dir)
  try:
    return ds_builder.info.splits[split].num_examples
  except KeyError:
    pass
  if isinstance(split, str) and split in base.get_spec(dataset).splits:
    return base.get_spec(dataset).splits[split]
  return _count_records(dataset, data_dir, split, prepare_help)


def _shard_size(data_config: ml_collections.ConfigDict, split,
                prepare_help: str) -> int:
  """Examples in one process's shard: metadata, else counted records."""
  ds_builder = builder(data_config)
  try:
    return ds_builder.info.splits[split].num_examples
  except KeyError:
    return _count_records(data_config.dataset, data_config.data_dir, split,
                          prepare_help)


@functools.lru_cache(maxsize=16)
def _count_records(dataset: str, data_dir, split, prepare_help: str) -> int:
  ds_builder = tfds.builder(dataset, data_dir=data_dir)
  return int(read(ds_builder, split, prepare_help=prepare_help).reduce(
      np.int64(0), lambda n, _: n + 1).numpy())


def num_examples(data_config: ml_collections.ConfigDict, split: str, *,
                 prepare_help: str) -> int:
  """Size of a split or tfds slice such as 'train[:10%]'.

  Args:
    data_config: the `config.data` group.
    split: a split name or tfds slice.
    prepare_help: the message for an unprepared data set (see `read`), in
      case the size has to be counted from the records.

  Returns:
    The number of examples over all processes.
  """
  return _count(data_config.dataset, data_config.data_dir, split,
                prepare_help)


def seed_words(*words: int) -> int:
  """A 31-bit seed mixing non-negative integers (stable across runs)."""
  return int(np.random.SeedSequence(list(words)).generate_state(1)[0] >> 1)


def resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """[h, w, 3] -> float32 [size, size, 3], clipped to [0, 255]."""
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method)
  return tf.clip_by_value(image, 0.0, 255.0)


def train_seeds(epoch_seed: int, index: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(crop, flip, RandAugment) stateless seeds of one training example.

  A function of (epoch_seed, index in the epoch) only, which is what makes
  the stream resumable (see the module docstring).
  """
  seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
  crop_seed, flip_seed, ra_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  return crop_seed, flip_seed, ra_seed


def finish_train_example(image: tf.Tensor, label: tf.Tensor,
                         ra_seed: tf.Tensor,
                         data_config: ml_collections.ConfigDict
                         ) -> dict[str, tf.Tensor]:
  """The end of every tfds train transform: RandAugment, normalize, label.

  Args:
    image: float32 [S, S, 3] on 0..255, cropped, resized and flipped.
    label: the record's integer label.
    ra_seed: the example's RandAugment seed (`train_seeds`).
    data_config: the `config.data` group (RandAugment strength, statistics).

  Returns:
    {'images': float32 [S, S, 3] normalized, 'labels': int32 []}.
  """
  if data_config.randaugment_layers:
    image = augment.randaugment(image, ra_seed,
                                data_config.randaugment_layers,
                                data_config.randaugment_magnitude)
  return {'images': normalize(image, data_config),
          'labels': tf.cast(label, tf.int32)}


def normalize(image: tf.Tensor,
              data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """(image - mean) / std per channel, with the data set's statistics.

  Args:
    image: float32 [..., W, C] on 0..255.
    data_config: the `config.data` group (picks the statistics).

  Returns:
    float32, the shape of `image`.
  """
  mean, std = base.mean_std(data_config)
  # The [C] statistics repeated along [W * C] rows: TensorFlow's CPU
  # broadcasting of a [C] vector over [..., W, C] runs ~4x slower, about
  # 1 ms of a 192 px image's budget. Same arithmetic, same values.
  shape = tf.shape(image)
  rows = tf.reshape(image, [-1, shape[-2] * shape[-1]])
  width = shape[-2:-1]
  rows = (rows - tf.tile(mean, width)) / tf.tile(std, width)
  return tf.ensure_shape(tf.reshape(rows, shape), image.shape)


def _train_epoch(ds_builder: tfds.core.DatasetBuilder, split,
                 data_config: ml_collections.ConfigDict, *,
                 train_example: TrainExampleFn, prepare_help: str, seed: int,
                 process_index: int, epoch: int, steps: int, skip_steps: int,
                 batch_size: int) -> tf.data.Dataset:
  """Batches [skip_steps, steps) of one epoch of this process's shard."""
  epoch_seed = seed_words(seed, process_index, epoch)
  ds = read(ds_builder, split, prepare_help=prepare_help,
            shuffle_seed=seed_words(seed, process_index, epoch, 1))
  ds = ds.shuffle(data_config.shuffle_buffer,
                  seed=seed_words(seed, process_index, epoch, 2))
  ds = ds.take(steps * batch_size).enumerate()
  # Skipping before the map costs record reads only, no decoding.
  ds = ds.skip(skip_steps * batch_size)
  ds = ds.map(functools.partial(train_example, epoch_seed=epoch_seed,
                                data_config=data_config),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  mix_seed = seed_words(seed, process_index, epoch, 3)
  ds = ds.enumerate(start=skip_steps).map(
      lambda step, batch: augment.maybe_mix(
          batch, tf.stack([tf.constant(mix_seed, tf.int64), step]),
          data_config.mixup_alpha, data_config.cutmix_alpha),
      num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(data_config.prefetch)


def build_train(data_config: ml_collections.ConfigDict, *,
                train_example: TrainExampleFn, prepare_help: str,
                batch_size: int, seed: int, start_step: int = 0,
                process_index: int = 0, process_count: int = 1
                ) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-process training batches; see `nfnets.data` for the contract.

  Args:
    data_config: the `config.data` group.
    train_example: the data set's per-example transform (`TrainExampleFn`);
      its randomness must come from stateless ops seeded by (epoch_seed,
      index) for the stream to be resumable.
    prepare_help: the message for an unprepared data set (see `read`).
    batch_size: examples per process and step.
    seed: the run's seed.
    start_step: global step of the first batch.
    process_index: this process.
    process_count: processes reading the split.

  Returns:
    An iterator of {'images', 'labels'} (+ 'mix_labels', 'mix_ratio' when
    mixing) NumPy batches.

  Raises:
    DataNotPreparedError: with preparation instructions, if the data set is
      not prepared in data.data_dir.
    ValueError: if a process's shard holds less than one batch.
  """
  ds_builder = builder(data_config)
  split = base.train_split(data_config)
  split_shards = shards(split, process_count)
  sizes = [_shard_size(data_config, s, prepare_help) for s in split_shards]
  steps_per_epoch = min(sizes) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f'Per-process batch size {batch_size} exceeds the '
                     f'smallest shard of {split!r} ({min(sizes)} examples).')

  def batches():
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
      yield from tfds.as_numpy(_train_epoch(
          ds_builder, split_shards[process_index], data_config,
          train_example=train_example, prepare_help=prepare_help, seed=seed,
          process_index=process_index, epoch=epoch, steps=steps_per_epoch,
          skip_steps=skip, batch_size=batch_size))
      epoch, skip = epoch + 1, 0

  return batches()


def build_eval(data_config: ml_collections.ConfigDict, *,
               eval_image: EvalImageFn, prepare_help: str, batch_size: int,
               process_index: int = 0, process_count: int = 1
               ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split, last batch padded with mask=False rows.

  Every process yields ceil(largest shard / batch_size) batches so jitted
  eval steps line up across processes.

  Args:
    data_config: the `config.data` group.
    eval_image: the data set's eval geometry (`EvalImageFn`).
    prepare_help: the message for an unprepared data set (see `read`).
    batch_size: examples per process and batch.
    process_index: this process.
    process_count: processes reading the split.

  Returns:
    An iterator of {'images', 'labels', 'mask'} NumPy batches.
  """
  ds_builder = builder(data_config)
  split = base.eval_split(data_config)
  split_shards = shards(split, process_count)
  sizes = [_shard_size(data_config, s, prepare_help) for s in split_shards]
  total = -(-max(sizes) // batch_size) * batch_size
  size = data_config.eval_image_size

  def process(example):
    image = eval_image(example['image'], data_config)
    return {'images': normalize(tf.ensure_shape(image, [size, size, 3]),
                                data_config),
            'labels': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(True)}

  padding = tf.data.Dataset.from_tensors({
      'images': tf.zeros([size, size, 3], tf.float32),
      'labels': tf.constant(0, tf.int32),
      'mask': tf.constant(False)}).repeat(total - sizes[process_index])
  ds = read(ds_builder, split_shards[process_index],
            prepare_help=prepare_help).map(
                process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
  return iter(tfds.as_numpy(ds.prefetch(data_config.prefetch)))


@dataclasses.dataclass(frozen=True)
class TfdsPipeline:
  """A tfds data set's pipeline module contract from what is its own.

  A data set module binds `check_available`, `num_examples`, `build_train`
  and `build_eval` (the contract of `nfnets.data`) to one of these, which
  runs the shared functions above with its transforms and prepare text.

  Attributes:
    train_example: the per-example train transform (`TrainExampleFn`).
    eval_image: the eval geometry (`EvalImageFn`).
    prepare_help: the message for an unprepared data set (see `read`).
  """
  train_example: TrainExampleFn
  eval_image: EvalImageFn
  prepare_help: str

  def check_available(self, data_config: ml_collections.ConfigDict) -> None:
    """Raises a `nfnets.errors.UserError` if a configured split is unusable.

    `DataNotPreparedError` (with the prepare command) if the train or eval
    split cannot be read; `errors.InputError` if one holds no examples, e.g.
    a percent slice of a small prepared subset. Reads no records.
    """
    check_available(data_config, prepare_help=self.prepare_help)

  def num_examples(self, data_config: ml_collections.ConfigDict,
                   split: str) -> int:
    """Size of a split or tfds slice such as 'train[:10%]'."""
    return num_examples(data_config, split, prepare_help=self.prepare_help)

  def build_train(self, data_config: ml_collections.ConfigDict, *,
                  batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Endless per-process training batches (`build_train` above)."""
    return build_train(
        data_config, train_example=self.train_example,
        prepare_help=self.prepare_help, batch_size=batch_size, seed=seed,
        start_step=start_step, process_index=process_index,
        process_count=process_count)

  def build_eval(self, data_config: ml_collections.ConfigDict, *,
                 batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One padded pass over the eval split (`build_eval` above)."""
    return build_eval(
        data_config, eval_image=self.eval_image,
        prepare_help=self.prepare_help, batch_size=batch_size,
        process_index=process_index, process_count=process_count)
