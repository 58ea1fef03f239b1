"""The RMSProp optimizer and exponential schedule of the MBConv recipes, and
the optimizer config's `name` / `schedule` choices: checked against a NumPy
TensorFlow-1 RMSProp, the schedule's closed form, and configs saved before
these fields existed."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nfnets import optim
from nfnets.train import config as train_config
from nfnets.train import optimizer as train_optimizer

_CLASSIFIER = 'Net/~/linear'


def _tree():
  rng = np.random.default_rng(0)
  return {
      'Net/~/conv': {'w': jnp.asarray(rng.standard_normal((3, 3, 4, 8)),
                                      jnp.float32)},
      'Net/~/bn': {'scale': jnp.ones(8), 'offset': jnp.zeros(8)},
      _CLASSIFIER: {'w': jnp.asarray(rng.standard_normal((8, 10)),
                                     jnp.float32),
                    'b': jnp.zeros(10)},
  }


def _tf1_rmsprop(params, grads_per_step, lrs, wd, decay=0.9, eps=1e-3,
                 momentum=0.9):
  """tf.compat.v1.train.RMSPropOptimizer with an L2 term, in float64."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  ms = jax.tree.map(np.ones_like, params)  # TF1 starts the mean square at 1.
  mom = jax.tree.map(np.zeros_like, params)
  for grads, lr in zip(grads_per_step, lrs):
    for module in params:
      for name, p in params[module].items():
        g = np.asarray(grads[module][name], np.float64)
        if name not in ('b', 'scale', 'offset'):
          g = g + wd * p  # The gradient of wd / 2 * |p|^2.
        ms[module][name] = decay * ms[module][name] + (1 - decay) * g * g
        mom[module][name] = (momentum * mom[module][name]
                             + lr * g / np.sqrt(ms[module][name] + eps))
        params[module][name] = p - mom[module][name]
  return params


def test_rmsprop_optimizer_is_tensorflow1s_rmsprop_with_l2():
  params = _tree()
  rng = np.random.default_rng(1)
  grads_per_step = [jax.tree.map(lambda x: jnp.asarray(
      rng.standard_normal(x.shape), jnp.float32), params) for _ in range(4)]
  lrs = [0.1, 0.05, 0.02, 0.01]
  opt = optim.rmsprop_optimizer(lambda step: jnp.asarray(lrs)[step],
                                weight_decay=0.01)
  state = opt.init(params)
  got = params
  for grads in grads_per_step:
    updates, state = opt.update(grads, state, got)
    got = optax.apply_updates(got, updates)
  want = _tf1_rmsprop(params, grads_per_step, lrs, wd=0.01)
  for module in params:
    for name in params[module]:
      np.testing.assert_allclose(got[module][name], want[module][name],
                                 rtol=1e-5, atol=1e-6, err_msg=module + name)


def test_rmsprop_optimizer_rejects_out_of_range_settings():
  with pytest.raises(ValueError, match='rmsprop_optimizer: momentum'):
    optim.rmsprop_optimizer(0.1, momentum=1.0)
  with pytest.raises(ValueError, match='decay'):
    optim.rmsprop_optimizer(0.1, decay=1.5)
  with pytest.raises(ValueError, match='rmsprop_optimizer: weight_decay'):
    optim.rmsprop_optimizer(0.1, weight_decay=-1.0)


def test_warmup_exponential_schedule_matches_its_closed_form():
  peak, warmup, decay_steps, rate = 0.256, 10, 7, 0.97
  schedule = optim.warmup_exponential_schedule(peak, warmup, decay_steps,
                                               rate)
  steps = np.arange(60)
  got = np.asarray(jax.vmap(schedule)(steps))
  want = np.where(steps < warmup, peak * steps / warmup,
                  peak * rate ** np.floor(steps / decay_steps))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  smooth = optim.warmup_exponential_schedule(1.0, 0, 4, 0.5,
                                             staircase=False)
  np.testing.assert_allclose(smooth(2), 0.5 ** 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match='decay_rate'):
    optim.warmup_exponential_schedule(1.0, 0, 4, 1.5)


def test_config_builds_rmsprop_with_an_exponential_decay_in_epochs():
  cfg = train_optimizer.default_config()
  cfg.name = 'rmsprop'
  cfg.schedule = 'exponential'
  cfg.base_lr = 0.016
  cfg.decay_epochs = 2.4
  cfg.warmup_steps = 0
  schedule = train_optimizer.learning_rate_schedule(
      cfg, batch_size=4096, total_steps=1000, warmup_steps=0,
      steps_per_epoch=312.8)
  # Decay period int(2.4 * 312.8) = 750 steps, as the reference truncates it.
  assert float(schedule(749)) == pytest.approx(0.256)
  assert float(schedule(750)) == pytest.approx(0.256 * 0.97)
  with pytest.raises(ValueError, match='steps_per_epoch'):
    train_optimizer.from_config(cfg, batch_size=4096, total_steps=1000)
  cfg.decay_steps = 100
  opt = train_optimizer.from_config(cfg, batch_size=4096, total_steps=1000)
  state = opt.init(_tree())
  # optax.rmsprop's state: the mean square starts at one, as in TF1.
  nus = [s.nu for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, optax.ScaleByRmsState))
         if isinstance(s, optax.ScaleByRmsState)]
  assert nus and all(np.all(np.asarray(v) == 1.0)
                     for nu in nus for v in jax.tree.leaves(nu))


@pytest.mark.parametrize('field, value, message', [
    ('name', 'adam', 'name must be one of'),
    ('schedule', 'step', 'schedule must be one of'),
    ('decay_rate', 0.0, 'decay_rate'),
    ('decay_steps', 0, 'decay_steps'),
])
def test_config_rejects_bad_choices(field, value, message):
  cfg = train_optimizer.default_config()
  cfg[field] = value
  with pytest.raises(ValueError, match=message):
    train_optimizer.validate_config(cfg)


def test_default_is_unchanged_sgd_and_a_group_saved_without_new_fields():
  old = train_optimizer.default_config().to_dict()
  for field in train_optimizer.ADDED_FIELDS:
    del old[field]
  old = ml_collections.ConfigDict(old)
  train_optimizer.validate_config(old)
  filled = train_optimizer.with_defaults(old)
  assert (filled.name, filled.schedule) == ('sgd', 'cosine')
  params = _tree()
  grads = jax.tree.map(jnp.ones_like, params)
  updates = []
  for cfg in (old, train_optimizer.default_config()):
    opt = train_optimizer.from_config(cfg, batch_size=256, total_steps=10,
                                      warmup_steps=0)
    updates.append(opt.update(grads, opt.init(params), params)[0])
  for a, b in zip(*map(jax.tree.leaves, updates)):
    np.testing.assert_array_equal(a, b)
  # The whole run config, as saved before: valid, with the same durations.
  full = train_config.base_config()
  full.training.num_steps = 10
  full.optimizer.warmup_steps = 1
  values = full.to_dict()
  for field in train_optimizer.ADDED_FIELDS:
    del values['optimizer'][field]
  train_config.validate_config(ml_collections.ConfigDict(values),
                               num_devices=1)
