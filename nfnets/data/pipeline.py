"""Entry points that pick a data set's pipeline, and device prefetching."""
import collections
import importlib
import itertools
from typing import Any, Iterator, Optional

import jax
import ml_collections
import numpy as np

from nfnets.data import base

Batch = dict[str, np.ndarray]


def _module(data_config: ml_collections.ConfigDict) -> Any:
  """The validated config's pipeline module, `DatasetSpec.module`."""
  base.validate(data_config)
  # Imported on demand: TensorFlow takes seconds to import and the digits
  # and synthetic pipelines never need it.
  return importlib.import_module(
      f'nfnets.data.{base.get_spec(data_config.dataset).module}')


def check_available(data_config: ml_collections.ConfigDict) -> None:
  """Raises a `nfnets.errors.UserError` saying how to get the data if the
  configured splits cannot be read; reads no examples."""
  _module(data_config).check_available(data_config)


def num_examples(data_config: ml_collections.ConfigDict,
                 split: Optional[str] = None) -> int:
  """Number of examples in a split (default: the configured train split).

  Args:
    data_config: the `config.data` group.
    split: a split name; tfds slices such as 'train[:10%]' are accepted for
      tfds data sets. Sizes come from the prepared data set's metadata, or,
      without it, from `DATASETS` (whole splits only).

  Returns:
    The split's size over all processes.
  """
  split = split or base.train_split(data_config)
  return _module(data_config).num_examples(data_config, split)


def check_batch(data_config: ml_collections.ConfigDict,
                batch_size: int) -> None:
  """Raises an `InputError` if the data set cannot make batches of this size.

  Args:
    data_config: the `config.data` group.
    batch_size: examples per process and step.
  """
  check = getattr(_module(data_config), 'check_batch', None)
  if check is not None:
    check(data_config, batch_size)


def _check_share(batch_size: int, process_index: int,
                 process_count: int) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} outside '
                     f'[0, {process_count}).')


def build_train(data_config: ml_collections.ConfigDict, *, batch_size: int,
                seed: int, start_step: int = 0, process_index: int = 0,
                process_count: int = 1) -> Iterator[Batch]:
  """Endless training batches for this process (see `nfnets.data`)."""
  _check_share(batch_size, process_index, process_count)
  return _module(data_config).build_train(
      data_config, batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count)


def build_eval(data_config: ml_collections.ConfigDict, *, batch_size: int,
               process_index: int = 0, process_count: int = 1
               ) -> Iterator[Batch]:
  """One padded pass over this process's share of the eval split."""
  _check_share(batch_size, process_index, process_count)
  return _module(data_config).build_eval(
      data_config, batch_size=batch_size, process_index=process_index,
      process_count=process_count)


def prefetch_to_devices(batches: Iterator[Batch],
                        sharding: jax.sharding.Sharding, size: int = 2
                        ) -> Iterator[dict[str, jax.Array]]:
  """Places host batches on devices ahead of use, already sharded.

  Each process passes its own batch; the result is the global array
  (`jax.make_array_from_process_local_data`), whose leading dimension is
  batch_size * process_count. Transfers are asynchronous, so keeping `size`
  batches in flight overlaps them with the running step.

  Args:
    batches: host batches (dicts of NumPy arrays with a common leading dim).
    sharding: how to lay the batch dimension out, e.g.
      `NamedSharding(mesh, PartitionSpec('data'))`.
    size: number of batches placed ahead.

  Yields:
    The same dicts with every array a sharded `jax.Array`.
  """
  def put(batch: Batch) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in batch.items()}

  queue = collections.deque()
  batches = iter(batches)
  queue.extend(put(b) for b in itertools.islice(batches, size))
  while queue:
    yield queue.popleft()
    queue.extend(put(b) for b in itertools.islice(batches, 1))
