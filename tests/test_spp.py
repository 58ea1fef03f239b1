"""Tests for the signal propagation statistics, plots and CLI."""
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets import spp
from nfnets.models import common
from nfnets.models import registry

ALPHA = 0.2
# Tiny networks on 64 px noise: stage 0 runs at 16x16 and stage 1 at 8x8,
# large enough that zero padding of the 3x3 convolutions barely lowers the
# branch variance there (it does at the 4x4 and 2x2 of the last stages).
WIDTH, SIZE, BATCH = 0.125, 64, 8


def _noise(seed=0, size=SIZE, batch=BATCH):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 3))


def _spp(short, depth, **kw):
  name, overrides = spp.resolve(short, depth)
  return spp.signal_propagation(name, _noise(), width=WIDTH, **overrides, **kw)


def _stage_slices(depths):
  bounds = np.cumsum((0,) + tuple(depths))
  return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def test_channel_stats_matches_numpy():
  x = np.random.default_rng(0).normal(0.3, 2.0, (4, 5, 6, 7)).astype(
      np.float32)
  x += np.arange(7, dtype=np.float32)  # Different channel means.
  mean_sq, var = spp.channel_stats(jnp.asarray(x))
  flat = x.reshape(-1, 7).astype(np.float64)
  np.testing.assert_allclose(mean_sq, np.mean(flat.mean(0) ** 2), rtol=1e-5)
  np.testing.assert_allclose(var, np.mean(flat.var(0)), rtol=1e-5)


def test_custom_forward_function_matches_numpy():
  # A user network whose blocks are x <- x + (0.5 x + 1): stats by hand.
  def forward(images, is_training, return_activations=False):
    del is_training
    x = hk.Conv2D(4, 1, with_bias=False, name='embed')(images)
    blocks, branches = [], []
    for _ in range(3):
      branch = 0.5 * x + 1.0
      x = x + branch
      blocks.append(x)
      branches.append(branch)
    logits = jnp.mean(x, axis=(1, 2))
    acts = {'blocks': blocks, 'branches': branches}
    return (logits, acts) if return_activations else logits

  images = _noise(size=8, batch=4)
  got = spp.signal_propagation(forward, images, rng=1)
  params, _ = hk.transform_with_state(forward).init(
      jax.random.split(jax.random.PRNGKey(1))[0], images, is_training=True)
  x = np.einsum('nhwc,co->nhwo', np.asarray(images, np.float64),
                np.asarray(params['embed']['w'][0, 0], np.float64))
  for i in range(3):
    branch = 0.5 * x + 1.0
    x = x + branch
    flat, bflat = x.reshape(-1, 4), branch.reshape(-1, 4)
    np.testing.assert_allclose(got.mean_sq[i], np.mean(flat.mean(0) ** 2),
                               rtol=1e-4)
    np.testing.assert_allclose(got.variance[i], np.mean(flat.var(0)),
                               rtol=1e-4)
    np.testing.assert_allclose(got.residual_variance[i],
                               np.mean(bflat.var(0)), rtol=1e-4)


def test_overrides_need_a_registered_name():
  with pytest.raises(TypeError, match='registered model name'):
    spp.signal_propagation(lambda x, is_training, return_activations: x,
                           _noise(size=8), width=0.5)


def test_resolve_short_and_registered_names():
  assert spp.resolve('bn_relu_conv', 600) == (
      'resnet600_bn', {'ordering': 'bn_relu_conv'})
  assert spp.resolve('nf_resnet_he', 50) == ('nf_resnet50_no_ws', {})
  assert spp.resolve('nfnet_f0', 50) == ('nfnet_f0', {})
  with pytest.raises(ValueError, match='Known models'):
    spp.resolve('resnet7', 50)


@pytest.fixture(scope='module')
def nf50():
  return _spp('nf_resnet_ws', 50)


def test_nf_resnet_variance_follows_alpha_schedule(nf50):
  depths = registry.get_spec('nf_resnet50').depth
  expected = np.array([p.expected_var for p in
                       common.block_plans(depths, ALPHA, 0.0)])
  # Stages 0 and 1 (large spatial extent): Var = 1 + k alpha^2, k counting
  # blocks since the last transition.
  first_two = slice(0, depths[0] + depths[1])
  np.testing.assert_allclose(nf50.variance[first_two], expected[first_two],
                             rtol=0.1)
  for s in _stage_slices(depths):
    var = nf50.variance[s]
    # Within a stage every block adds alpha^2 times its branch variance.
    np.testing.assert_allclose(
        np.diff(var), ALPHA ** 2 * nf50.residual_variance[s][1:], rtol=0.25,
        atol=2e-3)
  for s in _stage_slices(depths)[1:]:
    # Transitions reset the stream: it falls back to about 1 + alpha^2.
    assert nf50.variance[s.start] < nf50.variance[s.start - 1]
  assert abs(nf50.variance[depths[0]] - (1 + ALPHA ** 2)) < 0.1


def test_nf_resnet_ws_has_no_mean_shift(nf50):
  # Channel means at zero up to the sampling error of a mean over the
  # batch and space: Var / (N H W), which is largest in the 2x2 last stage.
  assert np.max(nf50.mean_sq) < 0.05
  assert np.all(nf50.mean_sq < nf50.variance)


def test_bn_relu_conv_variance_grows_linearly_within_stage():
  depths = registry.get_spec('resnet50_bn').depth
  bn = _spp('bn_relu_conv', 50)
  for s in _stage_slices(depths)[1:3]:
    var = bn.variance[s]
    k = np.arange(len(var))
    slope, intercept = np.polyfit(k, var, 1)
    fit = slope * k + intercept
    r2 = 1 - np.sum((var - fit) ** 2) / np.sum((var - var.mean()) ** 2)
    assert r2 > 0.98
    # Each block adds its branch's (BatchNorm-fixed) variance.
    np.testing.assert_allclose(slope, np.mean(bn.residual_variance[s]),
                               rtol=0.25)
    # About one unit per block, against the NF-ResNet's alpha^2 = 0.04.
    assert var[-1] - var[0] > 0.5 * (len(var) - 1)
    assert var[0] < bn.variance[s.start - 1]  # Reset at the transition.


@pytest.mark.slow
def test_he_init_nf_resnet_mean_shift_grows_with_depth():
  depths = registry.get_spec('nf_resnet101').depth
  ws, he = _spp('nf_resnet_ws', 101), _spp('nf_resnet_he', 101)
  assert np.min(he.mean_sq) > 10 * np.max(ws.mean_sq)
  # The long third stage: the squared channel mean climbs block by block.
  stage = _stage_slices(depths)[2]
  m = he.mean_sq[stage]
  slope = np.polyfit(np.arange(len(m)), m, 1)[0]
  assert slope > 0
  assert m[-1] > 1.15 * m[0]
  # In the NF-ResNet with Scaled WS it stays at the sampling-noise floor.
  assert np.max(ws.mean_sq[stage]) < 0.05


def test_unit_skip_gains_only_at_init():
  # With the zero skip gains of a fresh model passed as "trained" parameters,
  # every branch is cut off, so the stream is constant within a stage.
  name = 'nf_resnet50'
  fwd = hk.transform_with_state(registry.create(name, width=0.0625,
                                                stochdepth_rate=0.0))
  params, state = fwd.init(jax.random.PRNGKey(0), _noise(size=32),
                           is_training=True)
  got = spp.signal_propagation(name, _noise(size=32), params=params,
                               state=state, width=0.0625)
  depths = registry.get_spec(name).depth
  for s in _stage_slices(depths):
    np.testing.assert_allclose(got.variance[s], got.variance[s.start],
                               rtol=1e-6)


def test_cli_run_writes_png_and_csv(tmp_path):
  out = os.path.join(tmp_path, 'plots', 'spp.png')
  results = spp.run(['nf_resnet_ws', 'relu_bn_conv'], 50, out, width=0.0625,
                    image_size=32, batch_size=4)
  assert os.path.getsize(out) > 10_000
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  back = spp.read_csv(os.path.join(tmp_path, 'plots', 'spp.csv'))
  assert set(back) == {'nf_resnet_ws', 'relu_bn_conv'}
  for name, r in results.items():
    assert len(r) == sum(registry.get_spec('nf_resnet50').depth)
    for stat in spp.STATISTICS:
      np.testing.assert_allclose(getattr(back[name], stat),
                                 getattr(r, stat), rtol=1e-5)
