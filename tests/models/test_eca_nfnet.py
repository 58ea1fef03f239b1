"""ECA-NFNet-L0 ... L3 and the ECA layer: timm's exact parameter counts under
either zero-init option, L0's multiply-adds, feature-map sizes, parameter
names, ECA against a NumPy reference and timm's kernel-size rule, the
runner's train step, and the configs."""
import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets.models as models
from nfnets import layers
from nfnets.configs import eca_nfnet as eca_nfnet_config
from nfnets.train import config as train_config
from tests.train.test_experiment import one_runner_step

# timm: sum(p.numel() for p in timm.create_model('eca_nfnet_lN').parameters()),
# as its model cards and results tables list them.
TIMM_PARAMS = {
    'eca_nfnet_l0': 24_143_924,
    'eca_nfnet_l1': 41_407_728,
    'eca_nfnet_l2': 56_722_348,
    'eca_nfnet_l3': 72_036_968,
}
BLOCKS = {'eca_nfnet_l0': 12, 'eca_nfnet_l1': 24, 'eca_nfnet_l2': 36,
          'eca_nfnet_l3': 48}
# timm's default_cfgs: (train px, pooled feature map side at train px).
TIMM_POOL = {'eca_nfnet_l0': (224, 7), 'eca_nfnet_l1': (256, 8),
             'eca_nfnet_l2': (320, 10), 'eca_nfnet_l3': (352, 11)}


def _timm_eca_kernel(channels, gamma=2, beta=1):
  """timm's EcaModule rule, as written there."""
  t = int(abs(math.log(channels, 2) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


@pytest.mark.parametrize('name', sorted(TIMM_PARAMS))
def test_parameter_counts_equal_timms_with_either_zero_init(name):
  # Default (timm's zero_init_last): exactly timm's parameters.
  assert models.count_params(name) == TIMM_PARAMS[name]
  # SkipInit instead: one scalar skip_gain more per block.
  assert models.count_params(name, zero_init_last=False) == (
      TIMM_PARAMS[name] + BLOCKS[name])
  assert models.get_spec(name).params_m * 1e6 == pytest.approx(
      TIMM_PARAMS[name], abs=0.5)


def test_l0_multiply_adds_at_224():
  # Published: 4.244 GMACs at 224 px. Convs and the classifier only.
  macs = models.count_macs('eca_nfnet_l0', 224)
  assert abs(macs - 4.244e9) / 4.244e9 < 0.02, macs


@pytest.mark.parametrize('name', sorted(TIMM_POOL))
def test_final_feature_map_matches_timms_pool_size(name):
  px, side = TIMM_POOL[name]
  fwd = models.transform(name)
  images = jax.ShapeDtypeStruct((1, px, px, 3), jnp.float32)
  params, state = models.abstract_init(fwd, px)
  (logits, acts), _ = jax.eval_shape(
      lambda p, s, x: fwd.apply(p, s, None, x, is_training=False,
                                return_activations=True), params, state, images)
  assert acts.stem.shape == (1, px // 4, px // 4, 128)
  assert acts.blocks[-1].shape == (1, side, side, 1536)
  final = 2304 if name == 'eca_nfnet_l0' else 3072
  assert acts.pooled.shape == (1, final) and logits.shape == (1, 1000)


def test_parameter_names_follow_this_packages_nfnet():
  params, _ = models.abstract_init(models.transform('eca_nfnet_l0'), 64)
  assert params['ECA_NFNet/~/stem_conv0']['w'].shape == (3, 3, 3, 16)
  assert params['ECA_NFNet/~/stem_conv3']['w'].shape == (3, 3, 64, 128)
  assert 'ECA_NFNet/~/nf_block_11/~/conv2' in params
  assert 'ECA_NFNet/~/nf_block_12/~/conv2' not in params
  block1 = 'ECA_NFNet/~/nf_block_1'
  assert block1 not in params  # No skip_gain with zero_init_last.
  # Inner width 512 / 4 = 128 in groups of 64.
  assert params[f'{block1}/~/conv1b']['w'].shape == (3, 3, 64, 128)
  assert params[f'{block1}/~/conv_shortcut']['w'].shape == (1, 1, 256, 512)
  assert params[f'{block1}/~/conv2']['w'].shape == (1, 1, 128, 512)
  eca = [k for k in params if k.endswith('/eca')]
  assert len(eca) == 12 and all(params[k]['w'].shape == (5,) for k in eca)
  assert params['ECA_NFNet/~/final_conv']['w'].shape == (1, 1, 1536, 2304)
  assert params['ECA_NFNet/~/linear']['w'].shape == (2304, 1000)
  skip, _ = models.abstract_init(
      models.transform('eca_nfnet_l0', zero_init_last=False), 64)
  assert skip[block1] == {'skip_gain': jax.ShapeDtypeStruct((), jnp.float32)}


@pytest.mark.parametrize('channels', [1, 16, 64, 100, 256, 512, 1000, 1536,
                                      2048, 4096, 65536])
def test_eca_kernel_rule_matches_timm(channels):
  assert layers.eca_kernel_size(channels) == _timm_eca_kernel(channels)
  assert layers.eca_kernel_size(channels, 3, 2) == _timm_eca_kernel(
      channels, 3, 2)


def test_eca_kernel_is_five_in_every_stage_at_full_width():
  assert {layers.eca_kernel_size(c) for c in (256, 512, 1536)} == {5}
  assert (layers.eca_kernel_size(64), layers.eca_kernel_size(4096)) == (3, 7)


def _numpy_eca(x, w):
  """Pool over H, W, zero-pad the channels, correlate with w, sigmoid."""
  pooled = x.astype(np.float64).mean(axis=(1, 2))  # [N, C]
  k, channels = len(w), pooled.shape[1]
  padded = np.pad(pooled, ((0, 0), ((k - 1) // 2, (k - 1) // 2)))
  logits = np.stack([padded[:, c:c + k] @ w for c in range(channels)], 1)
  return (1 / (1 + np.exp(-logits)))[:, None, None, :]


@pytest.mark.parametrize('kernel_size, channels', [(5, 12), (None, 12),
                                                   (3, 7), (None, 300)])
def test_eca_matches_numpy_reference(kernel_size, channels):
  eca = hk.transform(lambda x: layers.ECA(kernel_size)(x))
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5, channels)) + 0.5
  params = eca.init(jax.random.PRNGKey(1), x)
  w = params['eca']['w']
  k = kernel_size or _timm_eca_kernel(channels)
  assert w.shape == (k,)
  assert np.all(np.abs(w) <= 1 / math.sqrt(k))  # PyTorch's Conv1d init.
  w = w * 3.0  # Large weights, so that the edges' zero padding matters.
  gate = eca.apply({'eca': {'w': w}}, None, x)
  assert gate.shape == (3, 1, 1, channels)
  np.testing.assert_allclose(gate, _numpy_eca(np.asarray(x), np.asarray(w)),
                             rtol=1e-5, atol=1e-6)


def test_eca_refuses_an_even_kernel():
  with pytest.raises(ValueError, match='odd'):
    hk.transform(lambda x: layers.ECA(4)(x)).init(None, jnp.ones((1, 2, 2, 8)))


_TINY = dict(num_classes=7, depth=(1, 2), widths=(256, 512), width=1 / 16,
             stochdepth_rate=0.0, drop_rate=0.0)


def test_both_zero_init_options_start_branches_at_zero_and_open_alike():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  zero = models.transform('eca_nfnet_l0', **_TINY)
  skip = models.transform('eca_nfnet_l0', zero_init_last=False, **_TINY)
  p_zero, state = jax.jit(zero.init)(jax.random.PRNGKey(1), x)
  p_skip, _ = jax.jit(skip.init)(jax.random.PRNGKey(1), x)
  conv2 = sorted(k for k in p_zero if k.endswith('/conv2'))
  assert len(conv2) == 3
  assert all(np.all(p_zero[k]['gain'] == 0) for k in conv2)
  assert all(np.all(p_skip[k]['gain'] == 1) for k in conv2)

  @jax.jit
  def forward(p_zero, p_skip):
    (logits, acts), _ = zero.apply(p_zero, state, None, x, is_training=False,
                                   return_activations=True)
    return acts.branches, logits, skip.apply(p_skip, state, None, x,
                                             is_training=False)[0]

  branches, _, _ = forward(p_zero, p_skip)
  assert all(np.all(b == 0) for b in branches)
  # With the last conv's gains and the skip gains at one, the two are the
  # same network (ECA sees the conv's output before any skip gain).
  opened = {k: dict(v, gain=jnp.ones_like(v['gain'])) if k in conv2 else v
            for k, v in p_zero.items()}
  skip_opened = {k: ({'skip_gain': jnp.float32(1.0)} if 'skip_gain' in v
                     else v) for k, v in p_skip.items()}
  _, got, want = forward(opened, skip_opened)
  assert np.std(want) > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_one_train_step_of_a_tiny_l0_with_the_runners_step():
  config = eca_nfnet_config.get_config('l0,runlocal')
  config.model.kwargs.depth = (1, 1)
  config.model.kwargs.widths = (256, 512)
  config.data.image_size = config.data.eval_image_size = 16
  config.training.batch_size = 8
  config.optimizer.warmup_steps = 0  # A warmup's first learning rate is 0.
  # RandAugment and mixing on digits run TensorFlow ops: not what this test
  # is about.
  config.data.randaugment_layers = 0
  config.data.mixup_alpha = config.data.cutmix_alpha = 0.0
  state, new, metrics, _ = one_runner_step(config)
  assert int(new.step) == 1
  assert 1.5 < float(metrics['loss']) < 3.5  # About log(10) at init.
  # The zero-initialised gains get gradients: the branches open.
  for block in ('nf_block', 'nf_block_1'):
    gain = new.params[f'ECA_NFNet/~/{block}/~/conv2']['gain']
    assert np.all(state.params[f'ECA_NFNet/~/{block}/~/conv2']['gain'] == 0)
    assert np.any(gain != 0)
  for leaf in ('ECA_NFNet/~/stem_conv0', 'ECA_NFNet/~/linear'):
    assert np.any(new.params[leaf]['w'] != state.params[leaf]['w'])


@pytest.mark.parametrize('word, px', [('l0', (224, 288)), ('l1', (256, 320)),
                                      ('l2', (320, 384)), ('l3', (352, 448))])
def test_imagenet_recipe_uses_timms_resolutions_and_crop(word, px):
  config = eca_nfnet_config.get_config(word)
  train_config.validate_config(config, num_devices=8)
  assert config.model.name == f'eca_nfnet_{word}'
  assert (config.data.image_size, config.data.eval_image_size) == px
  assert (config.data.eval_crop, config.data.crop_padding) == ('aspect', 0)
  assert config.training.batch_size == 4096
  assert config.model.kwargs.stochdepth_rate == 0.25


def test_runlocal_forms():
  digits = eca_nfnet_config.get_config('runlocal')
  train_config.validate_config(digits, num_devices=1)
  assert (digits.model.name, digits.data.dataset) == ('eca_nfnet_l0', 'digits')
  assert train_config.durations(digits)[0] <= 20
  smoke = eca_nfnet_config.get_config('l2,runlocal,imagenet')
  train_config.validate_config(smoke, num_devices=1)
  assert smoke.data.dataset == 'imagenet2012'
  assert smoke.data.image_size == 32 and smoke.data.eval_crop == 'aspect'
  assert smoke.model.kwargs.depth == (1, 1, 1, 1)
  with pytest.raises(ValueError, match='Unknown ECA-NFNet variant'):
    eca_nfnet_config.get_config('l4')
