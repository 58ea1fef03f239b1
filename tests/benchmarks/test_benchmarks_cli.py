"""The benchmark scripts' absl command lines and their older dashed spellings.

Nothing here times or compiles a model.
"""
import pathlib
import subprocess
import sys

from absl import flags
import pytest

from benchmarks import _common
from benchmarks import agc_stability
from benchmarks import inference
from benchmarks import train_step
from benchmarks import vs_pytorch
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('script, dashed, underscored', [
    (train_step,
     ['--model', 'nf_resnet50', '--image-size', '32', '--num-classes', '10',
      '--no-agc', '--no-label-smoothing', '--remat-compare', '--no-save'],
     ['--model=nf_resnet50', '--image_size=32', '--num_classes=10',
      '--no_agc', '--no_label_smoothing', '--remat_compare', '--no_save']),
    (inference, ['--image-size', '64', '--no-save', '--dtype', 'bfloat16'],
     ['--image_size=64', '--no_save', '--dtype=bfloat16']),
    (agc_stability, ['--batch-size', '64', '--warmup-steps', '3'],
     ['--batch_size=64', '--warmup_steps=3']),
    (vs_pytorch, ['--image-size', '96', '--no-save', '--block', '3'],
     ['--image_size=96', '--no_save', '--block=3']),
], ids=lambda x: getattr(x, '__name__', '').rpartition('.')[2] or None)
def test_dashed_and_absl_spellings_parse_alike(script, dashed, underscored):
  args = script.parse_args(dashed)
  assert args == script.parse_args(underscored)
  defaults = script.parse_args([])
  # Every option given differs from its default: nothing was dropped.
  changed = {name for name, value in vars(args).items()
             if value != getattr(defaults, name)}
  given = {a.lstrip('-').partition('=')[0].replace('-', '_')
           for a in dashed if a.startswith('--')}
  assert changed == given


def test_switching_parts_off_reaches_the_step_config():
  args = train_step.parse_args(['--no-weight-decay', '--no_ema'])
  config = train_step.step_config(args)
  assert train_step.step_parts(config) == {
      'agc': True, 'weight_decay': False, 'ema': False,
      'label_smoothing': True}
  # absl's own negation of a boolean flag.
  assert not train_step.parse_args(['--no_ema', '--nono_ema']).no_ema


def test_image_size_defaults_to_the_models_resolution():
  assert train_step.parse_args(['--model=nfnet_f1']).image_size == 224
  assert inference.parse_args(['--model=nfnet_f1']).image_size == 320
  assert train_step.parse_args(['--model=bn_resnet50']).image_size == 224


def test_only_known_flags_are_respelled():
  names = {'image_size', 'no_save'}
  argv = ['--image-size', '32', '--model', 'a-b', '--other-flag=1',
          '--no-save', '--', '--image-size']
  assert _common._absl_spelling(argv, names) == [  # pylint: disable=protected-access
      '--image_size', '32', '--model', 'a-b', '--other-flag=1', '--no_save',
      '--', '--image-size']


@pytest.mark.parametrize('argv', [['--image-sise=32'], ['--batch=many'],
                                  ['--dtype=float64'], ['stray']])
def test_bad_flags_raise_flag_errors(argv):
  with pytest.raises(flags.Error):
    train_step.parse_args(argv)


@pytest.mark.parametrize('module', ['benchmarks.train_step',
                                    'benchmarks.inference'])
def test_command_line_takes_old_spellings_and_jax_flags(module):
  # An unknown model stops before any compute, after every flag is parsed.
  result = subprocesses.run(
      [sys.executable, '-m', module, '--model', 'nfnet_f9', '--image-size',
       '32', '--no-save', '--jax_platforms=cpu', '--jax_log_compiles'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.startswith("error: Unknown model 'nfnet_f9'"), (
      result.stderr[-3000:])
  assert len(result.stderr.strip().splitlines()) == 1
