"""Fixtures shared by the test modules.

XLA's compile time dominates the tests of tiny models on CPU, so:
- XLA compiles without LLVM's optimizations (optimization level 0 in
  XLA_FLAGS, which subprocesses inherit): they take most of its compile time
  and buy these tiny programs little;
- every compilation that takes a second or more goes to a persistent cache
  shared by the pytest-xdist workers of a session: a program that several
  tests build (the runner's steps on the same config, the evaluation of the
  same checkpoint) is compiled once;
- `digits_run` trains one tiny run per session (once, whichever worker asks
  first), which the checkpoint-evaluation tests and the notebook test read,
  and whose compiled steps a run of the command line with the same flags
  (`DIGITS_RUN_FLAGS`) finds in the cache.
Tests build shallow models with the `depth` constructor override, e.g.
`models.create('nfnet_f0', depth=(1, 2), widths=(256, 512), width=0.0625)`.
"""
import os
import pathlib
import time
import traceback
from typing import Callable

from absl import flags
import jax
from jax.experimental.compilation_cache import compilation_cache as cc
import ml_collections
import pytest

from nfnets import train
from nfnets.cli import config_flag
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parent.parent
_NO_LLVM_OPT = '--xla_backend_optimization_level=0'
# How long a worker waits for another one to build a shared fixture.
_SHARED_TIMEOUT_S = subprocesses.TIMEOUT_S
# An unmarked test runs in the everyday loop (`make test-fast`): one that
# takes longer than this on an idle machine must be marked `slow`. The limit
# grows with the load average per core, so a busy machine fails no test.
_UNMARKED_LIMIT_S = float(os.environ.get('NFNETS_UNMARKED_LIMIT_S', '20'))
# The shared run: the default config (NFNet-F0 on digits) with these
# command-line overrides: 1/16 width, 16 px, 2 steps.
DIGITS_RUN_FLAGS = (
    '--config.training.num_steps=2', '--config.model.kwargs.width=0.0625',
    '--config.data.image_size=16', '--config.data.eval_image_size=16',
    '--config.optimizer.warmup_steps=1')


# Before any test starts XLA's backend, which reads XLA_FLAGS once.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join(
      filter(None, [os.environ.get('XLA_FLAGS'), _NO_LLVM_OPT]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
  """Fails an unmarked test that took too long, with the hint to mark it."""
  outcome = yield
  report = outcome.get_result()
  if (call.when != 'call' or not report.passed or
      item.get_closest_marker('slow') is not None):
    return
  load = os.getloadavg()[0] / (os.cpu_count() or 1)
  limit = _UNMARKED_LIMIT_S * max(1.0, load)
  if call.duration > limit:
    report.outcome = 'failed'
    report.longrepr = (
        f'{item.nodeid} took {call.duration:.0f} s, over the {limit:.0f} s '
        'an unmarked test may take ($NFNETS_UNMARKED_LIMIT_S, scaled by the '
        'load average per core): mark it @pytest.mark.slow, or make it '
        'smaller.')


def session_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """A directory shared by all the xdist workers of this session."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


def build_once(root: pathlib.Path, name: str,
               build: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """Runs `build(root / name)` in only one worker of the session.

  The first worker to ask builds; the others wait for it and get the same
  path (or fail with its error).
  """
  path = root / name
  done = root / f'{name}.done'
  try:
    os.close(os.open(root / f'{name}.lock', os.O_CREAT | os.O_EXCL))
  except FileExistsError:
    deadline = time.monotonic() + _SHARED_TIMEOUT_S
    while not done.exists():
      if time.monotonic() > deadline:
        pytest.fail(f'Timed out waiting for another worker to build {path}.')
      time.sleep(0.5)
    status = done.read_text()
    if status != 'ok':
      pytest.fail(f'Building {path} failed in another worker:\n{status}')
    return path
  try:
    build(path)
  except BaseException:
    done.write_text(traceback.format_exc() or 'failed')
    raise
  done.write_text('ok')
  return path


@pytest.fixture(autouse=True, scope='session')
def compilation_cache(tmp_path_factory) -> pathlib.Path:
  """The session's persistent compilation cache directory (in use)."""
  path = session_root(tmp_path_factory) / 'jit_cache'
  path.mkdir(exist_ok=True)
  values = {'jax_compilation_cache_dir': str(path),
            'jax_persistent_cache_min_compile_time_secs': 1.0,
            'jax_persistent_cache_min_entry_size_bytes': 0}
  old = {name: getattr(jax.config, name) for name in values}
  for name, value in values.items():
    jax.config.update(name, value)
  # JAX decides whether to use the cache at its first compilation, which may
  # have happened while collecting the tests.
  cc.reset_cache()
  yield path
  for name, value in old.items():
    jax.config.update(name, value)
  cc.reset_cache()


@pytest.fixture(scope='session')
def compilation_cache_env(compilation_cache) -> dict[str, str]:
  """Environment variables that give a subprocess the session's cache."""
  return {'JAX_COMPILATION_CACHE_DIR': str(compilation_cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '1'}


def parse_config_flags(argv: list[str]) -> ml_collections.ConfigDict:
  """The config the runner's command line makes of `--config...` flags."""
  values = flags.FlagValues()
  argv = ['prog', *argv]
  config_flag.define('config', default=str(REPO / 'experiments' / 'digits.py'),
                     flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def digits_run_config() -> ml_collections.ConfigDict:
  """The shared run's config: `DIGITS_RUN_FLAGS`, checkpoints at steps 1, 2.

  It stays the registered 'nfnet_f0', so that a fresh process (a notebook
  kernel, the command line) can load and build it.
  """
  return parse_config_flags([*DIGITS_RUN_FLAGS,
                             '--config.checkpoint.every_steps=1',
                             '--config.eval.every_steps=0'])


@pytest.fixture(scope='session')
def digits_run(tmp_path_factory) -> pathlib.Path:
  """Work directory of a tiny finished run (see `digits_run_config`).

  Shared by every test of the session: read it, or copy it to change it.
  """
  return build_once(
      session_root(tmp_path_factory), 'digits',
      lambda path: train.train_and_evaluate(digits_run_config(), path))


@pytest.fixture(scope='session')
def digits_run_flags() -> tuple[str, ...]:
  """Command-line flags that turn the default config into the shared run's.

  A run started with them compiles the programs `digits_run` compiled.
  """
  return DIGITS_RUN_FLAGS
