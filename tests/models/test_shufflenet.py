"""ShuffleNet v1 and v2: published sizes and multiply-adds, feature-map sizes,
the channel shuffle against NumPy, the units against their definitions, the
grouped 1x1 formulations, the runner's train step, the linear learning-rate
schedule and the ImageNet configs."""
import functools
import importlib.util
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets.models as models
from nfnets import layers
from nfnets import optim
from nfnets.configs import shufflenet as shufflenet_config
from nfnets.models import shufflenet
from nfnets.train import config as train_config
from nfnets.train import state as train_state
from tests.train.test_experiment import one_runner_step

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / 'experiments'
V1 = ['shufflenet_v1_g1', 'shufflenet_v1_g2', 'shufflenet_v1_g3',
      'shufflenet_v1_g4', 'shufflenet_v1_g8']
V2 = ['shufflenet_v2_x0_5', 'shufflenet_v2_x1_0', 'shufflenet_v2_x1_5',
      'shufflenet_v2_x2_0']
# v1 with the classifier's bias (the authors' code has none: 1000 fewer);
# v2 as torchvision counts them.
PUBLISHED_PARAMS = {
    'shufflenet_v1_g1': 1_531_936, 'shufflenet_v1_g2': 1_733_848,
    'shufflenet_v1_g3': 1_865_728, 'shufflenet_v1_g4': 1_968_344,
    'shufflenet_v1_g8': 2_434_768,
    'shufflenet_v2_x0_5': 1_366_792, 'shufflenet_v2_x1_0': 2_278_604,
    'shufflenet_v2_x1_5': 3_503_624, 'shufflenet_v2_x2_0': 7_393_996,
}
# [ShuffleNet] Table 2: MFLOPs of the convolutions (no classifier) at 224 px.
V1_PAPER_MMACS = [143, 140, 137, 133, 137]
# torchvision: convolutions and the classifier, 224 px.
V2_MMACS = [40.5, 144.9, 295.8, 583.3]
# Channels the classifier sees.
POOLED = {'shufflenet_v1_g3': 960, 'shufflenet_v1_g8': 1536,
          'shufflenet_v2_x1_0': 1024, 'shufflenet_v2_x2_0': 2048}


@pytest.mark.parametrize('name', V1 + V2)
def test_parameter_count_equals_the_published_one_exactly(name):
  assert models.count_params(name) == PUBLISHED_PARAMS[name]
  assert models.get_spec(name).params_m * 1e6 == pytest.approx(
      PUBLISHED_PARAMS[name])


@pytest.mark.parametrize('name, paper', list(zip(V1, V1_PAPER_MMACS)))
def test_v1_convolution_macs_match_the_paper(name, paper):
  spec = models.get_spec(name)
  classifier = spec.widths[-1] * 1000
  conv_macs = models.count_macs(name) - classifier
  assert abs(conv_macs / 1e6 - paper) / paper < 0.005
  # The spec's gmacs adds the classifier, as count_macs (and the registry
  # test comparing them) counts it.
  assert spec.gmacs * 1e9 == pytest.approx(paper * 1e6 + classifier)


@pytest.mark.parametrize('name, published', list(zip(V2, V2_MMACS)))
def test_v2_macs_match_torchvision(name, published):
  assert abs(models.count_macs(name) / 1e6 - published) / published < 0.001
  assert models.get_spec(name).gmacs == pytest.approx(published / 1e3)


def _abstract(name, image_size=224, **overrides):
  """(params, state, logits, block outputs) of an eval forward, abstractly."""
  fwd = models.transform(name, **overrides)

  def run(x):
    params, state = fwd.init(jax.random.PRNGKey(0), x, is_training=False)
    (logits, acts), _ = fwd.apply(params, state, None, x, is_training=False,
                                  return_activations=True)
    return params, state, logits, acts.blocks

  return jax.eval_shape(run, jax.ShapeDtypeStruct(
      (1, image_size, image_size, 3), jnp.float32))


@pytest.mark.parametrize('name', sorted(POOLED))
def test_shapes_at_224_end_in_a_7x7_map(name):
  params, _, logits, blocks = _abstract(name)
  spec = models.get_spec(name)
  assert logits.shape == (1, 1000)
  assert len(blocks) == 16
  # 224 / 4 after the stem, halved by each stage: 28, 14, 7.
  sizes = [b.shape[1] for b in blocks]
  assert sizes == [28] * 4 + [14] * 8 + [7] * 4
  assert [blocks[i].shape[-1] for i in (3, 11, 15)] == list(spec.widths)
  assert params[spec.classifier]['w'].shape == (POOLED[name], 1000)


def test_v1_parameter_names_and_grouping():
  params, state, _, _ = _abstract('shufflenet_v1_g3', 64)
  p = 'ShuffleNetV1/~/'
  assert params[p + 'stem/~/conv']['w'].shape == (3, 3, 3, 24)
  assert set(params[p + 'stem/~/bn']) == {'scale', 'offset'}
  assert set(state[p + 'stem/~/bn']) == {'mean', 'var'}
  unit = p + 'shuffle_v1_unit/~/'
  # The first 1x1 conv sees the 24-channel stem and is not grouped; the
  # strided unit's branch makes 240 - 24 channels in 3 groups.
  assert params[unit + 'pointwise0/~/conv']['w'].shape == (1, 1, 24, 60)
  assert params[unit + 'depthwise/~/conv']['w'].shape == (3, 3, 1, 60)
  assert params[unit + 'pointwise1/~/conv']['w'].shape == (1, 1, 20, 216)
  unit = p + 'shuffle_v1_unit_1/~/'
  assert params[unit + 'pointwise0/~/conv']['w'].shape == (1, 1, 80, 60)
  assert params[unit + 'pointwise1/~/conv']['w'].shape == (1, 1, 20, 240)
  # 4 + 8 + 4 units: shuffle_v1_unit ... shuffle_v1_unit_15.
  assert p + 'shuffle_v1_unit_15/~/pointwise1/~/conv' in params
  assert not any(k.startswith(p + 'shuffle_v1_unit_16') for k in params)
  assert set(params[p + 'linear']) == {'w', 'b'}
  # Bias-free convolutions; weight decay reaches their kernels and the
  # classifier's weight, not BatchNorm's scales and offsets or the bias.
  convs = [v for k, v in params.items() if k.endswith('/conv')]
  assert len(convs) == 1 + 3 * 16 and all(set(v) == {'w'} for v in convs)
  mask = optim.weight_decay_mask(params)
  assert all(jax.tree.leaves(jax.tree_util.tree_map_with_path(
      lambda path, m: m == (path[-1].key == 'w'), mask)))


def test_v2_parameter_names():
  params, _, _, _ = _abstract('shufflenet_v2_x1_0', 64)
  p = 'ShuffleNetV2/~/'
  unit = p + 'shuffle_v2_unit/~/'
  assert params[unit + 'shortcut_depthwise/~/conv']['w'].shape == (
      3, 3, 1, 24)
  assert params[unit + 'shortcut_pointwise/~/conv']['w'].shape == (
      1, 1, 24, 58)
  assert params[unit + 'pointwise0/~/conv']['w'].shape == (1, 1, 24, 58)
  unit = p + 'shuffle_v2_unit_1/~/'
  assert not any(k.startswith(unit + 'shortcut') for k in params)
  assert params[unit + 'pointwise0/~/conv']['w'].shape == (1, 1, 58, 58)
  assert params[p + 'final/~/conv']['w'].shape == (1, 1, 464, 1024)


def _numpy_shuffle(x, groups):
  n, h, w, c = x.shape
  return x.reshape(n, h, w, groups, c // groups).transpose(
      0, 1, 2, 4, 3).reshape(n, h, w, c)


@pytest.mark.parametrize('channels, groups', [(12, 3), (24, 8), (10, 2),
                                              (6, 1), (6, 6)])
def test_channel_shuffle_is_the_numpy_permutation_and_inverts(channels,
                                                              groups):
  x = np.random.default_rng(0).standard_normal(
      (2, 3, 4, channels)).astype(np.float32)
  got = np.asarray(shufflenet.channel_shuffle(jnp.asarray(x), groups))
  np.testing.assert_array_equal(got, _numpy_shuffle(x, groups))
  # [ShuffleNet] Figure 1 (c): output j * g + i is group i's channel j.
  per_group = channels // groups
  for i in range(groups):
    for j in range(per_group):
      np.testing.assert_array_equal(got[..., j * groups + i],
                                    x[..., i * per_group + j])
  back = shufflenet.channel_unshuffle(jnp.asarray(got), groups)
  np.testing.assert_array_equal(np.asarray(back), x)
  again = shufflenet.channel_shuffle(
      shufflenet.channel_unshuffle(jnp.asarray(x), groups), groups)
  np.testing.assert_array_equal(np.asarray(again), x)
  with pytest.raises(ValueError, match='Cannot shuffle 7 channels'):
    shufflenet.channel_shuffle(jnp.zeros((1, 7)), 2)


def _apply_unit(make, x):
  """(output, branch) of a freshly initialized unit in training mode."""
  fn = hk.transform_with_state(lambda x: make()(x, is_training=True))
  params, state = fn.init(jax.random.PRNGKey(0), x)
  (out, branch), _ = fn.apply(params, state, None, x)
  return np.asarray(out), np.asarray(branch)


def test_v1_strided_unit_concatenates_a_padded_average_pool():
  x = jnp.abs(jax.random.normal(jax.random.PRNGKey(1), (2, 7, 7, 6)))
  out, branch = _apply_unit(lambda: shufflenet.ShuffleV1Unit(
      6, 24, stride=2, groups=3, first_groups=3), x)
  assert out.shape == (2, 4, 4, 24) and branch.shape == (2, 4, 4, 18)
  # 3x3 stride 2 with a zero border, always divided by 9.
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  pooled = np.stack([np.stack([
      xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum(axis=(1, 2)) / 9
      for j in range(4)], 1) for i in range(4)], 1)
  np.testing.assert_allclose(out[..., :6], pooled, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[..., 6:], np.maximum(branch, 0), atol=1e-6)


def test_v1_unit_adds_its_input_and_v2_unit_passes_half_of_it():
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, 24))
  out, branch = _apply_unit(lambda: shufflenet.ShuffleV1Unit(
      24, 24, stride=1, groups=3, first_groups=3), x)
  np.testing.assert_allclose(out, np.maximum(np.asarray(x) + branch, 0),
                             rtol=1e-5, atol=1e-5)
  out, branch = _apply_unit(lambda: shufflenet.ShuffleV2Unit(
      24, 24, stride=1), x)
  # Un-shuffling the 2 groups gives [passed half, branch].
  halves = np.asarray(shufflenet.channel_unshuffle(jnp.asarray(out), 2))
  np.testing.assert_array_equal(halves[..., :12], np.asarray(x)[..., :12])
  np.testing.assert_array_equal(halves[..., 12:], branch)
  with pytest.raises(ValueError, match='at stride 2 widens'):
    _apply_unit(lambda: shufflenet.ShuffleV1Unit(
        24, 24, stride=2, groups=3, first_groups=3), x)


@pytest.mark.parametrize('cin, cout, groups', [(48, 12, 4), (12, 48, 4),
                                               (24, 16, 8)])
def test_grouped_pointwise_formulations_agree(cin, cout, groups):
  # v1's grouped 1x1 convs: 'auto' runs one matmul per group on CPU.
  kx, kw, kt = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, (2, 5, 5, cin))
  w = jax.random.normal(kw, (1, 1, cin // groups, cout))
  target = jax.random.normal(kt, (2, 5, 5, cout))

  def loss(impl, x, w):
    y = layers.grouped_conv2d(x, w, padding='VALID',
                              feature_group_count=groups, impl=impl)
    return jnp.sum(jnp.sin(y) * target)

  ref = jax.value_and_grad(functools.partial(loss, 'native'), (0, 1))(x, w)
  for impl in ('split', 'matmul', 'auto'):
    got = jax.value_and_grad(functools.partial(loss, impl), (0, 1))(x, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, rtol=0,
                                 atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_overrides_build_small_models_and_check_widths():
  # A quarter width rounds v1's stages to multiples of 4 x groups.
  params, _, logits, blocks = _abstract(
      'shufflenet_v1_g3', 32, num_classes=10, depth=(1, 1, 1), width=0.25)
  assert [b.shape[-1] for b in blocks] == [60, 120, 240]
  assert logits.shape == (1, 10)
  assert params['ShuffleNetV1/~/stem/~/conv']['w'].shape == (3, 3, 3, 6)
  _, _, _, blocks = _abstract('shufflenet_v1_g3', 32, depth=(1, 1),
                              widths=(48, 96), groups=4)
  assert [b.shape[-1] for b in blocks] == [48, 96]
  _, _, _, blocks = _abstract('shufflenet_v2_x2_0', 32, depth=(2, 1),
                              widths=(30, 50), head_channels=64)
  assert [b.shape[-1] for b in blocks] == [30, 30, 50]
  with pytest.raises(ValueError, match='at stride 2 widens'):
    _abstract('shufflenet_v1_g1', 32, depth=(1, 1), widths=(16, 32))
  with pytest.raises(ValueError, match='Unknown ShuffleNetV2 variant'):
    hk.transform(lambda: shufflenet.ShuffleNetV2(10, 'x3_0')).init(None)


@pytest.mark.parametrize('variant', ['v1_g8', 'v2_x1_0'])
def test_one_train_step_of_a_shallow_narrow_variant(variant):
  config = shufflenet_config.get_config(f'{variant},runlocal')
  config.model.kwargs.depth = (1, 2)
  config.model.kwargs.widths = models.get_spec(
      config.model.name).widths[:2]
  config.data.image_size = config.data.eval_image_size = 16
  config.training.batch_size = 8
  config.optimizer.warmup_steps = 0  # A warmup's first learning rate is 0.
  state, new, metrics, schedule = one_runner_step(config)
  assert int(new.step) == 1 and np.isfinite(float(metrics['loss']))
  assert 1.5 < float(metrics['loss']) < 3.5  # About log(10) at init.
  # Linear decay from 0.5 x 8 / 1024 over the run's 20 steps.
  assert float(schedule(0)) == pytest.approx(0.5 * 8 / 1024)
  assert float(schedule(10)) == pytest.approx(0.5 * 8 / 1024 / 2)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                       state.params, new.params)
  for module, leaves in moved.items():
    for name, step in leaves.items():
      # Two kinds of BN parameters get (next to) no gradient. While offsets
      # are 0, relu(s * n) = s * relu(n) and the BN after the depthwise conv
      # undoes any per-channel s > 0 (up to its eps): the scale of a BN
      # before ReLU -> (shuffle ->) depthwise -> BN. Always, the offset of
      # the BN after a depthwise conv: a 1x1 conv turns it into a constant
      # per channel, which the next BN subtracts. Measured: they move by
      # 2e-6 at most, the others by 5e-6 or more.
      if (module.endswith('pointwise0/~/bn') and name == 'scale' or
          module.endswith('depthwise/~/bn') and name == 'offset'):
        assert step < 1e-5, (module, name, step)
      else:
        assert step > 0, (module, name, step)
  # Every BatchNorm's moving statistics took a step towards the batch's;
  # the 1x1 convs after a depthwise BN (offset 0) see zero-mean channels, so
  # their outputs' means stay at 0.
  # The stem's, 3 per unit, v2's 2 more per strided unit and its head's.
  assert len(new.model_state) == {'v1_g8': 1 + 3 * 3,
                                  'v2_x1_0': 1 + 3 * 3 + 2 * 2 + 1}[variant]
  for module, stats in new.model_state.items():
    assert np.all(stats['var'] != state.model_state[module]['var']), module
    if module.endswith(('/pointwise1/~/bn', '/shortcut_pointwise/~/bn')):
      assert np.max(np.abs(stats['mean'])) < 1e-6, module
    else:
      assert np.any(stats['mean'] != 0), module


def test_linear_schedule_is_the_authors_closed_form():
  # megvii-model/ShuffleNet-Series: lr = 0.5 * (1 - step / total) per step.
  total = 300_000
  schedule = optim.warmup_linear_schedule(0.5, 0, total)
  steps = np.array([0, 1, 1000, 150_000, 299_999, 300_000, 400_000])
  want = 0.5 * np.clip(1 - steps / total, 0, None)
  np.testing.assert_allclose([float(schedule(s)) for s in steps], want,
                             rtol=1e-6, atol=1e-9)
  # With a warmup: up linearly to the peak, then down to end_value.
  schedule = optim.warmup_linear_schedule(1.0, 10, 110, end_value=0.1)
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.55)
  assert float(schedule(500)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match='warmup_steps <= total_steps'):
    optim.warmup_linear_schedule(1.0, 20, 10)


def _load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name,
                                                EXPERIMENTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize('name', V1 + V2)
def test_imagenet_recipe(name):
  config = _load(name)
  train_config.validate_config(config, num_devices=8)
  assert config.model.name == name
  assert config.data.image_size == config.data.eval_image_size == 224
  assert config.model.kwargs.drop_rate == (0.2 if name.endswith('x2_0')
                                           else 0.0)
  assert (config.data.randaugment_layers, config.data.mixup_alpha,
          config.data.cutmix_alpha) == (0, 0, 0)
  opt = config.optimizer
  assert (opt.name, opt.momentum, opt.nesterov) == ('sgd', 0.9, False)
  assert (opt.schedule, opt.end_lr, opt.weight_decay, opt.clipping) == (
      'linear', 0.0, 4e-5, 0.0)
  assert (config.training.label_smoothing, config.training.ema_decay) == (
      0.1, 0.0)
  assert config.training.batch_size == 1024
  assert train_config.durations(config) == (300_000, 0)
  schedule = train_state.build_optimizer(config)[1]
  assert float(schedule(0)) == pytest.approx(0.5)
  assert float(schedule(150_000)) == pytest.approx(0.25)


def test_runlocal_forms_and_variant_errors():
  for arg in ('runlocal', 'v1_g3,runlocal', 'v2_x0_5,runlocal,imagenet'):
    config = shufflenet_config.get_config(arg)
    train_config.validate_config(config, num_devices=1)
    assert config.optimizer.schedule == 'linear'
    assert train_config.durations(config)[0] == 20
  assert shufflenet_config.get_config().model.name == 'shufflenet_v2_x1_0'
  with pytest.raises(ValueError, match='Unknown ShuffleNet variant'):
    shufflenet_config.get_config('v1_g5')
