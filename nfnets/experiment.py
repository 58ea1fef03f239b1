r"""Command line of the runner: flags in, `nfnets.train.train_and_evaluate`.

  python -m nfnets.experiment --workdir=runs/digits      # nfnets/configs/digits.py
  python -m nfnets.experiment --config=experiments/nfnet_f1.py --workdir=DIR \
      --config.training.batch_size=1024

A run resumes from the work directory's newest checkpoint. Multi-host runs
pass --num_processes, --process_id and --coordinator_address (or set
$JAX_NUM_PROCESSES, $JAX_PROCESS_ID, $JAX_COORDINATOR_ADDRESS) on every host.
"""
from __future__ import annotations

import json
import logging as pylogging
import os
import pathlib
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from nfnets import train

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent / 'configs' / 'digits.py'

_CONFIG = config_flags.DEFINE_config_file(
    'config', default=str(DEFAULT_CONFIG),
    help_string='Config file, e.g. experiments/nfnet_f1.py (add :runlocal to '
    'shrink it to a CPU smoke test); fields are overridden with '
    '--config.training.batch_size=256 etc.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Work directory: config, logs and checkpoints. A run '
    'resumes from the newest checkpoint found here.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', int(os.environ.get('JAX_NUM_PROCESSES', '1')),
    'Number of processes (hosts) of a multi-host run; default from '
    '$JAX_NUM_PROCESSES.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', int(os.environ.get('JAX_PROCESS_ID', '0')),
    'Index of this process in a multi-host run; default from $JAX_PROCESS_ID.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
    'host:port of process 0 in a multi-host run; default from '
    '$JAX_COORDINATOR_ADDRESS.')


def initialize_distributed(num_processes: int, process_id: int,
                           coordinator_address: Optional[str]) -> None:
  """Joins a multi-process run; must precede any use of the JAX backend."""
  if num_processes <= 1:
    return
  if not coordinator_address:
    raise app.UsageError('A multi-process run needs --coordinator_address '
                         '(or $JAX_COORDINATOR_ADDRESS).')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


class _QuietOrbax(pylogging.Filter):
  """Drops orbax's per-save INFO lines, which drown the progress lines."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return (record.levelno > pylogging.INFO or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required.')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  initialize_distributed(_NUM_PROCESSES.value, _PROCESS_ID.value,
                         _COORDINATOR.value)
  try:
    metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.ConfigError as e:
    raise app.UsageError(str(e)) from e
  logging.info('Final metrics: %s', json.dumps(metrics, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
