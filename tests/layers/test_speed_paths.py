"""The fast paths compute what the plain paths compute.

Grouped-convolution formulations against each other and a NumPy reference
(forward and gradients), pre-standardized inference against the normal
forward, rematerialized blocks against stored activations, and the benchmark
train step compiling once. The models are the registered ones made shallow
by constructor overrides (`_shallow`): the same blocks, fewer of them, for less
XLA compile time.
"""
import functools
import sys

import haiku as hk
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _common
from benchmarks import train_step
from nfnets import layers
from nfnets import models
from nfnets.layers import conv as conv_lib


def _numpy_grouped_conv(x, w, stride, pads, groups):
  """Direct loop reference: NHWC input, HWIO kernel, explicit padding."""
  x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  n, h, wd, c = x.shape
  kh, kw, cin_g, cout = w.shape
  cout_g = cout // groups
  ho = (h - kh) // stride + 1
  wo = (wd - kw) // stride + 1
  out = np.zeros((n, ho, wo, cout), np.float64)
  for g in range(groups):
    xg = x[..., g * cin_g:(g + 1) * cin_g]
    wg = w[..., g * cout_g:(g + 1) * cout_g]
    for i in range(kh):
      for j in range(kw):
        patch = xg[:, i:i + (ho - 1) * stride + 1:stride,
                   j:j + (wo - 1) * stride + 1:stride, :]
        out[..., g * cout_g:(g + 1) * cout_g] += patch @ wg[i, j]
  return out


_CASES = [
    # (channels in, channels out, groups, kernel, stride, padding, size)
    (12, 12, 3, 3, 1, 'SAME', 7),
    (12, 24, 3, 3, 2, 'SAME', 8),   # TF SAME pads more at the end.
    (8, 8, 2, 3, 2, 'VALID', 9),
    (8, 16, 4, 1, 1, 'SAME', 5),
    (6, 10, 1, 1, 2, 'SAME', 7),    # Dense strided 1x1: a matmul on CPU.
    (24, 24, 24, 3, 1, 'SAME', 6),  # Depthwise.
    (40, 40, 20, 3, 1, ((2, 0), (1, 1)), 6),
]


@pytest.mark.parametrize('cin,cout,groups,k,stride,padding,size', _CASES)
@pytest.mark.parametrize('impl', ['native', 'split', 'im2col', 'auto'])
def test_grouped_conv_matches_numpy(cin, cout, groups, k, stride, padding,
                                    size, impl):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, size, size, cin)).astype(np.float32)
  w = rng.standard_normal((k, k, cin // groups, cout)).astype(np.float32)
  pads = (jax.lax.padtype_to_pads((size, size), (k, k), (stride, stride),
                                  padding)
          if isinstance(padding, str) else padding)
  expected = _numpy_grouped_conv(x.astype(np.float64), w.astype(np.float64),
                                 stride, [tuple(p) for p in pads], groups)
  got = layers.grouped_conv2d(jnp.asarray(x), jnp.asarray(w),
                              stride=(stride, stride), padding=padding,
                              feature_group_count=groups, impl=impl)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('cin,cout,groups,k,stride,padding,size', _CASES)
def test_grouped_conv_gradients_agree(cin, cout, groups, k, stride, padding,
                                      size):
  kx, kw, kt = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(kx, (2, size, size, cin))
  w = jax.random.normal(kw, (k, k, cin // groups, cout))

  def loss(impl, x, w):
    y = layers.grouped_conv2d(x, w, stride=(stride, stride), padding=padding,
                              feature_group_count=groups, impl=impl)
    # A nonlinear loss so that the cotangent differs per output element.
    target = jax.random.normal(kt, y.shape)
    return jnp.sum(jnp.sin(y) * target)

  grads = {impl: jax.grad(functools.partial(loss, impl), argnums=(0, 1))(x, w)
           for impl in ('native', 'split', 'im2col', 'auto')}
  for impl in ('split', 'im2col', 'auto'):
    for got, ref in zip(grads[impl], grads['native']):
      scale = float(jnp.max(jnp.abs(ref)))
      np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * scale)


_POINTWISE_CASES = [
    # (channels in, channels out, stride, padding, size)
    (6, 10, 1, 'SAME', 7),
    (6, 10, 2, 'SAME', 7),
    (6, 10, 2, 'VALID', 8),
    (5, 7, 3, 'SAME', 10),
]


@pytest.mark.parametrize('cin,cout,stride,padding,size', _POINTWISE_CASES)
def test_matmul_pointwise_conv_matches_numpy_and_native_gradients(
    cin, cout, stride, padding, size):
  kx, kw, kt = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, (2, size, size, cin))
  w = jax.random.normal(kw, (1, 1, cin, cout))
  conv = functools.partial(layers.grouped_conv2d, stride=(stride, stride),
                           padding=padding)
  expected = _numpy_grouped_conv(np.asarray(x, np.float64),
                                 np.asarray(w, np.float64), stride,
                                 [(0, 0), (0, 0)], 1)
  got = conv(x, w, impl='matmul')
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)

  def loss(impl, x, w):
    y = conv(x, w, impl=impl)
    return jnp.sum(jnp.sin(y) * jax.random.normal(kt, y.shape))

  grads = {impl: jax.grad(functools.partial(loss, impl), argnums=(0, 1))(x, w)
           for impl in ('native', 'matmul')}
  for got, ref in zip(grads['matmul'], grads['native']):
    np.testing.assert_allclose(got, ref, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(ref))))


def _primitives(fn, *args):
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


def test_auto_runs_dense_pointwise_convs_as_matmuls_on_cpu():
  assert jax.default_backend() == 'cpu'
  x = jnp.ones((1, 6, 6, 4))
  auto = functools.partial(layers.grouped_conv2d, impl='auto')
  pointwise = _primitives(auto, x, jnp.ones((1, 1, 4, 8)))
  assert 'dot_general' in pointwise
  assert 'conv_general_dilated' not in pointwise
  # A 3x3 kernel or explicit padding keep a convolution.
  assert 'conv_general_dilated' in _primitives(auto, x, jnp.ones((3, 3, 4, 8)))
  padded = functools.partial(auto, padding=((0, 0), (0, 0)))
  assert 'conv_general_dilated' in _primitives(padded, x,
                                                jnp.ones((1, 1, 4, 8)))
  # Grouped 1x1 kernels (up to 16 groups) become one matmul per group.
  grouped = _primitives(functools.partial(auto, feature_group_count=2), x,
                        jnp.ones((1, 1, 2, 8)))
  assert 'dot_general' in grouped and 'conv_general_dilated' not in grouped


def _numpy_kernel_grad(x, dy, kernel_hw, stride, pads):
  """dW[i, j] = sum over pixels of the (i, j)-shifted input times dy."""
  x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  _, ho, wo, _ = dy.shape
  grad = np.zeros(tuple(kernel_hw) + (x.shape[-1], dy.shape[-1]))
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      patch = x[:, i:i + (ho - 1) * stride[0] + 1:stride[0],
                j:j + (wo - 1) * stride[1] + 1:stride[1], :]
      grad[i, j] = np.einsum('nhwc,nhwo->co', patch, dy)
  return grad


_ROWS_CASES = [
    # (kernel, stride, padding, input height, width)
    ((3, 3), (1, 1), 'SAME', 9, 7),
    ((3, 3), (2, 2), 'SAME', 9, 8),    # TF SAME pads more at the end.
    ((3, 3), (2, 1), 'VALID', 10, 11),
    ((1, 3), (1, 1), 'SAME', 8, 8),
    ((3, 1), (1, 2), ((2, 0), (1, 3)), 8, 9),
    ((5, 5), (2, 2), 'SAME', 12, 12),
    ((3, 3), (3, 3), ((1, 1), (1, 1)), 6, 6),
]


@pytest.mark.parametrize('kernel_hw,stride,padding,height,width', _ROWS_CASES)
def test_row_kernel_gradient_matches_numpy_and_native(kernel_hw, stride,
                                                      padding, height, width):
  kx, kw, kt = jax.random.split(jax.random.PRNGKey(5), 3)
  x = jax.random.normal(kx, (2, height, width, 16))
  w = jax.random.normal(kw, tuple(kernel_hw) + (16, 6))
  native = functools.partial(layers.grouped_conv2d, stride=stride,
                             padding=padding, impl='native')
  dy = jax.random.normal(kt, native(x, w).shape)
  pads = conv_lib._explicit_pads((height, width), kernel_hw, stride, padding)  # pylint: disable=protected-access
  expected = _numpy_kernel_grad(np.asarray(x, np.float64),
                                np.asarray(dy, np.float64), kernel_hw, stride,
                                pads)
  got = conv_lib._kernel_grad_by_rows(x, dy, kernel_hw, stride, padding)  # pylint: disable=protected-access
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5,
                             atol=1e-5 * np.abs(expected).max())

  # Through the custom VJP: the same forward, XLA's input gradient, and the
  # row kernel gradient, against XLA's own gradients.
  rows = lambda x, w: conv_lib._dense_conv_cpu(x, w, stride, padding, (1, 1))  # pylint: disable=protected-access
  np.testing.assert_array_equal(rows(x, w), native(x, w))

  def loss(conv, x, w):
    return jnp.sum(jnp.sin(conv(x, w)) * dy)

  ref = jax.grad(functools.partial(loss, native), argnums=(0, 1))(x, w)
  new = jax.grad(functools.partial(loss, rows), argnums=(0, 1))(x, w)
  for got, want in zip(new, ref):
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(want))))


def _has_1d_conv(fn, *args) -> bool:
  jaxpr = jax.make_jaxpr(fn)(*args)

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if (eqn.primitive.name == 'conv_general_dilated'
          and eqn.invars[0].aval.ndim == 3):
        return True
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        if walk(sub):
          return True
    return False

  return walk(jaxpr.jaxpr)


def test_auto_takes_spatial_kernel_gradients_by_rows_on_cpu():
  assert jax.default_backend() == 'cpu'
  x = jnp.ones((2, 6, 6, 32))

  def kernel_grad(impl, groups, x, w):
    return jax.grad(lambda w: jnp.sum(layers.grouped_conv2d(
        x, w, feature_group_count=groups, impl=impl)))(w)

  dense = jnp.ones((3, 3, 32, 8))
  assert _has_1d_conv(functools.partial(kernel_grad, 'auto', 1), x, dense)
  assert not _has_1d_conv(functools.partial(kernel_grad, 'native', 1), x,
                          dense)
  # Split groups of 16 channels take it too; groups of 8 and 1x1 kernels
  # do not.
  assert _has_1d_conv(functools.partial(kernel_grad, 'auto', 2), x,
                      jnp.ones((3, 3, 16, 8)))
  assert not _has_1d_conv(functools.partial(kernel_grad, 'auto', 4), x,
                          jnp.ones((3, 3, 8, 8)))
  assert not _has_1d_conv(functools.partial(kernel_grad, 'auto', 1), x,
                          jnp.ones((1, 1, 32, 8)))


def test_matmul_impl_rejects_other_kernels():
  with pytest.raises(ValueError, match='1x1'):
    layers.grouped_conv2d(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 4, 4)),
                          impl='matmul')


@pytest.mark.parametrize('kernel,stride,with_bias', [(1, 1, True),
                                                     (1, 2, False),
                                                     (7, 2, False),
                                                     (3, 1, True)])
def test_baseline_conv_equals_haiku_conv(kernel, stride, with_bias):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))

  def apply(cls):
    fwd = hk.transform(lambda x: cls(5, kernel, stride=stride,
                                     with_bias=with_bias, name='conv')(x))
    return fwd

  ours, theirs = apply(layers.Conv2D), apply(hk.Conv2D)
  params = theirs.init(jax.random.PRNGKey(1), x)
  if with_bias:
    params = {'conv': {**params['conv'], 'b': jnp.arange(5.0)}}
  ours_params = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree_util.tree_map(jnp.shape, ours_params) == (
      jax.tree_util.tree_map(jnp.shape, params))
  np.testing.assert_allclose(ours.apply(params, None, x),
                             theirs.apply(params, None, x),
                             rtol=1e-5, atol=1e-5)


def test_grouped_conv_rejects_unknown_impl():
  with pytest.raises(ValueError, match='impl'):
    layers.grouped_conv2d(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 2, 4)),
                          feature_group_count=2, impl='winograd')


def _shallow(name):
  """Overrides for `name`'s first two stages with 1 and 2 blocks.

  That still builds every kind of block: the first (unstrided with a
  projection, or unexpanded in NF-RegNets), a strided transition and an
  identity-shortcut block.
  """
  return dict(depth=(1, 2), widths=models.get_spec(name).widths[:2])


def _tiny_nfnet(name, conv=layers.WSConv2D, **kw):
  return models.transform(name, num_classes=10, width=0.125, drop_rate=0.0,
                          conv=conv, **_shallow(name), **kw)


@pytest.mark.slow
def test_nfnet_grouped_formulations_same_params_forward_and_grads():
  name = 'nfnet_f0'
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  labels = jnp.array([1, 7])
  ref = _tiny_nfnet(name, functools.partial(layers.WSConv2D, impl='native'))
  params, state = jax.jit(ref.init)(jax.random.PRNGKey(1), x)
  # Non-zero skip gains so every block's branch reaches the loss.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.full_like(v, 0.5) if p[-1].key == 'skip_gain' else v,
      params)

  def loss(fwd, p):
    logits, _ = fwd.apply(p, state, jax.random.PRNGKey(2), x, is_training=True)
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), labels])

  def value_and_grad(fwd):
    return jax.jit(jax.value_and_grad(functools.partial(loss, fwd)))(params)

  def shapes(tree):
    return jax.tree_util.tree_map(lambda v: v.shape, tree)

  ref_loss, ref_grads = value_and_grad(ref)
  for impl in ('split', 'im2col', 'auto'):
    fwd = _tiny_nfnet(name, functools.partial(layers.WSConv2D, impl=impl))
    # Identical parameter tree: same names and shapes.
    p2, _ = jax.eval_shape(fwd.init, jax.random.PRNGKey(1), x)
    assert shapes(p2) == shapes(params)
    got_loss, got_grads = value_and_grad(fwd)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    for path_g, ref_g in zip(jax.tree_util.tree_leaves(got_grads),
                             jax.tree_util.tree_leaves(ref_grads)):
      scale = float(np.max(np.abs(ref_g))) + 1e-12
      np.testing.assert_allclose(path_g, ref_g, rtol=0, atol=1e-4 * scale)
  # The default model uses 'auto' and so equals the native one too.
  def logits(fwd):
    return jax.jit(functools.partial(fwd.apply, is_training=False))(
        params, state, None, x)[0]

  default_logits, ref_logits = logits(_tiny_nfnet(name)), logits(ref)
  np.testing.assert_allclose(default_logits, ref_logits, rtol=1e-4, atol=1e-5)


def test_benchmark_conv_suffixes_keep_the_parameter_tree():
  # The benchmarks take registered names only: the full-depth F0, traced
  # abstractly.
  name = 'nfnet_f0'
  x = jnp.zeros((1, 32, 32, 3))

  def shapes(spec):
    fwd = _common.build_model(spec, num_classes=10, width=0.125).fwd
    params, _ = jax.eval_shape(fwd.init, jax.random.PRNGKey(0), x)
    return jax.tree_util.tree_map(lambda v: v.shape, params)

  ws = shapes(name)
  assert shapes(f'{name}@native') == ws
  # '@plain' is the WSConv2D layout without the gains.
  without_gain = {m: {k: v for k, v in p.items() if k != 'gain'}
                  for m, p in ws.items()}
  assert shapes(f'{name}@plain') == without_gain
  with pytest.raises(ValueError, match='@native'):
    _common.build_model(f'{name}@natve')


@pytest.mark.parametrize('name', ['nfnet_f0', 'nf_resnet50', 'nf_regnet_b0'])
def test_prestandardized_inference_equals_forward(name):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  fwd = models.transform(name, num_classes=10, width=0.25, **_shallow(name))
  params, state = jax.jit(fwd.init)(jax.random.PRNGKey(1), x)
  # Random gains and skip gains: standardization must fold the gain in.
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [
      jax.random.uniform(k, v.shape, minval=0.5, maxval=1.5)
      if p[-1].key in ('gain', 'skip_gain') else v
      for (p, v), k in zip(leaves, keys)])
  expected, _ = jax.jit(lambda p, x: fwd.apply(p, state, None, x,
                                               is_training=False))(params, x)

  exported = layers.standardize_conv_params(params)
  assert not any('gain' in m for m in exported.values())
  fast = models.transform(name, num_classes=10, width=0.25,
                          conv=layers.PrestandardizedConv2D, **_shallow(name))
  got, _ = jax.jit(lambda p, x: fast.apply(p, state, None, x,
                                           is_training=False))(exported, x)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  # The exported kernels are the standardized ones: zero fan-in mean.
  conv_ws = [m['w'] for m in exported.values() if 'w' in m and m['w'].ndim == 4]
  assert conv_ws
  for w in conv_ws:
    np.testing.assert_allclose(jnp.mean(w, axis=(0, 1, 2)), 0.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['nfnet_f0', 'nf_resnet50', 'nf_regnet_b0'])
def test_remat_gives_equal_loss_and_grads(name):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  kwargs = dict(num_classes=10, width=0.125, stochdepth_rate=0.5,
                **_shallow(name))
  plain = models.transform(name, **kwargs)
  remat = models.transform(name, remat=True, **kwargs)
  params, state = jax.jit(plain.init)(jax.random.PRNGKey(1), x)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.full_like(v, 0.5) if p[-1].key == 'skip_gain' else v,
      params)
  rng = jax.random.PRNGKey(2)  # Same dropout / stochastic-depth draws.

  def loss(fwd, p):
    logits, _ = fwd.apply(p, state, rng, x, is_training=True)
    return jnp.sum(jax.nn.log_softmax(logits)[:, 3])

  l0, g0 = jax.jit(jax.value_and_grad(functools.partial(loss, plain)))(params)
  l1, g1 = jax.jit(jax.value_and_grad(functools.partial(loss, remat)))(params)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The rematerialized step really recomputes: its jaxpr holds checkpoints.
  jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, remat)))(params)
  assert 'remat' in str(jaxpr) or 'checkpoint' in str(jaxpr)


@pytest.mark.slow
def test_benchmark_train_step_compiles_once_and_learns():
  # The benchmark takes registered names only: the full-depth F0.
  name = 'nfnet_f0'
  args = train_step.parse_args([
      '--model', name, '--width', '0.125', '--batch', '8',
      '--image-size', '32', '--num-classes', '10', '--steps', '1',
      '--warmup', '0', '--no-save'])
  runner = train_step._Runner(name, args)  # pylint: disable=protected-access
  first = None
  for _ in range(6):
    runner()
    if first is None:
      first = float(runner.metrics['loss'])
  assert runner.trace_count[0] == 1
  # Same batch every step: the loss must fall.
  assert float(runner.metrics['loss']) < first
  # Donated inputs: the previous parameter buffers are consumed.
  params = runner.state.params
  runner()
  leaf = jax.tree_util.tree_leaves(params)[0]
  assert leaf.is_deleted()
  # The runner's step with every part of the recipe on, and said so.
  record = runner.record([1.0])
  assert record['step'] == 'nfnets.train.step'
  assert record['step_parts'] == dict.fromkeys(train_step.STEP_PARTS, True)
  assert not jax.tree_util.tree_all(jax.tree.map(
      lambda a, b: bool((a == b).all()), runner.state.params,
      runner.state.ema_params))


def test_benchmark_parts_switch_off_in_the_runner_config():
  args = train_step.parse_args([
      '--model', 'nfnet_f0', '--batch', '8', '--image-size', '32',
      '--no-agc', '--no-ema', '--no-save'])
  config = train_step.step_config(args)
  assert train_step.step_parts(config) == {
      'agc': False, 'weight_decay': True, 'ema': False,
      'label_smoothing': True}
  assert (config.optimizer.clipping, config.training.ema_decay) == (0.0, 0.0)
  # Everything else is the runner's recipe.
  assert config.optimizer.weight_decay == 2e-5
  assert config.training.label_smoothing == 0.1


def test_vs_pytorch_says_how_to_install_torch_when_missing(monkeypatch):
  from benchmarks import vs_pytorch  # pylint: disable=g-import-not-at-top
  # A None entry makes `import torch` raise ImportError even where installed.
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(SystemExit, match='pip install torch timm'):
    vs_pytorch._torch_step(2, 32, 1)  # pylint: disable=protected-access


def test_vs_pytorch_checks_for_torch_before_starting_workers(monkeypatch):
  from benchmarks import vs_pytorch  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(vs_pytorch.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(SystemExit, match='torch is missing.*pip install torch'):
    vs_pytorch._require_torch()  # pylint: disable=protected-access
