"""Tests for nfnets.optim: AGC against a NumPy reference, masks, the NFNet
optimizer against a hand computation, and the schedule."""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets import models
from nfnets import optim
from nfnets.train import optimizer as train_optimizer
from tests import subprocesses

_REPO = pathlib.Path(__file__).resolve().parents[2]


def np_agc(grad, param, clipping, eps):
  """AGC for one tensor, one output unit (last axis) at a time, in float64."""
  g = np.asarray(grad, np.float64)
  p = np.asarray(param, np.float64)
  out = g.copy()
  if p.ndim <= 1:
    units = [Ellipsis]
  else:
    units = [(Ellipsis, o) for o in range(p.shape[-1])]
  for idx in units:
    g_norm = np.sqrt(np.sum(g[idx] ** 2))
    p_norm = max(np.sqrt(np.sum(p[idx] ** 2)), eps)
    if g_norm / p_norm > clipping:
      out[idx] = g[idx] * (clipping * p_norm / g_norm)
  return out


def np_clipped_units(grad, param, clipping, eps):
  """Number of units np_agc rescales, and the total number of units."""
  g = np.asarray(grad, np.float64)
  p = np.asarray(param, np.float64)
  axes = tuple(range(p.ndim - 1)) if p.ndim > 1 else tuple(range(p.ndim))
  g_norm = np.sqrt(np.sum(g ** 2, axis=axes))
  p_norm = np.maximum(np.sqrt(np.sum(p ** 2, axis=axes)), eps)
  ratio = np.atleast_1d(g_norm / p_norm)
  return int(np.sum(ratio > clipping)), ratio.size


_SHAPES = {
    'conv': (3, 3, 4, 6),
    'dense': (16, 5),
    'conv3d': (2, 2, 2, 3, 4),
    'bias': (6,),
    'gain': (5,),
    'scalar': (),
}


def random_tree(seed, clipping):
  """Params and grads whose per-unit norm ratios straddle `clipping`."""
  rng = np.random.default_rng(seed)
  params, grads = {}, {}
  for name, shape in _SHAPES.items():
    out = shape[-1] if len(shape) > 1 else 1
    p_scale = 10.0 ** rng.uniform(-2, 1, size=out)
    # ||G_i|| / ||W_i|| spread log-uniformly over 1e-4 .. 1 around lambda.
    g_scale = p_scale * 10.0 ** rng.uniform(-4, 0, size=out)
    if len(shape) <= 1:
      p_scale, g_scale = p_scale[0], g_scale[0]
    p = rng.standard_normal(shape) * p_scale
    g = rng.standard_normal(shape) * g_scale
    params[name] = jnp.asarray(p, jnp.float32)
    grads[name] = jnp.asarray(g, jnp.float32)
  return params, grads


def apply(transform, grads, params):
  updates, _ = jax.jit(transform.update)(grads, transform.init(params),
                                         params)
  return updates


def test_agc_matches_numpy_reference_on_random_trees():
  clipping, eps = 0.01, 1e-3
  clipped = total = 0
  for seed in range(5):
    params, grads = random_tree(seed, clipping)
    out = apply(optim.adaptive_grad_clip(clipping, eps), grads, params)
    for name in _SHAPES:
      expected = np_agc(grads[name], params[name], clipping, eps)
      np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-12,
                                 err_msg=name)
      c, t = np_clipped_units(grads[name], params[name], clipping, eps)
      clipped, total = clipped + c, total + t
  # The comparison is only meaningful if both branches were exercised.
  assert 0.2 * total < clipped < 0.8 * total


def test_clip_fraction_counts_the_units_numpy_clips():
  clipping, eps = 0.01, 1e-3
  for seed in range(3):
    params, grads = random_tree(seed, clipping)
    counts = [np_clipped_units(grads[n], params[n], clipping, eps)
              for n in _SHAPES]
    want = sum(c for c, _ in counts) / sum(t for _, t in counts)
    got = jax.jit(lambda g, p: optim.clip_fraction(g, p, clipping, eps))(
        grads, params)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    assert 0.0 < want < 1.0
    # Masked-out parameters count nowhere, as they are not clipped.
    mask = {n: n == 'conv' for n in _SHAPES}
    c, t = np_clipped_units(grads['conv'], params['conv'], clipping, eps)
    np.testing.assert_allclose(
        float(optim.clip_fraction(grads, params, clipping, eps, mask=mask)),
        c / t, rtol=1e-6)


def test_clipped_units_sit_exactly_on_the_threshold():
  clipping, eps = 0.02, 1e-3
  params, grads = random_tree(7, clipping)
  out = apply(optim.adaptive_grad_clip(clipping, eps), grads, params)
  kernel, grad, new = (np.asarray(t['conv'], np.float64)
                       for t in (params, grads, out))
  p_norm = np.maximum(np.linalg.norm(kernel.reshape(-1, 6), axis=0), eps)
  g_norm = np.linalg.norm(grad.reshape(-1, 6), axis=0)
  new_norm = np.linalg.norm(new.reshape(-1, 6), axis=0)
  over = g_norm > clipping * p_norm
  np.testing.assert_allclose(new_norm[over], clipping * p_norm[over],
                             rtol=1e-5)
  np.testing.assert_array_equal(new[..., ~over], grad[..., ~over])


def test_zero_weights_use_eps_as_the_norm():
  clipping, eps = 0.01, 1e-3
  params = {'w': jnp.zeros((3, 3, 2, 4)), 'b': jnp.zeros(4)}
  rng = np.random.default_rng(0)
  big = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
  # A unit whose norm is below clipping * eps must pass unchanged.
  big[..., 3] *= 0.5 * clipping * eps / np.linalg.norm(big[..., 3])
  grads = {'w': jnp.asarray(big), 'b': jnp.full((4,), 3.0)}
  out = apply(optim.adaptive_grad_clip(clipping, eps), grads, params)
  unit_norms = np.linalg.norm(np.asarray(out['w']).reshape(-1, 4), axis=0)
  np.testing.assert_allclose(unit_norms[:3], clipping * eps, rtol=1e-5)
  np.testing.assert_array_equal(out['w'][..., 3], big[..., 3])
  np.testing.assert_allclose(np.linalg.norm(out['b']), clipping * eps,
                             rtol=1e-5)
  for name in params:
    np.testing.assert_allclose(out[name],
                               np_agc(grads[name], params[name], clipping,
                                      eps), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize('zero_params', [False, True])
def test_zero_gradients_stay_zero(zero_params):
  params, grads = random_tree(1, 0.01)
  if zero_params:
    params = jax.tree.map(jnp.zeros_like, params)
  grads = jax.tree.map(jnp.zeros_like, grads)
  out = apply(optim.adaptive_grad_clip(0.01), grads, params)
  for leaf in jax.tree.leaves(out):
    assert np.all(np.isfinite(leaf))
    np.testing.assert_array_equal(leaf, 0.0)


def test_zero_gradients_give_finite_second_order_gradients():
  # Differentiating through AGC (e.g. meta-learning) must not hit 0/0 either.
  params = {'w': jnp.ones((4, 3))}
  transform = optim.adaptive_grad_clip(0.01)

  def total(g):
    return jnp.sum(transform.update({'w': g}, optax.EmptyState(),
                                    params)[0]['w'])

  dg = jax.grad(total)(jnp.zeros((4, 3)))
  assert np.all(np.isfinite(dg))


@pytest.mark.parametrize('shape', [(7,), (8, 5), (3, 3, 4, 6),
                                   (2, 2, 2, 3, 4)])
def test_matches_optax_where_both_apply(shape):
  rng = np.random.default_rng(sum(shape))
  out_units = shape[-1] if len(shape) > 1 else 1
  param = rng.standard_normal(shape).astype(np.float32)
  grad = (rng.standard_normal(shape)
          * 10.0 ** rng.uniform(-4, 0, size=out_units)).astype(np.float32)
  params, grads = {'p': jnp.asarray(param)}, {'p': jnp.asarray(grad)}
  ours = apply(optim.adaptive_grad_clip(0.01, 1e-3), grads, params)
  theirs = apply(optax.adaptive_grad_clip(0.01, 1e-3), grads, params)
  np.testing.assert_allclose(ours['p'], theirs['p'], rtol=1e-6, atol=1e-12)
  assert not np.allclose(ours['p'], grad)  # Some unit was clipped.


def test_single_input_dense_kernel_is_clipped_per_output_unit():
  # A (1, out) kernel has `out` units; the reference squeezes it into one.
  param = jnp.asarray([[1.0, 1.0, 1.0]])
  grad = jnp.asarray([[1.0, 0.001, 0.1]])
  out = apply(optim.adaptive_grad_clip(0.01), {'w': grad}, {'w': param})
  np.testing.assert_allclose(out['w'], np_agc(grad, param, 0.01, 1e-3),
                             rtol=1e-6)
  np.testing.assert_allclose(out['w'], [[0.01, 0.001, 0.01]], rtol=1e-6)


@pytest.mark.parametrize('shape', [(3, 4, 5), (2, 2, 2, 2, 2, 2)])
def test_unexpected_rank_is_an_error(shape):
  params = {'layer': {'kernel': jnp.ones(shape)}}
  transform = optim.adaptive_grad_clip(0.01)
  with pytest.raises(ValueError, match=r"rank-\d.*\['layer'\]\['kernel'\]"
                     r".*axis="):
    transform.update(params, transform.init(params), params)


def test_axis_override():
  rng = np.random.default_rng(3)
  conv1d = rng.standard_normal((5, 4, 6)).astype(np.float32)  # [W, I, O]
  grad = (rng.standard_normal((5, 4, 6))
          * 10.0 ** rng.uniform(-4, 0, size=6)).astype(np.float32)
  params = {'conv1d': jnp.asarray(conv1d), 'bias': jnp.ones(6)}
  grads = {'conv1d': jnp.asarray(grad), 'bias': jnp.full((6,), 0.1)}
  by_rank = lambda p: (0, 1) if p.ndim == 3 else None
  out = apply(optim.adaptive_grad_clip(0.01, axis=by_rank), grads, params)
  np.testing.assert_allclose(out['conv1d'], np_agc(grad, conv1d, 0.01, 1e-3),
                             rtol=1e-5)
  np.testing.assert_allclose(out['bias'],
                             np_agc(grads['bias'], params['bias'], 0.01,
                                    1e-3), rtol=1e-6)
  # One set of axes for every tensor: units along axis 0 of a dense kernel.
  dense = rng.standard_normal((6, 3)).astype(np.float32)
  dgrad = rng.standard_normal((6, 3)).astype(np.float32)
  out = apply(optim.adaptive_grad_clip(0.01, axis=-1), {'w': dgrad},
              {'w': dense})
  np.testing.assert_allclose(out['w'],
                             np_agc(dgrad.T, dense.T, 0.01, 1e-3).T,
                             rtol=1e-5)
  with pytest.raises(ValueError, match='out of range'):
    apply(optim.adaptive_grad_clip(0.01, axis=2), {'w': dgrad}, {'w': dense})


@pytest.mark.parametrize('param_dtype', [jnp.float32, jnp.bfloat16])
def test_bfloat16_gradients(param_dtype):
  params, grads = random_tree(4, 0.01)
  params = jax.tree.map(lambda x: x.astype(param_dtype), params)
  grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), grads)
  out = apply(optim.adaptive_grad_clip(0.01), grads, params)
  for name in _SHAPES:
    assert out[name].dtype == jnp.bfloat16
    expected = np_agc(np.asarray(grads[name], np.float32),
                      np.asarray(params[name], np.float32), 0.01, 1e-3)
    np.testing.assert_allclose(np.asarray(out[name], np.float32), expected,
                               rtol=1e-2, atol=1e-30, err_msg=name)


def test_requires_params_and_valid_arguments():
  transform = optim.adaptive_grad_clip(0.01)
  with pytest.raises(ValueError, match='params'):
    transform.update({'w': jnp.ones(3)}, transform.init(None))
  with pytest.raises(ValueError, match='clipping'):
    optim.adaptive_grad_clip(0.0)
  with pytest.raises(ValueError, match='shape'):
    transform.update({'w': jnp.ones(3)}, optax.EmptyState(),
                     {'w': jnp.ones(4)})


def _head_body_tree():
  rng = np.random.default_rng(5)
  params = {'body': {'w': jnp.asarray(rng.standard_normal((8, 4)),
                                      jnp.float32)},
            'head': {'w': jnp.asarray(rng.standard_normal((4, 3)),
                                      jnp.float32),
                     'b': jnp.zeros(3)}}
  grads = jax.tree.map(lambda x: jnp.full(x.shape, 5.0), params)
  return params, grads


def test_mask_leaves_excluded_parameters_unclipped():
  params, grads = _head_body_tree()
  mask = {'body': {'w': True}, 'head': {'w': False, 'b': False}}
  out = apply(optim.adaptive_grad_clip(0.01, mask=mask), grads, params)
  np.testing.assert_array_equal(out['head']['w'], grads['head']['w'])
  np.testing.assert_array_equal(out['head']['b'], grads['head']['b'])
  np.testing.assert_allclose(
      out['body']['w'],
      np_agc(grads['body']['w'], params['body']['w'], 0.01, 1e-3), rtol=1e-6)
  # The documented optax.masked recipe and a callable mask agree.
  recipe = apply(optax.masked(optim.adaptive_grad_clip(0.01), mask), grads,
                 params)
  from_fn = apply(optim.adaptive_grad_clip(0.01, mask=lambda p: mask), grads,
                  params)
  for tree in (recipe, from_fn):
    jax.tree.map(np.testing.assert_array_equal, tree, out)


def _model_params(name, **overrides):
  forward = hk.transform_with_state(
      models.create(name, num_classes=10, **overrides))
  params, _ = jax.eval_shape(
      lambda rng, x: forward.init(rng, x, is_training=True),
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  return params


def _flat_mask(mask):
  return {(m, n): v for m, sub in mask.items() for n, v in sub.items()}


@pytest.mark.parametrize('name,top', [('nf_resnet50', 'NF_ResNet'),
                                      ('nfnet_f0', 'NFNet')])
def test_masks_on_real_models(name, top):
  params = _model_params(name, width=0.125)
  clip = _flat_mask(optim.agc_mask(params))
  decay = _flat_mask(optim.weight_decay_mask(params))
  assert {k for k, v in clip.items() if not v} == {
      (f'{top}/~/linear', 'w'), (f'{top}/~/linear', 'b')}
  if name == 'nfnet_f0':
    se = [k for k in clip if 'squeeze_excite' in k[0] and 'linear' in k[0]]
    assert se and all(clip[k] for k in se)
  reference = _flat_mask(optim.agc_mask(params, clip_classifier_bias=True))
  assert {k for k, v in reference.items() if not v} == {
      (f'{top}/~/linear', 'w')}
  for (module, pname), decayed in decay.items():
    expected = pname not in ('gain', 'skip_gain', 'bias', 'b')
    assert decayed == expected, (module, pname)
  assert any(n == 'skip_gain' for _, n in decay)


def test_module_and_name_for_other_trees():
  flax_like = {'params': {'Dense_0': {'kernel': 1, 'bias': 2}}}
  names = jax.tree_util.tree_map_with_path(
      lambda path, _: optim.module_and_name(path), flax_like)
  assert names['params']['Dense_0']['kernel'] == ('params/Dense_0', 'kernel')
  assert optim.weight_decay_mask(flax_like) == {
      'params': {'Dense_0': {'kernel': True, 'bias': False}}}
  assert optim.weight_decay_mask([1, 2]) == [True, True]


def _nfnet_like_tree(seed=0):
  """A small Haiku-style tree with the NFNet path conventions."""
  rng = np.random.default_rng(seed)
  normal = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return {
      'NFNet/~/stem_conv0': {'w': normal(3, 3, 3, 4), 'gain': jnp.ones(4),
                             'bias': jnp.zeros(4)},
      'NFNet/~/nf_block': {'skip_gain': jnp.zeros(())},
      'NFNet/~/nf_block/~/squeeze_excite/~/linear': {
          'w': normal(4, 2), 'b': jnp.zeros(2)},
      'NFNet/~/linear': {'w': 0.01 * normal(4, 10), 'b': jnp.zeros(10)},
  }


_CLASSIFIER = 'NFNet/~/linear'


def _hand_sgd(params, grads_per_step, lrs, cfg, clip_classifier_bias=False):
  """NFNet optimizer by hand: AGC, + wd * p (not gains/biases), Nesterov."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  momentum = jax.tree.map(np.zeros_like, params)
  for grads, lr in zip(grads_per_step, lrs):
    for module in params:
      for name, p in params[module].items():
        g = np.asarray(grads[module][name], np.float64)
        is_bias = name in ('gain', 'skip_gain', 'bias', 'b')
        exempt = module == _CLASSIFIER and not (clip_classifier_bias
                                                and is_bias)
        if not exempt:
          g = np_agc(g, p, cfg.clipping, cfg.agc_eps)
        if not is_bias:
          g = g + cfg.weight_decay * p
        m = cfg.momentum * momentum[module][name] + g
        momentum[module][name] = m
        params[module][name] = p - lr * (g + cfg.momentum * m)
  return params


def _run_optimizer(opt, params, grads_per_step):
  state = opt.init(params)
  step = jax.jit(lambda g, s, p: opt.update(g, s, p))
  for grads in grads_per_step:
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize('clip_classifier_bias', [False, True])
def test_nfnet_optimizer_matches_hand_computation(clip_classifier_bias):
  cfg = train_optimizer.default_config()
  cfg.agc_clip_classifier_bias = clip_classifier_bias
  cfg.weight_decay = 1e-2  # Large enough to be visible in one step.
  params = _nfnet_like_tree()
  rng = np.random.default_rng(1)
  grads_per_step = [
      jax.tree.map(lambda x: jnp.asarray(
          5.0 * rng.standard_normal(x.shape), jnp.float32), params)
      for _ in range(3)]
  batch_size, warmup, total = 512, 2, 10
  opt = train_optimizer.from_config(cfg, batch_size=batch_size, total_steps=total,
                                    warmup_steps=warmup)
  peak = 0.1 * batch_size / 256
  lrs = [0.0, peak / 2, peak]  # Linear warmup over 2 steps.
  got = _run_optimizer(opt, params, grads_per_step)
  want = _hand_sgd(params, grads_per_step, lrs, cfg, clip_classifier_bias)
  for module in params:
    for name in params[module]:
      np.testing.assert_allclose(got[module][name], want[module][name],
                                 rtol=2e-5, atol=1e-7,
                                 err_msg=f'{module} {name}')
  # The classifier weight really was exempt: clipping it gives another
  # answer, so the comparison above can tell the two apart.
  g = np.asarray(grads_per_step[0][_CLASSIFIER]['w'])
  p = np.asarray(params[_CLASSIFIER]['w'])
  assert not np.allclose(np_agc(g, p, cfg.clipping, cfg.agc_eps), g,
                         rtol=0.1)


def test_weight_decay_skips_gains_and_biases():
  cfg = train_optimizer.default_config()
  params = _nfnet_like_tree()
  params['NFNet/~/stem_conv0']['gain'] = jnp.full(4, 1.5)
  params['NFNet/~/stem_conv0']['bias'] = jnp.full(4, 0.3)
  params['NFNet/~/nf_block']['skip_gain'] = jnp.asarray(0.7)
  params[_CLASSIFIER]['b'] = jnp.full(10, -0.2)
  zeros = jax.tree.map(jnp.zeros_like, params)
  opt = train_optimizer.from_config(cfg, batch_size=256, total_steps=100,
                                    warmup_steps=0)
  updates, _ = jax.jit(opt.update)(zeros, opt.init(params), params)
  lr = 0.1  # Peak at step 0 without warmup, batch 256.
  for module in params:
    for name, p in params[module].items():
      if name in ('gain', 'skip_gain', 'bias', 'b'):
        expected = np.zeros(p.shape)
      else:
        # Nesterov, first step: update = -lr * (d + momentum * d).
        expected = -lr * (1 + cfg.momentum) * cfg.weight_decay * np.asarray(p)
      np.testing.assert_allclose(updates[module][name], expected, rtol=1e-5,
                                 atol=1e-12, err_msg=f'{module} {name}')


def test_clipping_zero_is_plain_sgd():
  cfg = train_optimizer.default_config()
  cfg.clipping = 0.0
  cfg.weight_decay = 0.0
  params = _nfnet_like_tree()
  grads = jax.tree.map(lambda x: jnp.full(x.shape, 50.0), params)
  opt = train_optimizer.from_config(cfg, batch_size=256, total_steps=10,
                                    warmup_steps=0)
  updates, _ = opt.update(grads, opt.init(params), params)
  for got, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
    np.testing.assert_allclose(got, -0.1 * 1.9 * np.asarray(g), rtol=1e-6)


def test_warmup_cosine_schedule_matches_formula():
  peak, warmup, total, end = 1.6, 5, 50, 0.0
  schedule = optim.warmup_cosine_schedule(peak, warmup, total, end)
  steps = np.arange(total + 5)
  got = np.asarray(jax.vmap(schedule)(steps))
  expected = np.where(
      steps < warmup, peak * steps / warmup,
      0.5 * peak * (1 + np.cos(np.pi * np.clip(
          (steps - warmup) / (total - warmup), 0, 1))))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert got[0] == 0.0
  np.testing.assert_allclose(got[warmup], peak, rtol=1e-6)
  np.testing.assert_allclose(got[total:], 0.0, atol=1e-6)
  assert np.all(np.diff(got[:warmup + 1]) > 0)
  assert np.all(np.diff(got[warmup:total + 1]) < 0)
  no_warmup = optim.warmup_cosine_schedule(0.5, 0, 10, 0.1)
  np.testing.assert_allclose(no_warmup(0), 0.5, rtol=1e-6)
  np.testing.assert_allclose(no_warmup(10), 0.1, rtol=1e-6)
  with pytest.raises(ValueError):
    optim.warmup_cosine_schedule(1.0, 20, 10)


def test_default_config_has_the_paper_values():
  cfg = train_optimizer.default_config()
  assert (cfg.base_lr, cfg.lr_batch_reference, cfg.momentum, cfg.nesterov,
          cfg.weight_decay, cfg.clipping, cfg.agc_eps, cfg.end_lr) == (
              0.1, 256, 0.9, True, 2e-5, 0.01, 1e-3, 0.0)
  assert train_optimizer.peak_learning_rate(cfg, 4096) == pytest.approx(1.6)
  assert train_optimizer.resolve_warmup_steps(cfg, steps_per_epoch=312.8) == 1564
  cfg.warmup_steps = 7
  assert train_optimizer.resolve_warmup_steps(cfg) == 7
  lr = train_optimizer.learning_rate_schedule(cfg, batch_size=1024, total_steps=100,
                                    warmup_steps=10)
  np.testing.assert_allclose(lr(10), 0.4, rtol=1e-6)


def test_nfnet_optimizer_rejects_out_of_range_settings():
  with pytest.raises(ValueError, match='momentum'):
    optim.nfnet_optimizer(0.1, momentum=1.5)
  with pytest.raises(ValueError, match='clipping'):
    optim.nfnet_optimizer(0.1, clipping=-1.0)


def test_config_errors():
  cfg = train_optimizer.default_config()
  with pytest.raises(ValueError, match='steps_per_epoch'):
    train_optimizer.from_config(cfg, batch_size=256, total_steps=10)
  bad = train_optimizer.default_config()
  bad.momentum = 1.5
  with pytest.raises(ValueError, match='momentum'):
    train_optimizer.from_config(bad, batch_size=256, total_steps=10,
                                warmup_steps=0)
  extra = train_optimizer.default_config()
  extra.clip_everything = True
  with pytest.raises(ValueError, match='clip_everything'):
    train_optimizer.validate_config(extra)
  with pytest.raises(TypeError):
    train_optimizer.default_config().clipping = 'strong'


def _readme_section_code():
  readme = (_REPO / 'README.md').read_text()
  section = readme.split('## Adaptive Gradient Clipping', 1)[1]
  section = section.split('\n## ', 1)[0]
  blocks = re.findall(r'```python\n(.*?)```', section, flags=re.S)
  assert blocks, 'README AGC section has no python example'
  return blocks


def test_readme_example_runs():
  namespace = {}
  exec(compile(_readme_section_code()[0], 'README.md', 'exec'), namespace)
  losses = namespace['losses']
  assert len(losses) > 1 and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]


_SHARDED_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from nfnets import optim
    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ('data',))
    rng = np.random.default_rng(0)
    shapes = {'conv_out': ((3, 3, 4, 16), P(None, None, None, 'data')),
              'conv_in': ((3, 3, 16, 4), P(None, None, 'data', None)),
              'dense': ((8, 16), P(None, 'data')),
              'bias': ((16,), P()), 'scalar': ((), P())}
    params, grads, specs = {}, {}, {}
    for name, (shape, spec) in shapes.items():
      sharding = NamedSharding(mesh, spec)
      out = shape[-1] if len(shape) > 1 else 1
      p = rng.standard_normal(shape).astype(np.float32)
      scale = 10.0 ** rng.uniform(-4, 0, size=out)
      g = (rng.standard_normal(shape)
           * (scale if len(shape) > 1 else scale[0])).astype(np.float32)
      params[name] = jax.device_put(p, sharding)
      grads[name] = jax.device_put(g.astype(jnp.bfloat16), sharding)
      specs[name] = sharding
    agc = optim.adaptive_grad_clip(0.01)
    step = jax.jit(lambda g, p: agc.update(g, agc.init(p), p)[0],
                   in_shardings=(specs, specs), out_shardings=specs)
    step(grads, params)  # Compile outside the guard.
    with jax.transfer_guard('disallow'):
      out = step(grads, params)
      jax.block_until_ready(out)
    unsharded = agc.update(jax.device_get(grads), None,
                           jax.device_get(params))[0]
    for name in shapes:
      assert out[name].sharding == specs[name], name
      assert out[name].dtype == jnp.bfloat16
      # Sharded reductions may sum in another order: allow one bf16 ulp.
      np.testing.assert_allclose(np.asarray(out[name], np.float32),
                                 np.asarray(unsharded[name], np.float32),
                                 rtol=8e-3, atol=0)
    hlo = step.lower(grads, params).as_text()
    assert 'callback' not in hlo and 'outfeed' not in hlo
    opt = optim.nfnet_optimizer(optim.warmup_cosine_schedule(0.1, 0, 10))
    state = opt.init(params)
    update = jax.jit(opt.update)
    grads32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    # The first call also moves the host-initialized state onto the mesh.
    _, state = update(grads32, state, params)
    with jax.transfer_guard('disallow'):
      updates, state = update(grads32, state, params)
      jax.block_until_ready(updates)
    for name in shapes:
      assert updates[name].sharding.is_equivalent_to(specs[name],
                                                     updates[name].ndim)
    print('OK')
''')


def test_jit_with_sharded_params_has_no_host_transfers():
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '')
                      + ' --xla_force_host_platform_device_count=8')
  env['JAX_PLATFORMS'] = 'cpu'
  result = subprocesses.run([sys.executable, '-c', _SHARDED_SCRIPT], env=env,
                          cwd=_REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.strip().endswith('OK')
