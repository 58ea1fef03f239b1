"""Synthetic data: one batch of noise, yielded again and again.

For timing the device step without any input pipeline cost
(`--config.data.dataset=synthetic`): `build_train` makes one batch per
process when it is called (standard normal images, which is what normalized
images look like, float32 [B, image_size, image_size, 3]; uniform random
labels in [0, num_classes)) and then yields that same dict of arrays forever,
with no host work per step. The batches still go through the runner's
`prefetch_to_devices`, as real data does, so the host-to-device copy of each
step is part of what is measured.

Sizes: the train split has ImageNet's 1,281,167 examples, so schedules and
durations given in epochs give the step counts they give on ImageNet. The
eval split is 2,048 examples (a few eval batches), enough for the runner's
evaluation path; its accuracy is chance. `data.num_classes` sets the label
count (default 1000).

Determinism: example i of the stream (its image, label and, with
MixUp/CutMix on, its mix_label and mix_ratio) comes from (seed, i) alone.
Process p of P holds positions [p * B, (p + 1) * B) of one global batch of
B * P, so the global batch is the same for any number of processes and
processes hold disjoint examples. Every step repeats that batch, so
`start_step` changes nothing: resuming at step k gives exactly what a fresh
stream gives after k batches.

MixUp/CutMix: the images are noise, so mixing them would change nothing the
step's cost depends on; the batch carries the 'mix_labels' (uniform random
classes) and 'mix_ratio' (drawn from Beta(alpha, alpha); with both on,
CutMix's alpha for even positions and MixUp's for odd ones) that the train
step's mixed loss reads. Host-side options of the recipe it replaces
(RandAugment, crops, shifts, shuffling, `data_dir`, `eval_crop`) are
accepted and not read (`DatasetSpec.stand_in`), so any recipe switches to
synthetic data with `--config.data.dataset=synthetic` alone.

The arrays are read-only: a consumer that wrote into one would change every
later batch.
"""
from __future__ import annotations

import functools
from typing import Iterator, Optional

import ml_collections
import numpy as np

from nfnets.data import base

# Second entropy words naming each random stream, so that no two share a
# NumPy SeedSequence.
_TRAIN_STREAM = 0x53594e54
_EVAL_STREAM = 0x53594e45
_MIX_STREAM = 0x53594e4d
# The eval set's seed: `build_eval` takes none, and every evaluation of a run
# should see the same examples.
_EVAL_SEED = 0


def check_available(data_config: ml_collections.ConfigDict) -> None:
  """Synthetic data is made in memory: always available."""
  del data_config


def _split_name(data_config: ml_collections.ConfigDict, split: str) -> str:
  splits = base.get_spec(data_config.dataset).splits
  if split not in splits:
    raise ValueError(f'Unknown synthetic split {split!r}; known splits: '
                     f'{", ".join(splits)} (no slices).')
  return split


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Size of a split: ImageNet's for 'train', 2,048 for 'validation'."""
  return base.get_spec(data_config.dataset).splits[
      _split_name(data_config, split)]


def _examples(seed: int, stream: int, positions: np.ndarray, size: int,
              num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [N, size, size, 3] N(0, 1) images, int32 [N] labels).

  Example i comes from (seed, stream, i) alone.
  """
  images = np.empty((len(positions), size, size, 3), np.float32)
  labels = np.empty(len(positions), np.int32)
  for row, i in enumerate(positions):
    rng = np.random.default_rng([seed, stream, int(i)])
    labels[row] = rng.integers(num_classes)
    rng.standard_normal(dtype=np.float32, out=images[row])
  return images, labels


def _mix_targets(data_config: ml_collections.ConfigDict, seed: int,
                 positions: np.ndarray,
                 num_classes: int) -> Optional[dict[str, np.ndarray]]:
  """'mix_labels' int32 [N] and 'mix_ratio' float32 [N], or None if off."""
  mixup, cutmix = data_config.mixup_alpha, data_config.cutmix_alpha
  if mixup <= 0 and cutmix <= 0:
    return None
  mix_labels = np.empty(len(positions), np.int32)
  mix_ratio = np.empty(len(positions), np.float32)
  for row, i in enumerate(positions):
    rng = np.random.default_rng([seed, _MIX_STREAM, int(i)])
    alpha = cutmix if cutmix > 0 and (mixup <= 0 or i % 2 == 0) else mixup
    mix_labels[row] = rng.integers(num_classes)
    mix_ratio[row] = rng.beta(alpha, alpha)
  return {'mix_labels': mix_labels, 'mix_ratio': mix_ratio}


def _read_only(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  for array in batch.values():
    array.flags.writeable = False
  return batch


def build_train(data_config: ml_collections.ConfigDict, *, batch_size: int,
                seed: int, start_step: int = 0, process_index: int = 0,
                process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """One batch made now, then yielded forever (the same dict every step).

  Args:
    data_config: the `config.data` group (image_size, num_classes, mixing).
    batch_size: examples per process and step.
    seed: the run's seed.
    start_step: accepted for the pipeline contract; every step's batch is
      the same.
    process_index: this process.
    process_count: processes in the run.

  Returns:
    An endless iterator of the same read-only {'images', 'labels'} (+
    'mix_labels', 'mix_ratio' with MixUp/CutMix on) dict.
  """
  del start_step  # Every step repeats the one batch.
  _split_name(data_config, base.train_split(data_config))
  del process_count  # Positions depend on the global layout only.
  positions = np.arange(process_index * batch_size,
                        (process_index + 1) * batch_size)
  num_classes = base.num_classes(data_config)
  images, labels = _examples(seed, _TRAIN_STREAM, positions,
                             data_config.image_size, num_classes)
  batch = {'images': images, 'labels': labels}
  batch.update(_mix_targets(data_config, seed, positions, num_classes) or {})
  batch = _read_only(batch)

  def batches() -> Iterator[dict[str, np.ndarray]]:
    while True:
      yield batch

  return batches()


@functools.lru_cache(maxsize=1)
def _eval_examples(start: int, count: int, size: int,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """The eval examples at positions [start, start + count), read-only.

  Cached: the runner evaluates many times with the same shapes.
  """
  images, labels = _examples(_EVAL_SEED, _EVAL_STREAM,
                             np.arange(start, start + count), size,
                             num_classes)
  _read_only({'images': images, 'labels': labels})
  return images, labels


def build_eval(data_config: ml_collections.ConfigDict, *, batch_size: int,
               process_index: int = 0, process_count: int = 1
               ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the synthetic eval split, padded with mask=False rows.

  The split's examples are dealt to processes in contiguous shards (sizes
  differing by at most one) and every process yields the number of batches
  of the largest shard. Only the first batch's examples are made: later
  batches repeat them, so an evaluation costs no host work per batch.

  Returns:
    An iterator of read-only {'images' float32 [B, S, S, 3], 'labels' int32
    [B], 'mask' bool [B]} dicts, S = eval_image_size.
  """
  split = _split_name(data_config, base.eval_split(data_config))
  shards = np.array_split(np.arange(num_examples(data_config, split)),
                          process_count)
  shard = shards[process_index]
  num_batches = -(-max(len(s) for s in shards) // batch_size)
  rows = min(batch_size, len(shard))
  images, labels = _eval_examples(int(shard[0]) if rows else 0, rows,
                                  data_config.eval_image_size,
                                  base.num_classes(data_config))
  if rows < batch_size:  # One batch, larger than this process's shard.
    pad = batch_size - rows
    images = np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    labels = np.pad(labels, (0, pad))
  for b in range(num_batches):
    valid = min(batch_size, max(0, len(shard) - b * batch_size))
    yield _read_only({'images': images, 'labels': labels,
                      'mask': np.arange(batch_size) < valid})
