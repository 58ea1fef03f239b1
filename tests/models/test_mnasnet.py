"""MnasNet-A1, -B1 and its width variants, and NF-MnasNet-B1: exact sizes,
torchvision's channel rounding, SE placement, the head, and the configs."""
import haiku as hk
import jax
import pytest

import nfnets.models as models
from nfnets import train
from nfnets.configs import mnasnet as mnasnet_config
from nfnets.models import mnasnet
from nfnets.train import config as train_config

# Exact counts: timm's semnasnet_100 (A1) and torchvision's mnasnet0_5,
# 0_75, 1_0 and 1_3 (B1).
PUBLISHED_PARAMS = {'mnasnet_a1': 3_887_038, 'mnasnet_b1': 4_383_312,
                    'mnasnet_050': 2_218_512, 'mnasnet_075': 3_170_208,
                    'mnasnet_130': 6_282_256}
# torchvision's `_get_depths(alpha)`: stem, then the seven stage widths.
DEPTHS = {'mnasnet_050': (16, 8, 16, 24, 40, 48, 96, 160),
          'mnasnet_075': (24, 16, 24, 32, 64, 72, 144, 240),
          'mnasnet_b1': (32, 16, 24, 40, 80, 96, 192, 320),
          'mnasnet_130': (40, 24, 32, 56, 104, 128, 248, 416)}


@pytest.mark.parametrize('name', sorted(PUBLISHED_PARAMS))
def test_parameter_count_equals_the_reference_exactly(name):
  assert models.count_params(name) == PUBLISHED_PARAMS[name]


@hk.testing.transform_and_run
def _blocks(variant):
  net = mnasnet.MnasNet(1000, variant)
  return [(b.project_conv.output_channels, b.se, b.residual)
          for b in net.blocks], net.stem_conv.output_channels, (
              net.final_conv.output_channels)


@pytest.mark.parametrize('name', sorted(DEPTHS))
def test_widths_round_as_torchvision_and_the_head_stays_1280(name):
  blocks, stem, head = _blocks(name.split('_')[1])
  assert head == 1280
  stage_widths = []
  for out, _, _ in blocks:
    if not stage_widths or stage_widths[-1] != out:
      stage_widths.append(out)
  assert (stem, *stage_widths) == DEPTHS[name]


def test_a1_has_se_after_the_depthwise_conv_of_three_stages_b1_none():
  a1, _, _ = _blocks('a1')
  se_stages = {out for out, se, _ in a1 if se is not None}
  assert se_stages == {40, 112, 160}
  first_40 = next(se for out, se, _ in a1 if out == 40)
  # SE width from the block's input (24 channels), ReLU inside.
  assert first_40.hidden_ch == int(24 * 0.25)
  assert first_40.activation is jax.nn.relu
  b1, _, _ = _blocks('b1')
  assert all(se is None for _, se, _ in b1)
  # The separable first block never has a residual.
  assert not a1[0][2] and not b1[0][2]
  params, _ = models.abstract_init(models.transform('mnasnet_a1'), 32)
  se = params['MnasNet/~/mb_conv_block_3/~/squeeze_excite/~/linear']['w']
  assert se.shape == (72, 6)  # 24 inputs x 3 = 72 gated channels.


def test_nf_variant_has_no_normalization_and_one_skip_gain_per_residual():
  params, state = models.abstract_init(models.transform('nf_mnasnet_b1'), 32)
  assert not state
  gains = [k for k, v in params.items() if 'skip_gain' in v]
  assert len(gains) == 10  # 17 blocks less the 7 stage transitions.
  assert models.count_params('nf_mnasnet_b1') == 4_383_312 + 10
  assert models.get_spec('nf_mnasnet_b1').classifier in params


@pytest.mark.parametrize('arg', ['a1', 'b1', '050', '130', 'nf_b1'])
def test_imagenet_recipe(arg):
  config = mnasnet_config.get_config(arg)
  train_config.validate_config(config, num_devices=8)
  assert config.data.image_size == config.data.eval_image_size == 224
  assert config.model.kwargs.drop_rate == 0.2
  assert config.data.randaugment_layers == 0
  opt = config.optimizer
  assert (opt.name, opt.schedule, opt.decay_rate, opt.decay_epochs) == (
      'rmsprop', 'exponential', 0.97, 2.4)
  assert opt.base_lr * config.training.batch_size / 256 == pytest.approx(
      0.256)
  assert train_config.durations(config)[0] == round(350 * 1_281_167 / 4096)


@pytest.mark.parametrize('arg', ['runlocal', 'a1,runlocal', 'digits'])
def test_cpu_sized_forms(arg):
  config = mnasnet_config.get_config(arg)
  train_config.validate_config(config, num_devices=1)
  assert config.data.dataset == 'digits'
  assert train_config.durations(config)[0] <= 450


def test_unknown_variant_names_the_known_ones():
  with pytest.raises(ValueError, match="Unknown MnasNet variant 'c1'.*a1"):
    mnasnet_config.get_config('c1')
  with pytest.raises(ValueError, match='runlocal'):
    mnasnet_config.get_config('b1,runlcal')


@pytest.mark.slow
def test_nf_variant_learns_the_digits(tmp_path):
  # The digits form of NF-MnasNet-B1 at 16 px, 200 of its 450 steps: 93.6%
  # and 90.8% test top-1 with seeds 0 and 1 (the full run: see the README).
  config = mnasnet_config.get_config('nf_b1,digits')
  config.data.image_size = config.data.eval_image_size = 16
  config.training.num_steps = 200
  config.eval.every_steps = 0
  config.checkpoint.every_steps = 0
  metrics = train.train_and_evaluate(config, tmp_path)
  assert metrics['eval/top1'] >= 0.8
