"""Tests for the model families: published sizes, shapes, names, signal
propagation, and the registry's typed specs and constructor overrides."""
import ast
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets.models as models
from nfnets.models import common

_PUBLISHED = [n for n in models.list_models()
              if models.get_spec(n).params_m is not None]


def test_every_nf_family_variant_has_a_published_count_checked():
  # The published table covers F0-F7, NF-ResNet-50..200 and NF-RegNet B0, B8.
  for name in ['nfnet_f0', 'nfnet_f7', 'nf_resnet50', 'nf_resnet101',
               'nf_regnet_b0', 'nf_regnet_b8']:
    assert name in _PUBLISHED


@pytest.mark.parametrize('name', _PUBLISHED)
def test_parameter_count_equals_published(name):
  published = models.get_spec(name).params_m * 1e6
  count = models.count_params(name)
  assert abs(count - published) / published < 1e-3, (name, count, published)


@pytest.mark.parametrize('name', [n for n in models.list_models()
                                  if models.get_spec(n).gmacs is not None])
def test_multiply_adds_equal_published(name):
  published = models.get_spec(name).gmacs * 1e9
  assert abs(models.count_macs(name) - published) / published < 0.01


def test_multiply_add_count_of_a_single_conv_matches_formula():
  # ResNet-50 is 4.1 GMACs at 224 (He et al. 2016, Table 1: 3.8e9 FLOPs counted
  # without the shortcut projections and classifier); ours counts all of them.
  macs = models.count_macs('nf_resnet50', 224)
  assert 3.8e9 < macs < 4.2e9
  # Doubling the resolution quadruples conv work (classifier aside).
  assert models.count_macs('nf_resnet50', 448) / macs == pytest.approx(
      4.0, rel=0.01)


_TINY = {
    'nfnet_f0': dict(width=1 / 32),
    'nf_resnet50': dict(width=1 / 16),
    'nf_regnet_b0': dict(width=0.25),
}
# XLA's compile time on CPU grows with the number of blocks. One block in the
# first stage and two in the second still build every kind of block: the first
# one (unstrided with a projection in NFNets and NF-ResNets, unexpanded in
# NF-RegNets), a strided transition and an identity-shortcut block.
_SHALLOW_DEPTH = (1, 2)


def _shallow(name):
  """Overrides that keep `name`'s first two stages, with `_SHALLOW_DEPTH`."""
  widths = models.get_spec(name).widths[:len(_SHALLOW_DEPTH)]
  return dict(depth=_SHALLOW_DEPTH, widths=widths)


def _tiny_forward(name, **overrides):
  """Init + one jitted train and eval forward (one compilation) of a tiny,
  shallow model of `_TINY`."""
  fwd = models.transform(name, num_classes=7,
                         **{**_TINY[name], **_shallow(name), **overrides})
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params, state = jax.jit(lambda x: fwd.init(jax.random.PRNGKey(1), x))(x)

  def both(p, s, x):
    train, _ = fwd.apply(p, s, jax.random.PRNGKey(2), x, is_training=True)
    (test, acts), _ = fwd.apply(p, s, None, x, is_training=False,
                                return_activations=True)
    return train, test, acts

  return jax.jit(both)(params, state, x)


@pytest.mark.parametrize('name', sorted(_TINY))
def test_tiny_models_produce_finite_logits_and_block_activations(name):
  train, test, acts = _tiny_forward(name)
  assert train.shape == test.shape == (2, 7)
  assert np.all(np.isfinite(train)) and np.all(np.isfinite(test))
  num_blocks = sum(_SHALLOW_DEPTH)
  assert len(acts.blocks) == len(acts.branches) == num_blocks
  assert acts.blocks[-1].shape[0] == 2 and acts.pooled.shape[0] == 2


def test_width_multiplier_keeps_groups_valid_below_one_group():
  # At width 1/32, F0's blocks are 8-16 channels wide; the reference's
  # width // group_size would give zero groups.
  fwd = models.transform('nfnet_f0', num_classes=3, width=1 / 32)
  x = jnp.ones((1, 32, 32, 3))
  params, _ = jax.eval_shape(lambda: fwd.init(jax.random.PRNGKey(0), x))
  conv1 = params['NFNet/~/nf_block/~/conv1']['w']
  assert conv1.shape == (3, 3, 4, 4)  # One group of 4 = 256 / 32 * 0.5.
  assert common.grouped_width(300, 128) == (256, 2)
  assert common.grouped_width(100, 128) == (100, 1)


def test_nfnet_parameter_names_follow_the_reference_release():
  fwd = models.transform('nfnet_f0')
  params, _ = jax.eval_shape(
      lambda: fwd.init(jax.random.PRNGKey(0), jnp.ones((1, 64, 64, 3))))
  assert set(params['NFNet/~/stem_conv0']) == {'w', 'gain', 'bias'}
  assert params['NFNet/~/stem_conv0']['w'].shape == (3, 3, 3, 16)
  assert params['NFNet/~/stem_conv3']['w'].shape == (3, 3, 64, 128)
  # F0 has 1 + 2 + 6 + 3 = 12 blocks: nf_block, nf_block_1, ..., nf_block_11.
  assert 'NFNet/~/nf_block_11/~/conv2' in params
  assert 'NFNet/~/nf_block_12' not in params
  block1 = 'NFNet/~/nf_block_1'
  assert params[block1].keys() == {'skip_gain'}
  assert params[f'{block1}/~/conv1b']['w'].shape == (3, 3, 128, 256)
  assert params[f'{block1}/~/conv_shortcut']['w'].shape == (1, 1, 256, 512)
  assert params[f'{block1}/~/squeeze_excite/~/linear']['w'].shape == (512,
                                                                      256)
  assert set(params[f'{block1}/~/squeeze_excite/~/linear_1']) == {'w', 'b'}
  assert params['NFNet/~/final_conv']['w'].shape == (1, 1, 1536, 3072)
  assert params['NFNet/~/linear']['w'].shape == (3072, 1000)
  assert set(params['NFNet/~/linear']) == {'w', 'b'}


def test_registry_lists_models_and_explains_mistakes():
  names = models.list_models()
  assert {'nfnet_f0', 'nfnet_f7_plus', 'nf_resnet600',
          'nf_regnet_b8'} <= set(names)
  with pytest.raises(ValueError, match=(
      f"Unknown model 'nfnet_f9'; did you mean 'nfnet_f7'.*{len(names)}")):
    models.create('nfnet_f9')
  with pytest.raises(TypeError, match='does not take.*widht.*width'):
    models.create('nfnet_f0', widht=0.5)
  spec = models.get_spec('nfnet_f3')
  assert (spec.train_imsize, spec.test_imsize) == (320, 416)
  assert spec.drop_rate == 0.4 and spec.randaugment_magnitude == 15
  with pytest.raises(ValueError, match='already registered'):
    models.register('nfnet_f0', spec=spec, module=type(None))


def test_get_spec_is_a_typed_spec_whose_published_counts_are_checked():
  for name in models.list_models():
    spec = models.get_spec(name)
    assert isinstance(spec, models.ModelSpec)
    assert len(spec.depth) == len(spec.widths)
  spec = models.get_spec('nfnet_f0')
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.drop_rate = 0.0  # Shared by every caller: not theirs to change.
  assert (spec.params_m, spec.gmacs) == (71.5, 12.38)
  # The published-count tests above take their models from the specs.
  assert {'nfnet_f0', 'nfnet_f6'} <= {
      n for n in models.list_models() if models.get_spec(n).gmacs}
  assert 'nfnet_f0_plus' not in _PUBLISHED  # The appendix gives no count.


@pytest.mark.parametrize('name', models.list_models())
def test_every_model_builds_shallow_through_create_overrides(name):
  spec = models.get_spec(name)
  depth = (1,) * len(spec.depth)
  fwd = models.transform(name, num_classes=5, depth=depth, width=1 / 16)

  def init_and_apply(x):
    params, state = fwd.init(jax.random.PRNGKey(0), x, is_training=True)
    (logits, acts), _ = fwd.apply(params, state, jax.random.PRNGKey(1), x,
                                  is_training=True, return_activations=True)
    return params, logits, acts

  params, logits, acts = jax.eval_shape(
      init_and_apply, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
  assert logits.shape == (2, 5)
  assert len(acts.blocks) == len(acts.branches) == len(depth)
  # The spec names the classifier the pooled features feed.
  assert params[spec.classifier]['w'].shape == (acts.pooled.shape[1], 5)


def test_abstract_init_has_the_shapes_of_a_real_init():
  fwd = models.transform('resnet50_bn', num_classes=3, width=1 / 16,
                         **_shallow('resnet50_bn'))
  abstract = models.abstract_init(fwd, 16)
  real = fwd.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                  is_training=False)
  shapes = lambda tree: jax.tree.map(lambda v: (v.shape, v.dtype), tree)
  assert shapes(abstract) == shapes(real)
  assert abstract[1]  # BatchNorm statistics are state.


def test_depth_and_widths_overrides_set_the_stages():
  for name in ('nfnet_f0', 'nf_resnet50', 'nf_regnet_b0', 'resnet50_bn'):
    assert {'depth', 'widths'} <= set(models.accepted_overrides(name))
  spec = models.get_spec('nfnet_f0')
  assert models.count_params('nfnet_f0', width=1 / 16) == models.count_params(
      'nfnet_f0', width=1 / 16, depth=spec.depth, widths=spec.widths)
  fwd = models.transform('nfnet_f0', depth=(1, 1), widths=(256, 512),
                         width=1 / 16)
  params, _ = jax.eval_shape(
      lambda: fwd.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
  # Two stages of one block; the final conv doubles the second's 512 / 16.
  assert 'NFNet/~/nf_block_1/~/conv_shortcut' in params
  assert not any(k.startswith('NFNet/~/nf_block_2') for k in params)
  assert params['NFNet/~/final_conv']['w'].shape == (1, 1, 32, 64)


@pytest.mark.parametrize('overrides,match', [
    (dict(depth=(1, 2)), r'depth has 2 stages but widths has 4.*one entry'),
    (dict(depth=(1, 1), widths=(256,)), 'depth has 2 stages but widths has 1'),
    (dict(depth=(1, 0, 1, 1)), 'depth must be .*positive integers'),
    (dict(depth=()), 'depth must be a non-empty'),
    (dict(widths=(256, 512.5, 1536, 1536)), 'widths must be'),
])
def test_bad_depth_or_widths_say_what_is_expected(overrides, match):
  fwd = models.transform('nfnet_f0', width=1 / 16, **overrides)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(fwd.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))


def test_models_import_only_layers_and_registry_no_family():
  imports = {}
  for path in pathlib.Path(models.__file__).parent.glob('*.py'):
    tree = ast.parse(path.read_text())
    imports[path.stem] = {
        f'{node.module}.{alias.name}' if isinstance(node, ast.ImportFrom)
        else alias.name
        for node in ast.walk(tree) if isinstance(node, (ast.Import,
                                                        ast.ImportFrom))
        for alias in node.names}
  for stem, names in imports.items():
    for name in names:
      if name.startswith('nfnets.'):
        assert (name in ('nfnets.layers', 'nfnets.errors') or name.startswith(
            ('nfnets.layers.', 'nfnets.models.'))), (stem, name)
  families = {f'nfnets.models.{f}'
              for f in ('nfnet', 'nf_resnet', 'nf_regnet', 'baselines')}
  assert not imports['registry'] & families
  assert families <= imports['__init__']


def test_activation_override_reaches_every_block():
  name = 'nf_resnet50'
  relu_train, relu_test, _ = _tiny_forward(name, activation='relu')
  leaky = lambda v: jnp.maximum(v, 0.1 * v)  # Gamma estimated numerically.
  _, leaky_test, acts = _tiny_forward(name, activation=leaky)
  assert np.all(np.isfinite(leaky_test))
  assert not np.allclose(acts.pooled, 0.0)
  assert not np.allclose(relu_test, leaky_test)


def _signal_statistics(alpha):
  fwd = models.transform('nf_resnet50', num_classes=10, width=0.125,
                         alpha=alpha)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 224, 224, 3))
  params, state = jax.jit(lambda x: fwd.init(jax.random.PRNGKey(1), x))(x)
  # Skip gains start at zero (SkipInit); set them to one to see the alpha
  # schedule that the betas are computed for, as in [NF-ResNet] Figure 1.
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.ones_like(v) if path[-1].key == 'skip_gain' else v,
      params)

  def stats(p, s, x):
    _, acts = fwd.apply(p, s, None, x, is_training=False,
                        return_activations=True)[0]
    var = [jnp.mean(jnp.var(a, axis=(0, 1, 2))) for a in acts.blocks]
    sq_mean = [jnp.mean(jnp.mean(a, axis=(0, 1, 2))**2) for a in acts.blocks]
    return jnp.stack(var), jnp.stack(sq_mean)

  return jax.device_get(jax.jit(stats)(params, state, x))


@pytest.mark.slow
def test_residual_variance_follows_alpha_schedule_and_resets():
  alpha = 0.5  # Large enough that each block's alpha^2 step is measurable.
  var, sq_mean = _signal_statistics(alpha)
  plans = common.block_plans((3, 4, 6, 3), alpha, 0.0)
  expected = np.array([p.expected_var for p in plans])
  # Expected variance 1 + k * alpha^2 for the k-th block of a stage.
  # Zero padding at the last stages' 14x14 and 7x7 maps loses a little
  # variance, hence the tolerance.
  np.testing.assert_allclose(var, expected, rtol=0.15)
  for plan, prev in zip(plans[1:], var[:-1]):
    i = plan.index
    if plan.first_in_stage:
      assert var[i] < prev - 0.3  # Reset at the transition (expected 0.5).
    else:
      assert var[i] - prev == pytest.approx(alpha**2, abs=0.1)
  # Scaled WS keeps channel means near zero: no mean shift with depth.
  assert np.all(sq_mean < 0.05 * var)
