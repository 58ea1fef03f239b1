r"""Command line of the runner: flags in, `nfnets.train.train_and_evaluate`.

  python -m nfnets.experiment --workdir=runs/digits      # the digits config
  python -m nfnets.experiment --config=nfnet_f1 --workdir=DIR \
      --config.training.batch_size=1024
  python -m nfnets.experiment --config=nfnet_f0:runlocal --workdir=/tmp/f0
  python -m nfnets.experiment --config=experiments/nfnet_f1.py --workdir=DIR

--config takes a recipe shipped with the package by name (NAME[:ARG]: the
names are listed under --config in --help) or a config file by path
(PATH.py[:ARG]); --config.a.b=value overrides any field of either. A run
resumes from the work directory's newest checkpoint. Multi-host runs pass
--num_processes, --process_id and --coordinator_address (or set
$JAX_NUM_PROCESSES, $JAX_PROCESS_ID, $JAX_COORDINATOR_ADDRESS) on every host.
JAX's own flags (--jax_log_compiles, --jax_platforms=cpu, ...) are listed by
--helpfull; --verbosity=1 shows the libraries' log lines.
--jax_compilation_cache_dir=DIR keeps the compiled programs in DIR, so that a
later run of the same model and shapes (a resumed run, a sweep) loads them
instead of compiling again.
"""
from __future__ import annotations

import ast
import json
import os
import sys
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax

from nfnets import train
from nfnets.cli import common
from nfnets.cli import config_flag
from nfnets.train import config as config_lib

_KWARGS_PREFIX = '--config.model.kwargs.'


def take_model_kwargs(argv: list[str]) -> dict[str, Any]:
  """Removes `--config.model.kwargs.NAME=VALUE` from `argv`; returns them.

  Any constructor argument of the model can be set this way, including those
  the config file does not list (which `config_flags` could not override).
  Values are Python literals (`0.5`, `True`, `(1, 2, 1, 1)`), else strings
  (`silu`); the runner checks the names against the model's signature.
  """
  taken = {}
  for arg in list(argv[1:]):
    if arg.startswith(_KWARGS_PREFIX) and '=' in arg:
      name, _, text = arg[len(_KWARGS_PREFIX):].partition('=')
      try:
        taken[name] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        taken[name] = text
      argv.remove(arg)
  return taken


def define_flags() -> dict[str, Any]:
  """Defines the runner's flags (loading the config --config names)."""
  return {
      'model_kwargs': take_model_kwargs(sys.argv),
      'config': config_flag.define('config'),
      'workdir': flags.DEFINE_string(
          'workdir', None, 'Work directory: config, logs and checkpoints. A '
          'run resumes from the newest checkpoint found here.'),
      'num_processes': flags.DEFINE_integer(
          'num_processes', int(os.environ.get('JAX_NUM_PROCESSES', '1')),
          'Number of processes (hosts) of a multi-host run; default from '
          '$JAX_NUM_PROCESSES.'),
      'process_id': flags.DEFINE_integer(
          'process_id', int(os.environ.get('JAX_PROCESS_ID', '0')),
          'Index of this process in a multi-host run; default from '
          '$JAX_PROCESS_ID.'),
      'coordinator_address': flags.DEFINE_string(
          'coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
          'host:port of process 0 in a multi-host run; default from '
          '$JAX_COORDINATOR_ADDRESS.'),
  }


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


def main(argv: Sequence[str], defined: dict[str, Any]) -> None:
  """Trains `--config` in `--workdir` (see the module docstring)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not defined['workdir'].value:
    raise app.UsageError('--workdir is required.')
  initialize_distributed(defined['num_processes'].value,
                         defined['process_id'].value,
                         defined['coordinator_address'].value)
  config = common.load_config(defined['config'])
  config_lib.check_schema(config)
  with config.unlocked():
    config.model.kwargs.update(defined['model_kwargs'])
  metrics = train.train_and_evaluate(config, defined['workdir'].value)
  logging.info('Final metrics: %s', json.dumps(metrics, sort_keys=True))


if __name__ == '__main__':
  common.run(main, define_flags)
