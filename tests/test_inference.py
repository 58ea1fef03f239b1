"""Inference on loaded weights computes Scaled WS once, not per batch."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets import configs
from nfnets import evaluate
from nfnets.train import state as train_state


def _loaded(name, **kwargs):
  config = configs.digits_config('runlocal')
  config.model.name = name
  config.model.kwargs = dict(width=0.0625, **kwargs)
  config.data.image_size = config.data.eval_image_size = 16
  model = train_state.build_model(config)
  images = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
  params, state = model.init(jax.random.PRNGKey(0), images, is_training=False)
  # Trained weights are not unit gain and zero bias; make the fold see that.
  params = jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
      params)
  ckpt = evaluate.LoadedCheckpoint(
      config=config, step=0, path=pathlib.Path('unused'), use_ema=False,
      model=model, params=params, state=state)
  return ckpt, images


def _has_rsqrt(fn, *args):
  """Whether the traced computation takes an rsqrt (WS's 1 / sqrt(N var))."""
  return 'rsqrt' in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.slow
def test_logits_use_folded_weights_and_match_the_trained_model():
  ckpt, images = _loaded('nfnet_f0', drop_rate=0.0)
  apply, params = ckpt.inference
  convs = [m for m in ckpt.params if 'gain' in ckpt.params[m]]
  assert convs, 'the NFNet has WSConv2D layers'
  for m in convs:
    assert set(params[m]) == {'w', 'bias'}
  # The fold is WS itself: an independent NumPy standardization of one kernel.
  w, gain = (np.asarray(ckpt.params[convs[0]][k], np.float64)
             for k in ('w', 'gain'))
  fan_in = np.prod(w.shape[:-1])
  mean = w.mean(axis=(0, 1, 2))
  var = w.var(axis=(0, 1, 2))
  expected = (w - mean) / np.sqrt(np.maximum(var * fan_in, 1e-4)) * gain
  np.testing.assert_allclose(params[convs[0]]['w'], expected, rtol=1e-5,
                             atol=1e-6)

  raw = ckpt.apply_fn(ckpt.params, ckpt.state, images)
  np.testing.assert_allclose(ckpt.logits(images), raw, rtol=1e-4, atol=1e-5)
  assert _has_rsqrt(ckpt.apply_fn, ckpt.params, ckpt.state, images)
  assert not _has_rsqrt(apply, params, ckpt.state, images)


def test_models_without_weight_standardization_are_run_as_trained():
  ckpt, images = _loaded('nf_resnet50_no_ws')
  apply, params = ckpt.inference
  assert params is ckpt.params
  np.testing.assert_array_equal(
      ckpt.logits(images), ckpt.apply_fn(ckpt.params, ckpt.state, images))
  assert jnp.all(jnp.isfinite(ckpt.logits(images)))
