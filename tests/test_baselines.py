"""Tests for the normalized ResNet baselines and the He-initialized NF-ResNet."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets import layers
from nfnets.models import baselines
from nfnets.models import count_params
from nfnets.models import registry


def _haiku_resnet_params(cls, **kw):
  # Haiku's own ResNets as an independent reference for the counts.
  fwd = hk.transform_with_state(
      lambda x: cls(1000, **kw)(x, is_training=True))
  params, _ = jax.eval_shape(
      lambda x: fwd.init(jax.random.PRNGKey(0), x),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def test_resnet50_parameter_count_matches_paper_and_haiku():
  n = count_params('resnet50_bn')
  assert round(n / 1e6, 2) == registry.get_spec('resnet50_bn').params_m
  assert n == _haiku_resnet_params(hk.nets.ResNet50)
  # GroupNorm has the same scale and offset per channel as BatchNorm.
  assert count_params('resnet50_gn') == n


def test_preactivation_count_matches_haiku_v2():
  ref = _haiku_resnet_params(hk.nets.ResNet50, resnet_v2=True)
  for ordering in ('bn_relu_conv', 'relu_bn_conv'):
    assert count_params('resnet50_bn', ordering=ordering) == ref


@pytest.mark.slow
def test_resnet101_parameter_count():
  n = count_params('resnet101_bn')
  assert n == _haiku_resnet_params(hk.nets.ResNet101)
  assert round(n / 1e6, 2) == registry.get_spec('resnet101_bn').params_m


def test_registry_names_and_errors():
  names = registry.list_models()
  for depth in (50, 101, 152, 200, 288, 600):
    for suffix in ('_bn', '_gn'):
      assert f'resnet{depth}{suffix}' in names
    assert f'nf_resnet{depth}_no_ws' in names
  assert 'ordering' in registry.accepted_overrides('resnet50_bn')
  with pytest.raises(ValueError, match='ordering'):
    registry.transform('resnet50_bn', ordering='conv_relu_bn').init(
        jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), is_training=True)


@pytest.mark.parametrize('norm,ordering', [
    ('resnet50_bn', 'conv_bn_relu'), ('resnet50_bn', 'bn_relu_conv'),
    ('resnet50_bn', 'relu_bn_conv'), ('resnet50_gn', 'bn_relu_conv')])
def test_forward_contract(norm, ordering):
  fwd = registry.transform(norm, num_classes=5, width=0.0625,
                           ordering=ordering)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params, state = fwd.init(jax.random.PRNGKey(1), x, is_training=False)
  (logits, acts), _ = fwd.apply(params, state, None, x, is_training=False,
                                return_activations=True)
  assert logits.shape == (2, 5)
  assert len(acts.blocks) == len(acts.branches) == 16
  assert acts.blocks[-1].shape == (2, 1, 1, 128)
  assert acts.pooled.shape == (2, 128)
  assert 'ResNet/~/linear' in params
  assert bool(state) == norm.endswith('_bn')


def test_batchnorm_uses_batch_statistics_and_updates_moving_ones():
  fwd = registry.transform('resnet50_bn', num_classes=3, width=0.0625,
                           ordering='bn_relu_conv')
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  params, state = fwd.init(jax.random.PRNGKey(1), x, is_training=True)
  (_, acts), new_state = fwd.apply(params, state, None, x, is_training=True,
                                   return_activations=True)
  stem = np.asarray(acts.stem, np.float64).reshape(-1, acts.stem.shape[-1])
  bn0 = new_state['ResNet/~/res_block/~/norm0']
  # decay 0.9 from mean 0 and var 1 towards the block input's batch moments.
  np.testing.assert_allclose(bn0['mean'], 0.1 * stem.mean(0), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(bn0['var'], 0.9 + 0.1 * stem.var(0), rtol=1e-4)
  # Evaluation uses the moving statistics: a different function of x.
  eval_logits, _ = fwd.apply(params, new_state, None, x, is_training=False)
  train_logits, _ = fwd.apply(params, new_state, None, x, is_training=True)
  assert not np.allclose(eval_logits, train_logits)


def test_groupnorm_groups_divide_narrow_layers():
  # 16 stem channels: 32 groups become 16.
  fwd = registry.transform('resnet50_gn', num_classes=3, width=0.25)
  x = jnp.ones((1, 16, 16, 3))
  params, _ = fwd.init(jax.random.PRNGKey(0), x, is_training=True)
  assert params['ResNet/~/initial_norm']['scale'].shape == (16,)


def test_he_conv_preserves_second_moment_of_scaled_relu():
  # One He-initialized convolution of gamma * relu(z): E[y^2] = E[z^2] = 1.
  act = layers.scaled_activation('relu')
  conv = hk.transform(
      lambda x: baselines.he_conv_for('relu')(512, kernel_shape=1)(act(x)))
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 512))
  params = conv.init(jax.random.PRNGKey(1), x)
  y = conv.apply(params, None, x)
  assert set(params['he_conv2_d']) == {'w', 'b'}
  np.testing.assert_allclose(jnp.mean(y ** 2), 1.0, rtol=0.05)
  # Its channel means are far from zero: the mean shift WS removes.
  assert jnp.mean(jnp.mean(y, axis=(0, 1, 2)) ** 2) > 0.3


@pytest.mark.slow
def test_baseline_trains_with_state_on_a_fixed_batch():
  # Two stages (1 + 2 blocks) build every kind of block in less compile time.
  fwd = registry.transform('resnet50_bn', num_classes=4, width=0.0625,
                           depth=(1, 2), widths=(256, 512))
  rng = jax.random.PRNGKey(0)
  x = jax.random.normal(rng, (8, 16, 16, 3))
  y = jnp.arange(8) % 4
  params, state = fwd.init(rng, x, is_training=True)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(params, state):
    logits, state = fwd.apply(params, state, rng, x, is_training=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), \
        state

  @jax.jit
  def step(params, state, opt_state):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  losses = []
  for _ in range(20):
    params, state, opt_state, loss = step(params, state, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0]
