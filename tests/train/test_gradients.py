"""The composable gradient path: micro-batches and gradient accumulation.

Accumulating k micro-batches must give the gradient of the k-times larger
batch: checked against the closed-form gradient of softmax regression in
NumPy, and against one large-batch step of the runner's own train step.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets import data
from nfnets.train import config as train_config
from nfnets.train import state as train_state
from nfnets.train import step as step_lib
from tests.train.test_experiment import tiny_config


def test_micro_batch_j_is_every_kth_example():
  batch = {'images': np.arange(12 * 2).reshape(12, 2),
           'labels': np.arange(12)}
  micro = step_lib.micro_batches(batch, 3)
  assert micro['images'].shape == (3, 4, 2)
  for j in range(3):
    np.testing.assert_array_equal(micro['labels'][j], batch['labels'][j::3])
    np.testing.assert_array_equal(micro['images'][j], batch['images'][j::3])


def _softmax_regression(num_examples=12, dim=5, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((num_examples, dim)).astype(np.float32)
  labels = rng.integers(0, classes, num_examples)
  w = rng.standard_normal((dim, classes)).astype(np.float32) * 0.3
  return x, labels, w


def _numpy_gradient(x, labels, w):
  """d/dW of the mean cross-entropy of softmax(x W): x^T (p - y) / N."""
  logits = x @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  y = np.eye(w.shape[1])[labels]
  return x.T @ (p - y) / len(x), float(np.mean(-np.log(p[y == 1])))


@pytest.mark.parametrize('steps', [1, 2, 3, 6])
def test_accumulated_gradients_are_the_large_batch_gradient(steps):
  x, labels, w = _softmax_regression()

  def loss_fn(params, model_state, rng, batch):
    del rng
    logits = batch['images'] @ params['w']
    loss = jnp.mean(-jax.nn.log_softmax(logits)[
        jnp.arange(len(logits)), batch['labels']])
    top1 = jnp.mean(jnp.argmax(logits, -1) == batch['labels'])
    return loss, ({'count': model_state['count'] + 1}, top1)

  gradients = step_lib.accumulated(step_lib.plain_gradients(loss_fn), steps)
  grads, aux = jax.jit(gradients)(
      {'w': jnp.asarray(w)}, {'count': jnp.zeros((), jnp.int32)},
      jax.random.PRNGKey(0), {'images': x, 'labels': labels})
  expected, loss = _numpy_gradient(x, labels, w)
  np.testing.assert_allclose(grads['w'], expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux.loss, loss, rtol=1e-5)
  top1 = np.mean(np.argmax(x @ w, -1) == labels)
  np.testing.assert_allclose(aux.top1, top1, rtol=1e-6)
  # The model state went through every micro-batch in turn.
  assert int(aux.model_state['count']) == steps


def _one_step(config, batch):
  model = train_state.build_model(config)
  optimizer, _ = train_state.build_optimizer(config)
  state = jax.jit(functools.partial(train_state.init_train_state, config,
                                    model, optimizer))(jax.random.PRNGKey(0))
  mesh = train_state.make_mesh()
  step = step_lib.compile_train_step(
      step_lib.make_train_step(config, model, optimizer, mesh), mesh)
  return step(state, batch)


@pytest.mark.slow
def test_the_runner_step_with_accumulation_matches_the_large_batch():
  # An NF model without dropout or stochastic depth: nothing random, no
  # batch statistics, so the two steps differ only by float rounding.
  config = tiny_config()
  config.model.kwargs.drop_rate = 0.0
  config.model.kwargs.stochdepth_rate = 0.0
  config.training.compute_dtype = 'float32'
  train_config.validate_config(config, num_devices=1)
  batch = jax.tree.map(jnp.asarray, next(data.build_train(
      config.data, batch_size=config.training.batch_size, seed=0)))
  large, large_metrics = _one_step(config, batch)
  config.training.accumulation_steps = 4
  train_config.validate_config(config, num_devices=1)
  small, small_metrics = _one_step(config, batch)
  for key in ('loss', 'top1', 'grad_norm'):
    np.testing.assert_allclose(small_metrics[key], large_metrics[key],
                               rtol=2e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(small.params), jax.tree.leaves(large.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('steps, message', [
    (0, 'accumulation_steps must be positive'),
    (3, 'does not split into 3 micro-batches'),
])
def test_accumulation_steps_are_checked_before_any_compute(steps, message):
  config = tiny_config()  # Batch 8.
  config.training.accumulation_steps = steps
  with pytest.raises(train_config.ConfigError, match=message):
    train_config.validate_config(config, num_devices=1)
