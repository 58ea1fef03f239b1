"""The package installed (not editable) runs from any directory.

`pip install --target` puts a copy of the package in a temporary directory;
the command line then runs with only that directory on PYTHONPATH, from
another directory, so nothing of the checkout (experiments/, the source tree)
can stand in for what the package ships. Offline: --no-deps and
--no-build-isolation need nothing from the package index.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from nfnets.train import checkpoint
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parent.parent
# What setup.py reads besides the package.
_BUILD_FILES = ('setup.py', 'setup.cfg', 'pyproject.toml', 'MANIFEST.in',
                'requirements.txt', 'README.md', 'LICENSE')
# 1/16 width, 16 px: the install is under test, not the model.
_SMALL = ('--config.model.kwargs.width=0.0625', '--config.data.image_size=16',
          '--config.data.eval_image_size=16', '--config.eval.every_steps=0')


@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> pathlib.Path:
  """A directory holding the package as `pip install` installs it."""
  root = tmp_path_factory.mktemp('install')
  # pip builds in the source tree (build/, nfnets.egg-info/): build a copy.
  source = root / 'source'
  shutil.copytree(REPO / 'nfnets', source / 'nfnets',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in _BUILD_FILES:
    if (REPO / name).is_file():
      shutil.copy2(REPO / name, source / name)
  target = root / 'site'
  result = subprocesses.run(
      [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
       '--no-build-isolation', '--no-compile', '--quiet', '--target',
       str(target), str(source)],
      capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return target


def _run(installed: pathlib.Path, cwd: pathlib.Path, *args: str,
         cache_env: dict[str, str]) -> subprocess.CompletedProcess:
  """`python ARGS` with only the installed copy of nfnets importable."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(cache_env, PYTHONPATH=str(installed))
  return subprocesses.run([sys.executable, *args], cwd=cwd, env=env,
                        capture_output=True, text=True)


def _steps(workdir: pathlib.Path) -> list[int]:
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line)['step'] for line in lines]


@pytest.mark.slow
def test_the_installed_package_trains_from_another_directory(
    installed, tmp_path, compilation_cache_env):
  cwd = tmp_path / 'elsewhere'
  cwd.mkdir()
  where = _run(installed, cwd, '-c',
               'import nfnets, nfnets.configs; print(nfnets.__file__); '
               'print(nfnets.configs.__file__)',
               cache_env=compilation_cache_env)
  assert where.returncode == 0, where.stderr[-3000:]
  for line in where.stdout.split():
    assert pathlib.Path(line).is_relative_to(installed), where.stdout
  # The recipes ship inside the package; experiments/ does not.
  assert (installed / 'nfnets' / 'configs' / 'nfnet.py').is_file()
  assert not (installed / 'experiments').exists()

  # The default config, as the README's first command runs it.
  workdir = tmp_path / 'digits'
  result = _run(installed, cwd, '-m', 'nfnets.experiment',
                f'--workdir={workdir}', '--config.training.num_steps=3',
                '--config.optimizer.warmup_steps=1', *_SMALL,
                cache_env=compilation_cache_env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 3/3' in result.stderr
  assert _steps(workdir)[-1] == 3

  # A recipe by name: NFNet-F0's smoke test, one block per stage.
  workdir = tmp_path / 'f0'
  result = _run(installed, cwd, '-m', 'nfnets.experiment',
                '--config=nfnet_f0:runlocal', f'--workdir={workdir}',
                '--config.training.num_steps=2',
                '--config.optimizer.warmup_steps=1',
                '--config.model.kwargs.depth=(1,1,1,1)', *_SMALL,
                cache_env=compilation_cache_env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _steps(workdir)[-1] == 2
  config = checkpoint.load_config(workdir)
  assert (config.model.name, config.data.dataset) == ('nfnet_f0', 'digits')
  assert list(config.model.kwargs.depth) == [1, 1, 1, 1]
  # runlocal's own values survive where not overridden.
  assert config.training.batch_size == 16
