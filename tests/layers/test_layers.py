"""Tests for nfnets.layers against NumPy references and analytic values."""
import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets import layers


def _init_apply(fn, *inputs, rng=0):
  f = hk.transform(fn)
  params = f.init(jax.random.PRNGKey(rng), *inputs)
  return params, f.apply(params, jax.random.PRNGKey(rng + 1), *inputs)


@pytest.mark.parametrize('shape', [(3, 3, 8, 16), (1, 1, 5, 7), (3, 3, 4, 12)])
def test_standardized_weight_has_zero_mean_and_fan_in_variance(shape):
  rng = np.random.default_rng(0)
  w = rng.normal(1.5, 3.0, size=shape).astype(np.float32)
  w_hat = np.asarray(layers.standardize_weight(jnp.asarray(w),
                                               jnp.ones(shape[-1])))
  fan_in = np.prod(shape[:-1])
  flat = w_hat.reshape(-1, shape[-1])
  np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(flat.var(0), 1.0 / fan_in, rtol=1e-4)
  # Independent NumPy formula in float64.
  w64 = w.astype(np.float64).reshape(-1, shape[-1])
  ref = (w64 - w64.mean(0)) / (w64.std(0) * np.sqrt(fan_in))
  np.testing.assert_allclose(flat, ref, rtol=1e-4, atol=1e-6)


def _numpy_standardize(w, gain, eps):
  """W_hat = gain * (W - mean) / sqrt(max(N * var, eps)), float64."""
  w = np.asarray(w, np.float64)
  axes = tuple(range(w.ndim - 1))
  fan_in = np.prod(w.shape[:-1])
  mean = w.mean(axes)
  var = w.var(axes)
  return np.asarray(gain, np.float64) * (w - mean) / np.sqrt(
      np.maximum(fan_in * var, eps))


# (shape, scale of w): 1x1, 3x3 dense, 3x3 with the fan-in of a grouped conv
# (I / G = 4), and weights so small that N * var < eps and the floor applies.
_STANDARDIZE_CASES = [((1, 1, 5, 7), 3.0), ((3, 3, 8, 16), 1.0),
                      ((3, 3, 4, 12), 0.5), ((3, 3, 2, 4), 1e-3)]


@pytest.mark.parametrize('impl', ['dots', 'reduce'])
@pytest.mark.parametrize('shape,scale', _STANDARDIZE_CASES)
def test_standardize_branches_match_numpy(shape, scale, impl):
  rng = np.random.default_rng(1)
  w = (scale * rng.normal(0.3, 1.0, size=shape)).astype(np.float32)
  gain = rng.uniform(0.5, 2.0, size=shape[-1]).astype(np.float32)
  eps = 1e-4
  ref = _numpy_standardize(w, gain, eps)
  flat = np.asarray(w, np.float64).reshape(-1, shape[-1])
  floored = flat.shape[0] * flat.var(0) < eps
  assert floored.all() if scale < 1e-2 else not floored.any()
  got = layers.standardize_weight(jnp.asarray(w), jnp.asarray(gain), eps,
                                  impl=impl)
  assert got.shape == shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4,
                             atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize('shape,scale', _STANDARDIZE_CASES)
def test_standardize_branches_have_the_same_gradients(shape, scale):
  kw, kg, kt = jax.random.split(jax.random.PRNGKey(0), 3)
  w = scale * (0.3 + jax.random.normal(kw, shape))
  gain = 1.0 + 0.1 * jax.random.normal(kg, shape[-1:])
  target = jax.random.normal(kt, shape)

  def grads(impl):
    def loss(w, gain):
      out = layers.standardize_weight(w, gain, impl=impl)
      return jnp.sum(jnp.sin(out) * target)
    return jax.grad(loss, (0, 1))(w, gain)

  for got, ref in zip(grads('dots'), grads('reduce')):
    np.testing.assert_allclose(got, ref, rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(ref))))


def test_standardize_auto_is_dots_on_cpu_and_rejects_unknown_impls():
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 4, 8))
  gain = jnp.ones(8)
  assert jax.default_backend() == 'cpu'
  np.testing.assert_array_equal(
      layers.standardize_weight(w, gain, impl='auto'),
      layers.standardize_weight(w, gain, impl='dots'))
  with pytest.raises(ValueError, match="'dots', 'reduce'"):
    layers.standardize_weight(w, gain, impl='dot')


@pytest.mark.parametrize('impl', ['dots', 'reduce'])
def test_standardize_bfloat16_keeps_dtype_and_float32_moments(impl):
  w = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 512, 8)) + 2.0
  gain = jnp.ones(8)
  out = layers.standardize_weight(w.astype(jnp.bfloat16), gain, impl=impl)
  assert out.dtype == jnp.bfloat16
  ref = layers.standardize_weight(w.astype(jnp.bfloat16).astype(jnp.float32),
                                  gain, impl=impl)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref,
                             atol=float(jnp.max(jnp.abs(ref))) * 1e-2)


def test_standardize_eps_is_a_floor_on_fan_in_times_variance():
  w = jnp.zeros((3, 3, 4, 2)).at[0, 0, 0, :].set(1e-5)
  gain = jnp.array([2.0, 3.0])
  out = np.asarray(layers.standardize_weight(w, gain, eps=1e-4))
  w_np = np.asarray(w).reshape(-1, 2).astype(np.float64)
  scale = np.asarray(gain) / np.sqrt(np.maximum(w_np.var(0) * 36, 1e-4))
  np.testing.assert_allclose(out.reshape(-1, 2),
                             (w_np - w_np.mean(0)) * scale, rtol=1e-5)


def test_wsconv_parameters_and_output_match_numpy_convolution():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 6, 4))
  params, y = _init_apply(
      lambda x: layers.WSConv2D(8, kernel_shape=3, name='conv')(x), x)
  p = params['conv']
  assert set(p) == {'w', 'gain', 'bias'}
  assert p['w'].shape == (3, 3, 4, 8)
  np.testing.assert_array_equal(p['gain'], np.ones(8))
  np.testing.assert_array_equal(p['bias'], np.zeros(8))
  # Fan-in variance scaling init: Var(w) ~= 1 / fan_in.
  assert abs(np.var(p['w']) * 36 - 1.0) < 0.35

  w = np.asarray(p['w'], np.float64)
  w_hat = (w - w.mean((0, 1, 2))) / (w.std((0, 1, 2)) * 6.0)
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros((2, 6, 6, 8))
  for i in range(6):
    for j in range(6):
      ref[:, i, j] = np.einsum('nhwc,hwco->no', xp[:, i:i + 3, j:j + 3], w_hat)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)


def test_wsconv_same_padding_is_tensorflow_style_at_stride_2():
  # On an even input, TF's SAME pads 0 before and 1 after for a 3x3 kernel at
  # stride 2, so output (0, 0) sees input rows/cols 0..1 only (plus padding).
  x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
  conv = hk.transform(
      lambda x: layers.WSConv2D(1, kernel_shape=3, stride=2, name='c')(x))
  params = conv.init(jax.random.PRNGKey(0), x)
  y = conv.apply(params, None, x)
  w_hat = np.asarray(layers.standardize_weight(params['c']['w'],
                                               params['c']['gain']))
  # TF-style: the input pixel (0, 0) meets kernel tap (0, 0) at output (0, 0).
  np.testing.assert_allclose(y[0, 0, 0, 0], w_hat[0, 0, 0, 0], rtol=1e-5)


@pytest.mark.parametrize('groups', [2, 4])
def test_grouped_wsconv_equals_per_group_convolutions(groups):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 8))
  params, y = _init_apply(lambda x: layers.WSConv2D(
      8, 3, feature_group_count=groups, name='c')(x), x)
  assert params['c']['w'].shape == (3, 3, 8 // groups, 8)
  pieces = []
  xs = jnp.split(x, groups, axis=-1)
  ws = jnp.split(params['c']['w'], groups, axis=-1)
  gains = jnp.split(params['c']['gain'], groups)
  for xg, wg, gg in zip(xs, ws, gains):
    pieces.append(jax.lax.conv_general_dilated(
        xg, layers.standardize_weight(wg, gg), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  np.testing.assert_allclose(y, jnp.concatenate(pieces, -1), rtol=1e-5,
                             atol=1e-5)


def test_wsconv_stride_and_dilation_shapes():
  x = jnp.ones((1, 9, 9, 3))
  _, y = _init_apply(lambda x: layers.WSConv2D(4, 3, stride=2)(x), x)
  assert y.shape == (1, 5, 5, 4)
  _, y = _init_apply(lambda x: layers.WSConv2D(4, 3, rate=2,
                                               padding='VALID')(x), x)
  assert y.shape == (1, 5, 5, 4)


def test_wsconv_rejects_indivisible_groups():
  with pytest.raises(ValueError, match='divide into 4 groups'):
    _init_apply(lambda x: layers.WSConv2D(8, 3, feature_group_count=4)(x),
                jnp.ones((1, 4, 4, 6)))


@pytest.mark.parametrize('impl', ['native', 'split', 'im2col', 'auto'])
def test_wsconv_impl_changes_neither_parameters_nor_output(impl):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 8))
  conv = lambda impl: hk.transform(lambda x: layers.WSConv2D(
      8, 3, stride=2, feature_group_count=4, impl=impl, name='c')(x))
  params = conv('native').init(jax.random.PRNGKey(1), x)
  got_params = conv(impl).init(jax.random.PRNGKey(1), x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_params, params)
  np.testing.assert_allclose(conv(impl).apply(params, None, x),
                             conv('native').apply(params, None, x),
                             rtol=1e-5, atol=1e-5)


def test_conv_impl_is_passed_through_and_validated():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 6))
  conv = lambda impl: hk.transform(
      lambda x: layers.Conv2D(4, 1, stride=2, impl=impl, name='c')(x))
  params = conv('native').init(jax.random.PRNGKey(1), x)
  assert set(params['c']) == {'w', 'b'}
  np.testing.assert_allclose(conv('matmul').apply(params, None, x),
                             conv('native').apply(params, None, x),
                             rtol=1e-5, atol=1e-6)
  # The matmul formulation takes only 1x1 kernels: the choice is honoured.
  with pytest.raises(ValueError, match='1x1 kernels'):
    hk.transform(lambda x: layers.WSConv2D(4, 3, impl='matmul')(x)).init(
        jax.random.PRNGKey(0), x)
  # Rejected when the module is built, before any input is seen.
  for module in (layers.Conv2D, layers.WSConv2D):
    with pytest.raises(ValueError, match="'native', 'split'.*Did you mean "
                                         "'im2col'"):
      hk.transform(lambda m=module: m(4, 3, impl='im2cl')).init(None)


def test_estimate_gamma_matches_relu_analytic_value():
  # For x ~ N(0, 1): Var(relu(x)) = 1/2 - 1/(2 pi).
  analytic = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
  assert layers.estimate_gamma(jax.nn.relu) == pytest.approx(analytic,
                                                             rel=0.01)
  # The released table was itself estimated numerically (0.06% off).
  assert layers.GAMMAS['relu'] == pytest.approx(analytic, rel=1e-3)


@pytest.mark.parametrize('name', sorted(layers.GAMMAS))
def test_estimate_gamma_agrees_with_table(name):
  estimated = layers.estimate_gamma(layers.raw_activation(name))
  assert estimated == pytest.approx(layers.GAMMAS[name], rel=0.01)


def test_scaled_activation_preserves_unit_variance_and_accepts_callables():
  x = jax.random.normal(jax.random.PRNGKey(1), (512, 512))
  for act in ['relu', 'gelu', 'silu', 'tanh', lambda v: jnp.abs(v) - 0.3]:
    y = layers.scaled_activation(act)(x)
    assert float(jnp.mean(jnp.var(y, axis=-1))) == pytest.approx(1.0,
                                                                 rel=0.02)
  assert layers.scaled_activation('swish')(x) is not None
  with pytest.raises(ValueError, match='Unknown activation'):
    layers.scaled_activation('relu7')


def test_gelu_gamma_uses_the_tanh_approximation():
  exact = layers.estimate_gamma(lambda v: jax.nn.gelu(v, approximate=False))
  approx = layers.estimate_gamma(jax.nn.gelu)
  # The table value is the tanh approximation's, which jax.nn.gelu defaults to.
  assert abs(approx - layers.GAMMAS['gelu']) < abs(exact - layers.GAMMAS['gelu'])


def test_squeeze_excite_matches_numpy():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 8))
  params, gate = _init_apply(lambda x: layers.SqueezeExcite(8, 8, 0.5)(x), x)
  p0 = params['squeeze_excite/~/linear']
  p1 = params['squeeze_excite/~/linear_1']
  assert p0['w'].shape == (8, 4) and p1['w'].shape == (4, 8)
  h = np.asarray(x).mean((1, 2))
  h = np.maximum(h @ p0['w'] + p0['b'], 0) @ p1['w'] + p1['b']
  ref = 1 / (1 + np.exp(-h))
  assert gate.shape == (3, 1, 1, 8)
  np.testing.assert_allclose(gate[:, 0, 0], ref, rtol=1e-5)


def test_stochastic_depth_drops_whole_examples_without_rescaling():
  x = jnp.ones((4000, 2, 2, 3))
  f = hk.transform(lambda x, t: layers.StochDepth(0.25)(x, t))
  y = f.apply({}, jax.random.PRNGKey(0), x, True)
  per_example = np.asarray(y).reshape(4000, -1)
  # Each example is entirely kept (all ones) or entirely dropped (all zeros).
  assert set(np.unique(per_example.min(1))) <= {0.0, 1.0}
  np.testing.assert_array_equal(per_example.min(1), per_example.max(1))
  assert per_example[:, 0].mean() == pytest.approx(0.75, abs=0.03)
  np.testing.assert_array_equal(f.apply({}, None, x, False), x)


def test_skip_gain_is_a_zero_scalar_parameter():
  params, out = _init_apply(lambda: layers.skip_gain())
  leaves = jax.tree_util.tree_leaves(params)
  assert len(leaves) == 1 and leaves[0].shape == () and float(out) == 0.0
