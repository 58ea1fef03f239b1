"""Residual Attention Networks: the Caffe definitions' exact sizes, the
paper's multiply-adds, feature-map and mask shapes, the mask branch's
layout, the attention residual (1 + M) * T, the Interp up-sampling, the
runner's train step and the configs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import nfnets.models as models
from nfnets.configs import attention as attention_config
from nfnets.models import attention
from nfnets.train import config as train_config
from nfnets.train import state as train_state
from tests.train.test_experiment import one_runner_step

# Parameters of the released Caffe definitions (Attention-56-deploy.prototxt
# and Attention-92-deploy.prototxt): conv weights (no biases), BN scale and
# shift, FC weight and bias. The paper (sec. 4.2) says 31.9M and 51.3M.
CAFFE_PARAMS = {'attention56': 31_810_728, 'attention92': 52_466_344}
# [RAN] sec. 4.2 "FLOPs" (multiply-adds of convs and FC) at 224 px.
PAPER_GMACS = {'attention56': 6.27, 'attention92': 10.53}
P = 'AttentionNet/~/'


@pytest.mark.parametrize('name', sorted(CAFFE_PARAMS))
def test_parameter_count_equals_the_caffe_definition_exactly(name):
  assert models.count_params(name) == CAFFE_PARAMS[name]
  assert models.get_spec(name).params_m == pytest.approx(
      CAFFE_PARAMS[name] / 1e6, abs=0.005)


@pytest.mark.parametrize('name', sorted(PAPER_GMACS))
def test_multiply_adds_at_224_within_one_percent_of_the_paper(name):
  macs = models.count_macs(name, 224)
  assert macs == pytest.approx(PAPER_GMACS[name] * 1e9, rel=0.01)
  assert attention.GMACS_AT_224[name[len('attention'):]] == PAPER_GMACS[name]


def _abstract_forward(name, size, **overrides):
  """(params, logits, activations) shapes of an eval forward, abstractly."""
  fwd = models.transform(name, **overrides)

  def run(x):
    params, state = fwd.init(jax.random.PRNGKey(0), x, is_training=False)
    (logits, acts), _ = fwd.apply(params, state, None, x, is_training=False,
                                  return_activations=True)
    return params, logits, acts

  return jax.eval_shape(run, jax.ShapeDtypeStruct((1, size, size, 3),
                                                  jnp.float32))


def test_feature_maps_and_masks_at_224():
  _, logits, acts = _abstract_forward('attention56', 224)
  assert logits.shape == (1, 1000)
  assert acts.stem.shape == (1, 56, 56, 64)
  # Three modules, then stage 4's three plain units.
  assert [b.shape for b in acts.blocks] == [
      (1, 56, 56, 256), (1, 28, 28, 512), (1, 14, 14, 1024),
      (1, 7, 7, 2048), (1, 7, 7, 2048), (1, 7, 7, 2048)]
  # M(x) has the trunk's shape: attention over space and channels.
  assert {k: v.shape for k, v in acts.masks.items()} == {
      'stage1/attention0/mask': (1, 56, 56, 256),
      'stage2/attention0/mask': (1, 28, 28, 512),
      'stage3/attention0/mask': (1, 14, 14, 1024)}
  assert acts.branches[0].shape == acts.blocks[0].shape


def test_mask_branch_layout_follows_the_caffe_definition():
  # Attention-92: modules 1, 2, 3 in stages 1-3 with 3, 2, 1 down-samplings
  # (2, 1, 0 skip units); only a stage's first module has the stage's
  # transition unit (Caffe's pre_res_s).
  params, _ = models.abstract_init(models.transform('attention92'), 64)
  modules = sorted({k.split('/~/')[1] for k in params
                    if k.startswith(P + 'attention_module')})
  assert len(modules) == 6
  for module, (pools, first) in zip(
      modules, [(3, True), (2, True), (2, False), (1, True), (1, False),
                (1, False)]):
    units = {k.split('/~/')[2] for k in params if f'/~/{module}/~/' in k}
    expected = {'pre0', 'trunk0', 'trunk1', 'bottom', 'post0', 'mask_norm0',
                'mask_norm1', 'mask_conv0', 'mask_conv1',
                *(f'down{i}' for i in range(pools)),
                *(f'skip{i}' for i in range(pools - 1)),
                *(f'up{i}' for i in range(pools - 1))}
    assert units == expected | ({'transition'} if first else set()), module
  width = 1024 // 4
  assert params[f'{P}attention_module_3/~/transition/~/conv1']['w'].shape == (
      3, 3, width, width)
  assert params[f'{P}attention_module_3/~/transition/~/conv_shortcut'][
      'w'].shape == (1, 1, 512, 1024)
  assert params[f'{P}attention_module_3/~/mask_conv1']['w'].shape == (
      1, 1, 1024, 1024)
  assert 'b' not in params[f'{P}attention_module_3/~/mask_conv1']
  assert set(params[P + 'linear']) == {'w', 'b'}
  assert params[P + 'res_block_2/~/conv2']['w'].shape == (1, 1, 512, 2048)


def test_small_inputs_shrink_the_mask_branch_to_one_pixel():
  # 16 px: stage 1 runs at 4x4, and its three pools stop at 1x1.
  _, logits, acts = _abstract_forward('attention92', 16, num_classes=10,
                                      width=1 / 16)
  assert logits.shape == (1, 10)
  assert {k: v.shape[1:3] for k, v in acts.masks.items()} == {
      'stage1/attention0/mask': (4, 4), 'stage2/attention0/mask': (2, 2),
      'stage2/attention1/mask': (2, 2), 'stage3/attention0/mask': (1, 1),
      'stage3/attention1/mask': (1, 1), 'stage3/attention2/mask': (1, 1)}


def test_interp_is_bilinear_with_aligned_corners():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))
  got = attention.resize_bilinear(x, (7, 9))
  # scipy's order-1 zoom maps output i to input i * (n_in - 1) / (n_out - 1).
  want = ndimage.zoom(np.asarray(x), (1, 7 / 3, 9 / 5, 1), order=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  one = attention.resize_bilinear(x[:, :1, :1], (3, 2))
  np.testing.assert_array_equal(one, jnp.broadcast_to(x[:, :1, :1],
                                                      (2, 3, 2, 4)))


# One module of two mask down-samplings (one skip unit) at 1/16 width.
_TINY = dict(num_classes=10, depth=(1,), widths=(256,), width=1 / 16,
             mask_downsamplings=(2,))
_MODULE = P + 'attention_module'


def _random_init(fwd, x):
  """He-normal conv and FC weights, BN at identity: `fwd.init`'s
  distributions without compiling it (about 15 s for this network here)."""
  params, state = jax.eval_shape(
      functools.partial(fwd.init, is_training=True), jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'w':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in),
                         leaf.dtype)
    one = name in ('scale', 'var')
    return (jnp.ones if one else jnp.zeros)(leaf.shape, leaf.dtype)

  return (jax.tree_util.tree_map_with_path(fill, params),
          jax.tree_util.tree_map_with_path(fill, state))


@pytest.fixture(scope='module')
def tiny():
  """(jitted forward with activations, params, state, images) at 16 px.

  The forward uses batch statistics, as a network at initialization
  trains; the moving statistics of a new network would leave the summed
  residual streams unnormalized.
  """
  fwd = models.transform('attention56', **_TINY)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params, state = _random_init(fwd, x)
  apply = jax.jit(lambda p, s, x: fwd.apply(
      p, s, None, x, is_training=True, return_activations=True)[0])
  return apply, params, state, x


def _zero(params, module):
  return {**params, module: jax.tree.map(jnp.zeros_like, params[module])}


def test_masks_lie_strictly_between_zero_and_one(tiny):
  apply, params, state, x = tiny
  logits, acts = apply(params, state, x)
  assert np.all(np.isfinite(logits))
  (mask,) = acts.masks.values()
  assert mask.shape == (2, 4, 4, 16)
  assert 0.0 < float(mask.min()) and float(mask.max()) < 1.0
  # Mixed attention: the masks differ across channels and positions.
  assert float(jnp.std(mask, axis=-1).mean()) > 1e-3
  assert float(jnp.std(mask, axis=(1, 2)).mean()) > 1e-3


def test_output_is_one_plus_mask_times_trunk(tiny):
  apply, params, state, x = tiny
  # With the post-processing unit's last conv at zero the unit is the
  # identity, so the module returns (1 + M) * T and its branch M * T.
  params = _zero(params, _MODULE + '/~/post0/~/conv2')
  _, acts = apply(params, state, x)
  out, branch = acts.blocks[0], acts.branches[0]
  (mask,) = acts.masks.values()
  trunk = out - branch
  assert float(jnp.abs(trunk).max()) > 0.1
  np.testing.assert_allclose(branch, mask * trunk, rtol=1e-4, atol=1e-5)
  # Zero mask logits: M = 1/2 everywhere, so the output is 1.5 T = 3 M T.
  _, acts = apply(_zero(params, _MODULE + '/~/mask_conv1'), state, x)
  (mask,) = acts.masks.values()
  np.testing.assert_array_equal(mask, 0.5)
  np.testing.assert_allclose(acts.blocks[0], 3 * acts.branches[0],
                             rtol=1e-5, atol=1e-6)


def test_one_train_step_with_the_runners_step():
  config = attention_config.get_config('56,digits')
  config.model.kwargs.update(dict(depth=(1,), widths=(256,),
                                  mask_downsamplings=(1,)))
  config.data.image_size = config.data.eval_image_size = 16
  config.training.batch_size = 8
  state, new, metrics, schedule = one_runner_step(config)
  assert int(new.step) == 1 and np.isfinite(metrics['loss'])
  assert 1.5 < float(metrics['loss']) < 3.5  # About log(10) at init.
  assert float(schedule(0)) == pytest.approx(0.1 * 8 / 256)
  changed = {f'{m}/{n}' for m, leaves in state.params.items()
             for n in leaves if np.any(new.params[m][n] != leaves[n])}
  # Every parameter but the stem BN's scale: the first unit's BN undoes any
  # positive per-channel scale of relu(stem BN), so its gradient is zero
  # (as in the Caffe network, conv1/bn before pool1_3x3_s2/bn).
  unchanged = {f'{m}/{n}' for m, leaves in state.params.items()
               for n in leaves} - changed
  assert unchanged == {P + 'initial_norm/scale'}
  for norm in (P + 'initial_norm', _MODULE + '/~/mask_norm0'):
    assert np.any(new.model_state[norm]['var']
                  != state.model_state[norm]['var'])


def test_other_families_return_no_masks():
  _, _, acts = _abstract_forward('resnet50_bn', 32, width=1 / 16,
                                 depth=(1,), widths=(256,))
  assert acts.masks == {}


@pytest.mark.parametrize('overrides, match', [
    (dict(mask_downsamplings=(3, 2)), 'one integer >= 0 per stage'),
    (dict(mask_downsamplings=(3, 2, -1, 0)), 'one integer >= 0 per stage'),
    (dict(depth=(1,) * 5, widths=(64,) * 5), 'pass mask_downsamplings'),
])
def test_bad_mask_layout_says_what_is_expected(overrides, match):
  with pytest.raises(ValueError, match=match):
    models.count_params('attention56', width=1 / 16, **overrides)


@pytest.mark.parametrize('variant, test_px', [('56', 224), ('92', 320)])
def test_imagenet_recipe(variant, test_px):
  config = attention_config.get_config(variant)
  train_config.validate_config(config, num_devices=8)
  assert config.model.name == f'attention{variant}'
  assert (config.data.image_size, config.data.eval_image_size) == (
      224, test_px)
  assert (config.data.randaugment_layers, config.data.mixup_alpha,
          config.data.cutmix_alpha) == (0, 0.0, 0.0)
  opt = config.optimizer
  assert (opt.name, opt.momentum, opt.weight_decay, opt.clipping) == (
      'sgd', 0.9, 1e-4, 0.0)
  assert config.training.batch_size == 256
  assert config.training.label_smoothing == 0.0
  assert train_config.durations(config) == (530_000, 0)
  _, schedule = train_state.build_optimizer(config)
  # 0.1, divided by 10 at 200k and 400k iterations.
  for step, lr in [(0, 0.1), (199_999, 0.1), (200_000, 0.01),
                   (399_999, 0.01), (400_000, 0.001), (529_999, 0.001)]:
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step


@pytest.mark.parametrize('arg', ['runlocal', '92,runlocal', '56,digits',
                                 '92,digits'])
def test_cpu_sized_forms(arg):
  config = attention_config.get_config(arg)
  train_config.validate_config(config, num_devices=1)
  assert config.data.dataset == 'digits'
  assert config.model.name == 'attention' + ('92' if '92' in arg else '56')
  assert train_config.durations(config)[0] <= 450


def test_config_errors_name_what_is_known():
  with pytest.raises(ValueError, match=r"variant '93'; known: 56, 92"):
    attention_config.get_config('93')
  with pytest.raises(ValueError, match='digits.*no other flags'):
    attention_config.get_config('56,digits,runlocal')
