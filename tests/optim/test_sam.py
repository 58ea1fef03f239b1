"""SAM: the closed form on a quadratic, the batch fraction, the per-device
ascent on two simulated devices, the config fields, and a tiny runner run.

The step-level tests train a BatchNorm + linear classifier whose loss has an
independent jnp reference (`_reference_loss`); BatchNorm makes the batch
statistics show which examples each pass saw.
"""
import json
import os
import pathlib
import subprocess
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nfnets import configs
from nfnets import optim
from nfnets import train
from nfnets.train import optimizer as train_optimizer
from nfnets.train import state as train_state
from nfnets.train import step as train_step
from tests.conftest import parse_config_flags
from tests.train.test_experiment import tiny_config
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_CLASSES = 10
LABEL_SMOOTHING = 0.1
LR = 0.5
RHO = 0.3  # Large enough that the ascent point changes the gradient visibly.
BN_EPS = 1e-5


# The quadratic ----------------------------------------------------------------


def test_one_sam_step_on_a_quadratic_is_the_closed_form():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 5))
  h = a @ a.T + np.eye(5)  # Symmetric positive definite.
  w = rng.normal(size=5)
  # The weights as a two-leaf tree: the ascent's norm is over the whole tree.
  params = {'a': jnp.asarray(w[:2], jnp.float32),
            'b': jnp.asarray(w[2:], jnp.float32)}
  h32 = jnp.asarray(h, jnp.float32)

  def grad_fn(p, inputs):
    del inputs
    flat = jnp.concatenate([p['a'], p['b']])
    g = h32 @ flat  # grad of 1/2 w^T H w.
    return {'a': g[:2], 'b': g[2:]}, None

  lr, rho = 0.05, 0.1
  grads, _, _ = optim.sam_gradient(grad_fn, params, rho, None, None)
  # The recipe's chain with AGC, weight decay and momentum off: plain SGD.
  sgd = optim.nfnet_optimizer(lr, clipping=0.0, weight_decay=0.0,
                              momentum=0.0)
  updates, _ = sgd.update(grads, sgd.init(params), params)
  got = optax.apply_updates(params, updates)
  hw = h @ w
  want = w - lr * h @ (w + rho * hw / np.linalg.norm(hw))
  np.testing.assert_allclose(np.concatenate([got['a'], got['b']]), want,
                             rtol=1e-5)
  # Not plain gradient descent.
  assert np.abs(want - (w - lr * hw)).max() > 1e-2


def test_ascent_point_of_a_zero_gradient_is_the_point():
  params = {'w': jnp.ones(3)}
  point = optim.ascent_point(params, {'w': jnp.zeros(3)}, 0.05)
  np.testing.assert_array_equal(point['w'], params['w'])


# The step on a small model ----------------------------------------------------


def bn_linear_model() -> hk.TransformedWithState:
  """BatchNorm over the flattened image, then a linear classifier."""
  def forward(images, is_training):
    x = images.reshape(images.shape[0], -1)  # [B, F]
    x = hk.BatchNorm(True, True, decay_rate=0.9, eps=BN_EPS)(
        x, is_training=is_training)
    return hk.Linear(NUM_CLASSES)(x)
  return hk.transform_with_state(forward)


def step_config(rho: float, fraction: float,
                per_device: bool) -> ml_collections.ConfigDict:
  config = configs.digits_config()
  config.training.label_smoothing = LABEL_SMOOTHING
  config.training.ema_decay = 0.0
  config.optimizer.sam_rho = rho
  config.optimizer.sam_batch_fraction = fraction
  config.optimizer.sam_per_device = per_device
  return config


def sample_batch(batch_size: int = 8, size: int = 4):
  """Images [B, size, size, 3] (the second half twice as spread) and labels."""
  rng = np.random.default_rng(1)
  images = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
  images[batch_size // 2:] *= 2.0
  labels = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  return {'images': images, 'labels': labels}


def run_step(config, batch, mesh):
  """One jitted runner step from a fixed init.

  Returns:
    (params before, state after, metrics, the compiled step's HLO text).
  """
  model = bn_linear_model()
  params, model_state = model.init(jax.random.PRNGKey(0),
                                   jnp.asarray(batch['images']),
                                   is_training=True)
  optimizer = optax.sgd(LR)
  state = train_state.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=optimizer.init(params), ema_params=params,
      ema_state=model_state, rng=jax.random.PRNGKey(1))
  replicated = train_state.replicated(mesh)
  step = jax.jit(train_step.make_train_step(config, model, optimizer, mesh),
                 in_shardings=(replicated, train_state.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated))
  compiled = step.lower(state, batch).compile()
  new_state, metrics = compiled(state, batch)
  return params, new_state, metrics, compiled.as_text()


def _reference_loss(params, images, labels):
  """The smoothed cross-entropy of BatchNorm (batch statistics) + linear."""
  x = images.reshape(images.shape[0], -1)
  mean = x.mean(0)
  var = (x * x).mean(0) - mean * mean
  bn = params['batch_norm']
  x = (x - mean) / jnp.sqrt(var + BN_EPS) * bn['scale'] + bn['offset']
  logits = x @ params['linear']['w'] + params['linear']['b']
  targets = (jax.nn.one_hot(labels, NUM_CLASSES) * (1 - LABEL_SMOOTHING)
             + LABEL_SMOOTHING / NUM_CLASSES)
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))


# Jitted: op by op, the many small dispatches take seconds on CPU.
_reference_grad = jax.jit(jax.grad(_reference_loss))


def reference_descent(params, ascent, descent, rho=RHO):
  """Mean over (ascent, descent) example pairs of grad L(w + e) at their e."""
  grads = []
  for (xa, ya), (xd, yd) in zip(ascent, descent):
    g = _reference_grad(params, xa, ya)
    norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
    point = jax.tree.map(lambda w, g: w + rho * g / norm, params, g)
    grads.append(_reference_grad(point, xd, yd))
  return jax.tree.map(lambda *g: sum(g) / len(g), *grads)


def assert_sgd_step(before, after, grads, rtol=2e-4, atol=1e-6):
  for b, a, g in zip(*map(jax.tree.leaves, (before, after, grads))):
    np.testing.assert_allclose(a, b - LR * g, rtol=rtol, atol=atol)


def test_ascent_batch_takes_the_first_examples_of_each_shard():
  batch = {'labels': jnp.arange(12), 'images': jnp.arange(24).reshape(12, 2)}
  got = train_step.ascent_batch(batch, 1 / 3, num_shards=2)
  np.testing.assert_array_equal(got['labels'], [0, 1, 6, 7])
  np.testing.assert_array_equal(got['images'][:, 0], [0, 2, 12, 14])
  assert train_step.ascent_batch(batch, 0.01)['labels'].tolist() == [0]
  assert train_step.ascent_size(32, 0.2) == 6  # round(6.4)
  assert train_step.ascent_size(4, 1.0) == 4


def test_batch_fraction_ascends_on_the_first_examples():
  batch = sample_batch()
  x, y = batch['images'], batch['labels']
  mesh = train_state.make_mesh(jax.devices()[:1])
  params, state, metrics, _ = run_step(step_config(RHO, 0.25, False), batch,
                                       mesh)
  want = reference_descent(params, [(x[:2], y[:2])], [(x, y)])
  assert_sgd_step(params, state.params, want)
  # Any other two examples give another step.
  other = reference_descent(params, [(x[2:4], y[2:4])], [(x, y)])
  assert max(np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(want), jax.tree.leaves(other))) > 1e-3
  # The loss is the descent pass's, at the ascent point, on the whole batch.
  g = _reference_grad(params, x[:2], y[:2])
  norm = optax.tree.norm(g)
  point = jax.tree.map(lambda w, g: w + RHO * g / norm, params, g)
  np.testing.assert_allclose(metrics['loss'], _reference_loss(point, x, y),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics['grad_norm'], optax.tree.norm(want),
                             rtol=1e-4)
  # The whole-batch pass's BatchNorm statistics are kept.
  flat = x.reshape(8, -1)
  np.testing.assert_allclose(
      state.model_state['batch_norm/~/var_ema']['average'][0], flat.var(0),
      rtol=1e-4)


_TWO_DEVICES = '''
import sys
import jax
import numpy as np
from nfnets.train import state as train_state
from tests.optim import test_sam
assert jax.device_count() == 2, jax.devices()
mesh = train_state.make_mesh()
batch = test_sam.sample_batch()
out = {}
for per_device in (True, False):
  config = test_sam.step_config(test_sam.RHO, 0.5, per_device)
  params, state, metrics, hlo = test_sam.run_step(config, batch, mesh)
  name = 'per_device' if per_device else 'synchronized'
  # Collectives that move examples between devices.
  out[f'{name}/moves'] = np.asarray(sum(hlo.count(f' {op}') for op in (
      'all-gather', 'all-to-all', 'collective-permute')))
  for kind, tree in (('params', state.params),
                     ('model_state', state.model_state)):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      out[f'{name}/{kind}/{jax.tree_util.keystr(path)}'] = np.asarray(leaf)
  out[f'{name}/loss'] = np.asarray(metrics['loss'])
for path, leaf in jax.tree_util.tree_leaves_with_path(params):
  out[f'init/{jax.tree_util.keystr(path)}'] = np.asarray(leaf)
np.savez(sys.argv[1], **out)
'''


def test_per_device_ascent_on_two_devices(tmp_path):
  xla_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
               if not f.startswith('--xla_force_host_platform_device_count')]
  xla_flags.append('--xla_force_host_platform_device_count=2')
  env = dict(os.environ, XLA_FLAGS=' '.join(xla_flags), JAX_PLATFORMS='cpu')
  out = tmp_path / 'out.npz'
  result = subprocesses.run([sys.executable, '-c', _TWO_DEVICES, str(out)],
                          env=env, cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-4000:]
  out = dict(np.load(out))

  def tree(prefix, like):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: out[f'{prefix}/{jax.tree_util.keystr(path)}'], like)

  batch = sample_batch()
  x, y = batch['images'], batch['labels']
  like = bn_linear_model().init(jax.random.PRNGKey(0), x, is_training=True)[0]
  params = tree('init', like)
  halves = [(x[:4], y[:4]), (x[4:], y[4:])]
  # Per device: each half ascends from its own first two examples (BatchNorm
  # over them alone) and descends on itself at its own point.
  per_device = reference_descent(params, [(x[:2], y[:2]), (x[4:6], y[4:6])],
                                 halves)
  # Synchronized: one ascent from both halves' first two examples, one
  # descent on the whole batch.
  ascent = (np.concatenate([x[:2], x[4:6]]), np.concatenate([y[:2], y[4:6]]))
  synchronized = reference_descent(params, [ascent], [(x, y)])
  assert_sgd_step(params, tree('per_device/params', like), per_device)
  assert_sgd_step(params, tree('synchronized/params', like), synchronized)
  assert max(np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(per_device), jax.tree.leaves(synchronized))) > 1e-3
  # Each device's ascent examples are its own: no example changes device.
  assert out['per_device/moves'] == out['synchronized/moves'] == 0
  # BatchNorm statistics: per device, the mean of the halves' variances; in
  # the global view, the whole batch's.
  flat = [h[0].reshape(4, -1) for h in halves]
  var = "model_state/['batch_norm/~/var_ema']['average']"
  np.testing.assert_allclose(out[f'per_device/{var}'][0],
                             (flat[0].var(0) + flat[1].var(0)) / 2, rtol=1e-4)
  np.testing.assert_allclose(out[f'synchronized/{var}'][0],
                             np.concatenate(flat).var(0), rtol=1e-4)


# Config and runner ------------------------------------------------------------


def test_config_fields_validate_and_old_configs_have_no_sam():
  config = parse_config_flags(['--config.optimizer.sam_rho=0.05',
                               '--config.optimizer.sam_batch_fraction=0.2',
                               '--config.optimizer.sam_per_device=true'])
  opt = config.optimizer
  assert (opt.sam_rho, opt.sam_batch_fraction, opt.sam_per_device) == (
      0.05, 0.2, True)
  train_optimizer.validate_config(opt)
  for field, value, message in (
      ('sam_rho', -0.1, 'sam_rho must be non-negative'),
      ('sam_batch_fraction', 0.0, r'sam_batch_fraction must be in \(0, 1\]'),
      ('sam_batch_fraction', 1.5, r'sam_batch_fraction must be in \(0, 1\]')):
    bad = train_optimizer.default_config()
    bad[field] = value
    with pytest.raises(ValueError, match=message):
      train_optimizer.validate_config(bad)
  old = train_optimizer.default_config().to_dict()
  for field in ('sam_rho', 'sam_batch_fraction', 'sam_per_device'):
    del old[field]
  old = ml_collections.ConfigDict(old)
  train_optimizer.validate_config(old)
  assert train_optimizer.with_defaults(old).sam_rho == 0.0


@pytest.mark.slow
def test_runner_trains_with_sam(tmp_path):
  config = tiny_config(num_steps=2)
  config.optimizer.sam_rho = 0.05  # --config.optimizer.sam_rho=0.05
  metrics = train.train_and_evaluate(config, tmp_path)
  assert metrics['step'] == 2
  assert np.isfinite(metrics['train/loss'])
  assert metrics['train/grad_norm'] > 0
  records = [json.loads(line) for line in
             (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert any('train/loss' in r for r in records)
