"""The experiment configs: the paper's recipe per variant, overrides, errors.

Nothing here trains; every check runs before any compute.
"""
import importlib.util
import pathlib

from absl import flags
import ml_collections
import pytest

from nfnets import configs
from nfnets import models
from nfnets import train
from nfnets.cli import config_flag
from nfnets.train import config as train_config
from nfnets.train import optimizer as train_optimizer

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / 'experiments'

# [NFNet] Table 1 / appendix, typed in from the paper:
# (train px, test px, RandAugment magnitude, dropout).
NFNET_RECIPE = {
    'nfnet_f0': (192, 256, 5, 0.2),
    'nfnet_f1': (224, 320, 10, 0.3),
    'nfnet_f2': (256, 352, 10, 0.4),
    'nfnet_f3': (320, 416, 15, 0.4),
    'nfnet_f4': (384, 512, 15, 0.5),
    'nfnet_f5': (416, 544, 15, 0.5),
    'nfnet_f6': (448, 576, 15, 0.5),
    'nfnet_f7': (480, 608, 15, 0.5),
}
IMAGENET_TRAIN = 1_281_167


def load(name: str, arg: str = None) -> ml_collections.ConfigDict:
  """get_config(arg) of experiments/<name>.py, loaded by path as absl does."""
  spec = importlib.util.spec_from_file_location(name,
                                                EXPERIMENTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def parse(argv):
  """The runner's command-line parsing of --config, on fresh flags."""
  values = flags.FlagValues()
  argv = ['prog', *argv]
  # Override flags are discovered from argv at parse time (sys.argv by
  # default), so hand it over explicitly.
  config_flag.define('config', default=str(EXPERIMENTS / 'digits.py'),
                     flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def test_every_config_file_is_covered():
  # The MBConv families' files are tested in test_efficientnet/test_mnasnet,
  # the ShuffleNets' in test_shufflenet, the ECA-NFNets' in test_eca_nfnet,
  # the high-order CIFAR ResNets' in test_ho_resnet.
  mbconv = {*(f'efficientnet_b{i}' for i in range(8)), 'mnasnet_a1',
            'mnasnet_b1'}
  shufflenet = {*(f'shufflenet_v1_g{g}' for g in (1, 2, 3, 4, 8)),
                *(f'shufflenet_v2_x{x}' for x in ('0_5', '1_0', '1_5', '2_0'))}
  expected = {*NFNET_RECIPE, 'nf_resnet50', 'nf_regnet_b0', 'digits', *mbconv,
              *shufflenet, *(f'eca_nfnet_l{i}' for i in range(4)),
              'ho_resnet_cifar'}
  assert {p.stem for p in EXPERIMENTS.glob('*.py')} == expected


@pytest.mark.parametrize('name', sorted(NFNET_RECIPE))
def test_nfnet_recipe(name):
  config = load(name)
  train_config.validate_config(config, num_devices=8)
  train_px, test_px, magnitude, dropout = NFNET_RECIPE[name]
  assert config.model.name == name
  assert config.data.dataset == 'imagenet2012'
  assert (config.data.image_size, config.data.eval_image_size) == (
      train_px, test_px)
  assert config.data.randaugment_layers == 4
  assert config.data.randaugment_magnitude == magnitude
  assert config.model.kwargs.drop_rate == dropout
  assert config.model.kwargs.stochdepth_rate == 0.25
  assert (config.data.mixup_alpha, config.data.cutmix_alpha) == (0.2, 1.0)
  tc = config.training
  assert tc.batch_size == 4096
  assert tc.label_smoothing == 0.1
  assert tc.ema_decay == 0.99999
  assert tc.compute_dtype == 'bfloat16'
  opt = config.optimizer
  assert train_optimizer.peak_learning_rate(opt, tc.batch_size) == pytest.approx(
      0.1 * 4096 / 256)
  assert (opt.momentum, opt.nesterov, opt.weight_decay) == (0.9, True, 2e-5)
  assert opt.clipping == 0.01 and opt.end_lr == 0.0
  total, warmup = train_config.durations(config)
  assert total == round(360 * IMAGENET_TRAIN / 4096)
  assert warmup == round(5 * IMAGENET_TRAIN / 4096)


def test_baseline_recipes():
  resnet = load('nf_resnet50')
  train_config.validate_config(resnet, num_devices=8)
  assert resnet.model.name == 'nf_resnet50'
  assert resnet.data.randaugment_layers == 0
  assert train_config.durations(resnet)[0] == round(90 * IMAGENET_TRAIN / 4096)
  regnet = load('nf_regnet_b0')
  train_config.validate_config(regnet, num_devices=8)
  assert (regnet.data.image_size, regnet.data.eval_image_size) == (192, 224)
  assert train_config.durations(regnet)[0] == round(
      360 * IMAGENET_TRAIN / 4096)


@pytest.mark.parametrize('name', ['nfnet_f0', 'nfnet_f7', 'nf_resnet50',
                                  'nf_regnet_b0', 'digits'])
def test_runlocal_is_cpu_sized(name):
  config = load(name, 'runlocal')
  train_config.validate_config(config, num_devices=1)
  assert config.data.dataset == 'digits'
  assert config.training.batch_size <= 64
  assert train_config.durations(config)[0] <= 20
  if name != 'digits':
    # The recipe's machinery stays on; only the sizes shrink.
    full = load(name)
    assert config.model.name == full.model.name
    assert config.data.randaugment_layers == full.data.randaugment_layers
    assert config.data.mixup_alpha == full.data.mixup_alpha


# Every ImageNet recipe that takes 'runlocal' (both MBConv families' files
# share one config module each, so one variant per extreme suffices).
IMAGENET_RECIPES = ['nfnet_f0', 'nfnet_f7', 'nf_resnet50', 'nf_regnet_b0',
                    'efficientnet_b0', 'efficientnet_b7', 'mnasnet_a1',
                    'mnasnet_b1']


@pytest.mark.parametrize('name', IMAGENET_RECIPES)
def test_runlocal_imagenet_is_cpu_sized_on_the_imagenet_pipeline(name):
  config = load(name, 'runlocal,imagenet')
  train_config.validate_config(config, num_devices=1)
  full, digits = load(name), load(name, 'runlocal')
  assert config.model.name == full.model.name
  assert config.data.dataset == 'imagenet2012'
  assert config.data.eval_split == 'validation[:1%]'
  # The recipe's augmentation, as on the full run.
  for field in ('randaugment_layers', 'randaugment_magnitude', 'mixup_alpha',
                'cutmix_alpha', 'eval_crop'):
    assert config.data[field] == full.data[field], field
  # The recipe's train/test resolution ratio and cropped fraction, at 32 px.
  assert config.data.image_size == 32
  assert config.data.eval_image_size == round(
      32 * full.data.eval_image_size / full.data.image_size)
  assert config.data.crop_padding / config.data.eval_image_size == (
      pytest.approx(full.data.crop_padding / full.data.eval_image_size,
                    abs=0.5 / config.data.eval_image_size))
  # The digits smoke run's sizes and length, one block per stage.
  assert config.model.kwargs.width == digits.model.kwargs.width == 0.125
  assert set(config.model.kwargs.depth) == {1}
  assert len(config.model.kwargs.depth) == len(
      models.get_spec(config.model.name).depth)
  assert config.training.batch_size == digits.training.batch_size <= 64
  assert train_config.durations(config) == train_config.durations(digits)
  assert config.training.compute_dtype == 'float32'


@pytest.mark.parametrize('name, arg, message', [
    ('nfnet_f0', 'runlcal', 'known: runlocal, imagenet'),
    ('nfnet_f0', 'imagenet', "use 'runlocal,imagenet'"),
    ('nf_resnet50', 'imagenet', "use 'runlocal,imagenet'"),
    ('efficientnet_b0', 'imagenet', "use 'runlocal,imagenet'"),
    ('efficientnet_b0', 'digits,runlocal', "'digits' is a config of its own"),
    ('mnasnet_b1', 'digits,imagenet', "'digits' is a config of its own"),
    ('digits', 'runlocal,imagenet', "no 'imagenet' form.*nfnet_f0.py:runlocal"),
])
def test_config_argument_errors(name, arg, message):
  with pytest.raises(ValueError, match=message):
    load(name, arg)


def test_unknown_config_argument():
  with pytest.raises(ValueError, match='runlocal'):
    load('nfnet_f0', 'runlcal')


def test_digits_is_the_command_line_default():
  config = parse([])
  assert config.data.dataset == 'digits'
  train_config.validate_config(config, num_devices=1)


def test_command_line_overrides():
  config = parse([f'--config={EXPERIMENTS / "nfnet_f1.py"}:runlocal',
                  '--config.training.batch_size=32',
                  '--config.optimizer.clipping=0.02',
                  '--config.model.kwargs.width=0.25',
                  '--config.model.kwargs.remat=True',
                  '--config.training.num_steps=7'])
  assert config.model.kwargs.remat is True
  assert config.training.batch_size == 32
  assert config.optimizer.clipping == 0.02
  assert config.model.kwargs.width == 0.25
  assert train_config.durations(config)[0] == 7


def test_command_line_rejects_a_wrong_type():
  with pytest.raises(flags.Error, match='batch_size'):
    parse(['--config.training.batch_size=abc'])


def test_command_line_rejects_an_unknown_field():
  with pytest.raises(AttributeError, match='Did you mean "batch_size"'):
    parse(['--config.training.batch_sze=64'])


def _with(config, path, value):
  """A copy of `config` with a field set, bypassing ConfigDict's type checks."""
  values = config.to_dict()
  *parents, leaf = path.split('.')
  node = values
  for key in parents:
    node = node[key]
  node[leaf] = value
  return ml_collections.ConfigDict(values)


@pytest.mark.parametrize('path, value, message', [
    ('training.no_such_field', 1, r'Unknown config field.*training\.no_such'),
    ('training.batch_size', '64', r'training\.batch_size must be int'),
    ('training.label_smoothing', 'high', r'label_smoothing must be float'),
    ('model.name', 'nfnet_f9', r"Unknown model 'nfnet_f9'; did you mean 'nfnet_f7'"),
    ('model.kwargs.depht', 3, r"does not take.*depht.*depth"),
    ('data.dataset', 'svhn', r"Unknown data set 'svhn'.*cifar100, digits"),
    ('training.compute_dtype', 'float8', r'compute_dtype must be one of'),
    ('training.batch_size', 12, r'batch_size=12 does not divide over 8'),
    ('eval.batch_size', 100, r'eval\.batch_size=100 does not divide over 8'),
    ('training.num_epochs', 3.0, r'only one of num_steps'),
    ('optimizer.momentum', 1.5, r'momentum'),
])
def test_validation_errors(path, value, message):
  config = _with(configs.digits_config(), path, value)
  with pytest.raises(train.ConfigError, match=message):
    train_config.validate_config(config, num_devices=8)


def test_invalid_config_fails_before_anything_is_written(tmp_path):
  config = _with(configs.digits_config(), 'model.name', 'nfnet_f9')
  workdir = tmp_path / 'run'
  with pytest.raises(train.ConfigError, match='Known models'):
    train.train_and_evaluate(config, workdir)
  assert not workdir.exists()
