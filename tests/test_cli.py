"""The command lines: configs by name, JAX's flags, help, quiet logs.

The quick tests load configs in this process and run the command lines only
as far as their flags; the slow one trains and evaluates a tiny digits run
through `python -m nfnets.experiment` and `python -m nfnets.evaluate` and
reads their stderr.
"""
import logging as pylogging
import os
import pathlib
import re
import subprocess
import sys
import warnings

from absl import flags
from absl import logging
import pytest

from nfnets.cli import common
from nfnets.cli import config_flag
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / 'experiments'


def parse(argv: list[str]):
  """The config the runner's --config flag makes of `argv`, on fresh flags."""
  values = flags.FlagValues()
  argv = ['prog', *argv]
  holder = config_flag.define(flag_values=values, sys_argv=argv)
  values(argv)
  return holder.value


def _cli(module: str, *args: str, cwd: pathlib.Path = REPO,
         env: dict[str, str] = None
         ) -> subprocess.CompletedProcess:
  return subprocesses.run([sys.executable, '-m', module, *args], cwd=cwd,
                        env=env, capture_output=True, text=True)


# ---------------------------------------------------------- configs by name


@pytest.mark.parametrize('path', sorted(EXPERIMENTS.glob('*.py')),
                         ids=lambda p: p.stem)
def test_every_experiment_file_has_a_name_that_loads_the_same(path):
  by_name = parse([f'--config={path.stem}'])
  by_path = parse([f'--config={path}'])
  assert by_name.to_dict() == by_path.to_dict()


@pytest.mark.parametrize('value, model, dataset', [
    ('nfnet_f1', 'nfnet_f1', 'imagenet2012'),
    ('nfnet_f0:runlocal', 'nfnet_f0', 'digits'),
    ('nfnet:f3,runlocal', 'nfnet_f3', 'digits'),
    ('efficientnet_b0', 'efficientnet_b0', 'imagenet2012'),
    ('nf_efficientnet_b0:digits', 'nf_efficientnet_b0', 'digits'),
    ('mnasnet_b1:digits', 'mnasnet_b1', 'digits'),
    ('digits', 'nfnet_f0', 'digits'),
    ('nf_resnet50', 'nf_resnet50', 'imagenet2012'),
])
def test_names_resolve_to_their_recipe(value, model, dataset):
  config = parse([f'--config={value}'])
  assert config.model.name == model
  assert config.data.dataset == dataset


def test_every_listed_name_loads_its_model():
  for name, (module, word) in config_flag.names().items():
    config = config_flag.load(name)
    if word:  # A variant name is the model's.
      assert config.model.name == name
  # Every registered model a family config trains has a name.
  assert {'nfnet_f0', 'nfnet_f7_plus', 'efficientnet_b7', 'mnasnet_a1',
          'nf_mnasnet_b1', 'nf_regnet_b0'} <= set(config_flag.names())


def test_overrides_apply_to_names_and_files():
  for value in ('nfnet_f0:runlocal', f'{EXPERIMENTS / "nfnet_f0.py"}:runlocal'):
    config = parse([f'--config={value}', '--config.training.batch_size=32',
                    '--config.optimizer.clipping=0.02'])
    assert config.training.batch_size == 32
    assert config.optimizer.clipping == 0.02
  assert parse([]).data.dataset == 'digits'  # The default, by name.


def test_a_users_own_file_with_an_argument(tmp_path):
  path = tmp_path / 'mine.py'
  path.write_text('from nfnets import configs\n'
                  'def get_config(arg):\n'
                  '  config = configs.digits_config()\n'
                  '  config.training.num_steps = int(arg)\n'
                  '  return config\n')
  config = parse([f'--config={path}:7', '--config.training.batch_size=8'])
  assert (config.training.num_steps, config.training.batch_size) == (7, 8)


def test_loading_a_config_file_warns_of_no_deprecation():
  # ml_collections' own loader calls importlib's deprecated load_module().
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    parse([f'--config={EXPERIMENTS / "nfnet_f1.py"}:runlocal',
           '--config.training.batch_size=32'])
  deprecations = [str(w.message) for w in caught
                  if issubclass(w.category, DeprecationWarning)]
  assert not deprecations, deprecations


@pytest.mark.parametrize('value, needles', [
    ('nfnet_f9', ["Unknown config 'nfnet_f9'; did you mean 'nfnet_f",
                  'efficientnet_{b0, b1', 'digits', 'nf_resnet50']),
    ('resnet50', ["did you mean 'nf_resnet50'?"]),
    ('nfnet_f1:runlcal', ['nfnet_f1:runlcal', 'runlocal']),
    ('no/such/nfnet_f1.py', ['No such file', '--config=nfnet_f1']),
])
def test_bad_values_say_what_to_type(value, needles):
  with pytest.raises(config_flag.ConfigLoadError) as error:
    parse([f'--config={value}'])
  message = str(error.value)
  assert '\n' not in message
  for needle in needles:
    assert needle in message, message


def test_an_unknown_name_is_one_error_line_from_the_command_line(tmp_path):
  result = _cli('nfnets.experiment', '--config=nfnet_f9',
                f'--workdir={tmp_path / "run"}')
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      'error: ' + str(config_flag._unknown_name('nfnet_f9'))]  # pylint: disable=protected-access
  assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------ flags and help


def test_help_documents_names():
  result = _cli('nfnets.experiment', '--help')
  text = re.sub(r'\s+', ' ', result.stdout)
  assert '--config=nfnet_f1' in text
  assert 'Built-in names:' in text
  assert 'nfnet_{f0, f0_plus, f1' in text and 'efficientnet_b0:digits' in text


@pytest.mark.parametrize('module, own_flag', [
    ('nfnets.experiment', '--workdir'),
    ('nfnets.evaluate', '--checkpoint'),
    ('nfnets.spp', '--models'),
    ('benchmarks.train_step', '--image_size'),
])
def test_helpfull_lists_jax_flags(module, own_flag):
  result = _cli(module, '--helpfull')
  # absl exits with status 1 after printing help.
  assert result.returncode in (0, 1), result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  for flag in (own_flag, '--[no]jax_log_compiles', '--jax_platforms',
               '--[no]jax_enable_x64', '--[no]traceback'):
    assert flag in result.stdout, flag


# ---------------------------------------------------------------- quiet logs


def _record(pathname: str, level: int, message: str) -> pylogging.LogRecord:
  return pylogging.LogRecord('x', level, pathname, 1, message, None, None)


@pytest.mark.parametrize('pathname, level, message, shown', [
    ('/x/orbax/checkpoint/manager.py', pylogging.WARNING, 'read only', False),
    ('/x/tensorflow_datasets/core/info.py', pylogging.INFO, 'Load', False),
    ('/x/tensorflow_datasets/core/info.py', pylogging.WARNING, 'Bad', True),
    ('/x/matplotlib/font_manager.py', pylogging.INFO,
     'generated new fontManager', False),
    ('/x/jax/_src/xla_bridge.py', pylogging.INFO,
     "Unable to initialize backend 'tpu'", False),
    ('/x/nfnets/train/loop.py', pylogging.INFO, 'step 2/2', True),
    ('/x/jax/_src/dispatch.py', pylogging.WARNING, 'Compiling f', True),
])
def test_quiet_libraries_filter(pathname, level, message, shown):
  quiet = common.QuietLibraries()
  old = logging.get_verbosity()
  try:
    logging.set_verbosity(logging.INFO)
    assert quiet.filter(_record(pathname, level, message)) == shown
    logging.set_verbosity(logging.DEBUG)  # --verbosity=1: everything.
    assert quiet.filter(_record(pathname, level, message))
  finally:
    logging.set_verbosity(old)


_NOISY_IMPORT = '''
import sys
sys.path.insert(0, sys.argv[1])
from nfnets.cli import common
common.quiet_native_logs(int(sys.argv[2]))
if any(isinstance(f, common.QuietImport) for f in sys.meta_path):
  # What it did for tensorflow, for a stand-in module.
  sys.meta_path.insert(0, common.QuietImport('noisy'))
import importlib.util
assert importlib.util.find_spec('noisy') is not None  # A look, no import.
import noisy
print('imported', noisy.VALUE, file=sys.stderr)
'''


@pytest.mark.parametrize('verbosity', [0, 1])
def test_native_lines_are_muted_while_importing_at_default_verbosity(
    tmp_path, verbosity):
  (tmp_path / 'noisy.py').write_text(
      'import os\nos.write(2, b"native start-up line\\n")\nVALUE = 7\n')
  result = subprocesses.run(
      [sys.executable, '-c', _NOISY_IMPORT, str(tmp_path), str(verbosity)],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  assert ('native start-up line' in result.stderr) == bool(verbosity)
  assert 'imported 7' in result.stderr  # stderr works again after it.


# Lines the libraries print at the default verbosity that say nothing a user
# can act on.
_NOISE = ('Unable to initialize backend', 'generated new fontManager',
          'oneDNN custom operations',
          'All log messages before absl::InitializeLog()', 'read only',
          'read_only')


def _absl_sources(stderr: str, level: str) -> set[str]:
  """The files absl log lines of `level` ('I', 'W') came from."""
  return set(re.findall(rf'^{level}\d{{4}} [\d:.]+ +\d+ ([\w.]+):\d+\]',
                        stderr, re.M))


@pytest.mark.slow
def test_a_run_and_its_evaluation_print_no_library_noise(
    tmp_path, digits_run, digits_run_flags, compilation_cache_env):
  # The session's shared run's flags: its compiled steps are in the cache.
  del digits_run
  workdir = tmp_path / 'run'
  env = dict(os.environ, PYTHONPATH=str(REPO), **compilation_cache_env,
             MPLCONFIGDIR=str(tmp_path / 'mpl'))  # No font cache yet.
  flags_ = [f'--workdir={workdir}', *digits_run_flags,
            '--config.checkpoint.every_steps=0', '--config.eval.every_steps=0']
  train = _cli('nfnets.experiment', *flags_, cwd=tmp_path, env=env)
  assert train.returncode == 0, train.stderr[-3000:]
  for noise in _NOISE:
    assert noise not in train.stderr, train.stderr[-3000:]
  ours = {p.name for p in (REPO / 'nfnets').rglob('*.py')}
  assert _absl_sources(train.stderr, 'I') <= ours, train.stderr[-3000:]
  assert 'step 2/2' in train.stderr and 'Final metrics' in train.stderr

  evaluate = _cli('nfnets.evaluate', f'--workdir={workdir}', '--no_progress',
                  f'--confusion_png={tmp_path / "confusion.png"}',
                  cwd=tmp_path, env=env)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  for noise in _NOISE:
    assert noise not in evaluate.stderr, evaluate.stderr[-3000:]
  assert 'top-1' in evaluate.stdout
  assert (tmp_path / 'confusion.png').is_file()

  # --verbosity=1 brings the libraries' lines back (a fresh font cache, so
  # that matplotlib announces it again).
  env['MPLCONFIGDIR'] = str(tmp_path / 'mpl2')
  verbose = _cli('nfnets.evaluate', f'--workdir={workdir}', '--no_progress',
                 f'--confusion_png={tmp_path / "confusion.png"}',
                 '--verbosity=1', cwd=tmp_path, env=env)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert 'read only' in verbose.stderr
  assert 'generated new fontManager' in verbose.stderr

  # JAX's own flags: a second start finds the finished run and evaluates
  # it, logging what it compiles.
  again = _cli('nfnets.experiment', *flags_, '--jax_log_compiles',
               cwd=tmp_path, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Compiling' in again.stderr, again.stderr[-3000:]
  assert 'Compiling' not in train.stderr
