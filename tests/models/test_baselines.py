"""Tests for the normalized ResNet baselines and the He-initialized NF-ResNet."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets import layers
from nfnets import optim
from nfnets.configs import resnet_gn
from nfnets.models import baselines
from nfnets.models import count_params
from nfnets.models import registry
from nfnets.train import config as train_config
from nfnets.train import optimizer as optimizer_lib

# torchvision's resnet50 with its BatchNorms as GroupNorms (same gamma and
# beta per channel): the GN paper's ResNet-50.
_GN_RESNET50_PARAMS = 25_557_032


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


def test_gn_resnet50_parameter_count_is_published():
  fwd = registry.transform('resnet50_gn')
  params, state = jax.eval_shape(
      lambda x: fwd.init(jax.random.PRNGKey(0), x, is_training=True),
      jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert sum(int(np.prod(p.shape))
             for p in jax.tree_util.tree_leaves(params)) == _GN_RESNET50_PARAMS
  assert not state  # GroupNorm keeps no moving statistics.
  # GN on every conv, the projection shortcuts' included: stem + 3 per block
  # + 4 shortcuts.
  norms = [m for m in params if set(params[m]) == {'scale', 'offset'}]
  assert len(norms) == 1 + 3 * 16 + 4
  assert sum(m.endswith('norm_shortcut') for m in norms) == 4


# Two stages of two blocks: transition blocks (projection shortcut, strided
# and not) and identity blocks, compiled in seconds.
_SHALLOW = dict(depth=(2, 2), widths=(256, 512), width=0.125)


def _gammas(name: str, **kw) -> tuple[dict[str, np.ndarray], dict]:
  fwd = registry.transform(name, num_classes=3, **_SHALLOW, **kw)
  init = jax.jit(fwd.init, static_argnames='is_training')
  params, _ = init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)),
                   is_training=True)
  return {m: np.asarray(p['scale']) for m, p in params.items()
          if 'scale' in p}, params


def test_gn_resnet_zero_inits_exactly_the_last_norm_of_each_block():
  gammas, params = _gammas('resnet50_gn')
  zero = sorted(m for m, g in gammas.items() if np.all(g == 0))
  one = sorted(m for m, g in gammas.items() if np.all(g == 1))
  blocks = sorted({m.rsplit('/~/', 1)[0] for m in gammas if 'res_block' in m})
  assert len(blocks) == 4
  # One zero gamma per block, its last normalization (after conv2); every
  # other gamma (stem, norm0, norm1, shortcuts) is one.
  assert zero == sorted(f'{b}/~/norm2' for b in blocks)
  assert sorted(zero + one) == sorted(gammas)
  assert sum(m.endswith('/norm_shortcut') for m in one) == 2
  assert all(np.all(p['offset'] == 0) for p in params.values()
             if 'offset' in p)
  fc = np.asarray(params['ResNet/~/linear']['w'])
  assert 0.005 < fc.std() < 0.02  # N(0, 0.01^2), not fan-in scaled.


def test_zero_init_makes_every_block_start_as_the_identity():
  fwd = registry.transform('resnet50_gn', num_classes=3, **_SHALLOW)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))

  @jax.jit
  def branches(x):
    params, state = fwd.init(jax.random.PRNGKey(1), x, is_training=True)
    (_, acts), _ = fwd.apply(params, state, None, x, is_training=True,
                             return_activations=True)
    return acts.branches

  assert all(float(jnp.abs(b).max()) == 0 for b in branches(x))
  # BatchNorm networks keep all-ones gammas (the signal propagation plots'
  # networks) unless asked, then zero the same layers as GN.
  bn, _ = _gammas('resnet50_bn')
  assert all(np.all(g == 1) for g in bn.values())
  bn0, _ = _gammas('resnet50_bn', zero_init_last_norm=True)
  assert sorted(m for m, g in bn0.items() if np.all(g == 0)) == sorted(
      m for m in bn0 if m.endswith('/norm2'))


def test_gn_recipe_decays_gamma_and_beta_and_nfnet_recipe_does_not():
  params = {'ResNet/~/res_block/~/norm2': {'scale': jnp.ones(4),
                                           'offset': jnp.ones(4)},
            'ResNet/~/res_block/~/conv0': {'w': jnp.ones((1, 1, 4, 4))},
            'ResNet/~/linear': {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)},
            'NF/~/block': {'skip_gain': jnp.ones(())}}
  config = resnet_gn.get_config().optimizer
  assert config.weight_decay == 1e-4 and config.clipping == 0
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates = {}
  for decay_norm in (True, False):
    config.weight_decay_norm_params = decay_norm
    opt = optimizer_lib.from_config(config, batch_size=256, total_steps=10,
                                    warmup_steps=0, steps_per_epoch=5.0)
    updates[decay_norm], _ = opt.update(zero_grads, opt.init(params), params)
  lr_wd = 0.1 * 1e-4  # One SGD step of the decay term alone.
  gn = updates[True]['ResNet/~/res_block/~/norm2']
  np.testing.assert_allclose(gn['scale'], -lr_wd, rtol=1e-5)
  np.testing.assert_allclose(gn['offset'], -lr_wd, rtol=1e-5)
  for decay_norm in (True, False):
    u = updates[decay_norm]
    np.testing.assert_allclose(u['ResNet/~/res_block/~/conv0']['w'], -lr_wd,
                               rtol=1e-5)
    assert float(jnp.abs(u['ResNet/~/linear']['b']).max()) == 0
    assert float(jnp.abs(u['NF/~/block']['skip_gain'])) == 0
  assert float(jnp.abs(
      updates[False]['ResNet/~/res_block/~/norm2']['scale']).max()) == 0
  # The NFNet recipe's default is unchanged.
  assert not optimizer_lib.default_config().weight_decay_norm_params
  assert optim.weight_decay_mask(params)['ResNet/~/res_block/~/norm2'] == {
      'scale': False, 'offset': False}


def test_gn_recipe_is_the_papers():
  config = resnet_gn.get_config()
  train_config.validate_config(config, num_devices=8)
  assert config.model.name == 'resnet50_gn'
  assert resnet_gn.get_config('101').model.name == 'resnet101_gn'
  opt, tc = config.optimizer, config.training
  assert tc.batch_size == 256 and tc.label_smoothing == 0
  assert (opt.momentum, opt.nesterov) == (0.9, False)
  steps_per_epoch = 1_281_167 / 256
  total, warmup = train_config.durations(config)
  assert (total, warmup) == (round(100 * steps_per_epoch), 0)
  schedule = optimizer_lib.learning_rate_schedule(
      opt, batch_size=256, total_steps=total, warmup_steps=0,
      steps_per_epoch=steps_per_epoch)
  # 0.1, divided by 10 at epochs 30, 60 and 90.
  for epoch, lr in ((0, 0.1), (29.9, 0.1), (30.1, 0.01), (60.1, 1e-3),
                    (99.9, 1e-4)):
    assert float(schedule(int(epoch * steps_per_epoch))) == pytest.approx(
        lr, rel=1e-4)


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
