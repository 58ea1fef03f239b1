"""Normalizer-Free building blocks: Scaled WS convolutions, gamma-scaled
activations, Squeeze-Excite and stochastic depth.

References:
  [NF-ResNet] Brock, De, Smith. "Characterizing signal propagation to close the
    performance gap in unnormalized ResNets", ICLR 2021.
  [NFNet] Brock, De, Smith, Simonyan. "High-Performance Large-Scale Image
    Recognition Without Normalization", ICML 2021.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

Activation = Callable[[jax.Array], jax.Array]

# gamma such that Var[gamma * f(x)] = 1 for x ~ N(0, 1) ([NF-ResNet] sec. 4.2),
# as released with the reference implementation. gelu is jax.nn.gelu's default
# tanh approximation, which the released NFNet weights were trained with.
GAMMAS: dict[str, float] = {
    'identity': 1.0,
    'celu': 1.270926833152771,
    'elu': 1.2716004848480225,
    'gelu': 1.7015043497085571,
    'glu': 1.8484294414520264,
    'leaky_relu': 1.70590341091156,
    'log_sigmoid': 1.9193484783172607,
    'log_softmax': 1.0002083778381348,
    'relu': 1.7139588594436646,
    'relu6': 1.7131484746932983,
    'selu': 1.0008515119552612,
    'sigmoid': 4.803835391998291,
    'silu': 1.7881293296813965,
    'soft_sign': 2.338853120803833,
    'softplus': 1.9203323125839233,
    'tanh': 1.5939117670059204,
}

_RAW_ACTIVATIONS: dict[str, Activation] = {
    'identity': lambda x: x,
    'celu': jax.nn.celu,
    'elu': jax.nn.elu,
    'gelu': jax.nn.gelu,
    'glu': jax.nn.glu,
    'leaky_relu': jax.nn.leaky_relu,
    'log_sigmoid': jax.nn.log_sigmoid,
    'log_softmax': jax.nn.log_softmax,
    'relu': jax.nn.relu,
    'relu6': jax.nn.relu6,
    'selu': jax.nn.selu,
    'sigmoid': jax.nn.sigmoid,
    'silu': jax.nn.silu,
    'soft_sign': jax.nn.soft_sign,
    'softplus': jax.nn.softplus,
    'tanh': jnp.tanh,
}
_ALIASES = {'swish': 'silu'}


def raw_activation(name: str) -> Activation:
  """Returns the unscaled activation function called `name`."""
  name = _ALIASES.get(name, name)
  if name not in _RAW_ACTIVATIONS:
    raise ValueError(
        f'Unknown activation {name!r}; known: {sorted(_RAW_ACTIVATIONS)} '
        f'(aliases: {sorted(_ALIASES)}). For another function, pass a callable '
        'to `scaled_activation` and its gamma is estimated numerically.')
  return _RAW_ACTIVATIONS[name]


def estimate_gamma(fn: Activation, *, num_samples: int = 4096,
                   dim: int = 1024, seed: int = 0) -> float:
  """Estimates the variance-preserving gain of `fn` ([NF-ResNet] sec. 4.2).

  Draws `num_samples` vectors x ~ N(0, I_dim), takes the empirical variance of
  fn(x) within each vector, and returns gamma = 1 / sqrt(mean variance), so
  that gamma * fn(x) has unit variance on unit-Gaussian inputs.

  Args:
    fn: elementwise activation (or one over the last axis, e.g. log_softmax).
    num_samples: number of Gaussian vectors.
    dim: dimension of each vector.
    seed: PRNG seed, for reproducibility.

  Returns:
    gamma as a Python float.
  """
  # Models call this while being traced (e.g. under jit); the estimate is a
  # constant, so compute it eagerly rather than staging it out.
  with jax.ensure_compile_time_eval():
    x = jax.random.normal(jax.random.PRNGKey(seed), (num_samples, dim),
                          jnp.float32)
    y = fn(x)
    return float(1.0 / jnp.sqrt(jnp.mean(jnp.var(y, axis=-1))))


def scaled_activation(activation: Union[str, Activation]) -> Activation:
  """Returns x -> gamma * f(x) for a named or user-supplied activation.

  Named activations use the reference table `GAMMAS`; a callable gets its gamma
  from `estimate_gamma` once, when this function is called.
  """
  if callable(activation):
    fn, gamma = activation, estimate_gamma(activation)
  else:
    name = _ALIASES.get(activation, activation)
    fn, gamma = raw_activation(name), GAMMAS[name]

  def scaled(x: jax.Array) -> jax.Array:
    return fn(x) * jnp.asarray(gamma, x.dtype)

  return scaled


def standardize_weight(w: jax.Array, gain: jax.Array,
                       eps: float = 1e-4) -> jax.Array:
  """Scaled Weight Standardization of an HWIO kernel ([NFNet] eq. 2).

  W_hat = gain * (W - mean(W)) / (std(W) * sqrt(N)), with the mean and the
  population variance taken over the fan-in (H, W, I) of each output channel
  and N = H * W * I. As in the reference release, `eps` is a floor on N * var
  rather than a term added to it, so well-conditioned weights are unaffected.

  Args:
    w: kernel [..., I, O] (HWIO for 2-D convolutions).
    gain: per-output-channel gain [O].
    eps: lower bound on N * var.

  Returns:
    The standardized kernel, same shape and dtype as `w`.
  """
  fan_in = int(np.prod(w.shape[:-1]))
  if jax.default_backend() == 'cpu':
    return _standardize_by_dots(w, gain, eps, fan_in)
  axes = tuple(range(w.ndim - 1))
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w, axis=axes, keepdims=True)
  scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * gain
  # Fused form of (w - mean) * scale: one multiply-add over the kernel.
  return w * scale - mean * scale


def _standardize_by_dots(w: jax.Array, gain: jax.Array, eps: float,
                         fan_in: int) -> jax.Array:
  """`standardize_weight` with its fan-in sums written as vector-matrix dots.

  The same two-pass moments (mean, then the mean square of the centred
  kernel). XLA's CPU backend reduces a [fan_in, O] kernel over its major axis
  slowly, above all in the backward pass (about 10x slower than these dots
  for a 1536 x 3072 kernel), and the backward pass of the sums written as
  dots is outer products rather than reductions.
  """
  # Moments in float32 whatever the compute dtype, as jnp.mean and jnp.var
  # accumulate.
  w2 = w.reshape(fan_in, w.shape[-1]).astype(jnp.float32)
  ones = jnp.full((fan_in,), 1.0 / fan_in, jnp.float32)
  dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
  centred = w2 - dot(ones, w2)
  var = dot(ones, centred * centred)
  scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * gain
  return (centred * scale).reshape(w.shape).astype(w.dtype)


GROUPED_CONV_IMPLS = ('auto', 'native', 'split', 'im2col', 'matmul')
# Above this many groups, 'auto' on CPU uses 'im2col' rather than one
# convolution per group: the per-group graph grows with the group count and so
# does its compile time, while im2col stays one batched matmul.
_MAX_SPLIT_GROUPS = 16
_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def _conv(x: jax.Array, w: jax.Array, stride, padding, rate,
          groups: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, w, window_strides=stride, padding=padding, rhs_dilation=rate,
      dimension_numbers=_NHWC_HWIO, feature_group_count=groups)


# Below this many input channels XLA's own kernel gradient is as fast or
# faster than the row formulation (measured for the 3-channel stem).
_MIN_ROWS_CHANNELS = 16


def _explicit_pads(in_hw, kernel_hw, stride, padding):
  """((top, bottom), (left, right)) for a padding string or explicit pads."""
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(in_hw, kernel_hw, stride, padding)
  return tuple(tuple(p) for p in padding)


def _kernel_grad_by_rows(x, dy, kernel_hw, stride, padding):
  """The kernel gradient of a dense 2-D convolution, as a 1-D convolution.

  dW[i, j, c, o] = sum_{n, h, w} x_pad[n, s_h h + i, s_w w + j, c] dy[n, h, w, o].
  XLA lowers this to a convolution whose contraction per kernel tap is only
  the batch (N); XLA's CPU backend runs that at a fraction of its matmul speed.
  Taking the kh row-shifted (and row-strided) copies of the input folds the
  rows into the contraction (N * Ho), leaving a 1-D convolution along the
  width whose output is the kw taps: 1.5-3x faster on CPU for the NFNet
  shapes, at the cost of kh copies of the input while it runs.
  """
  kh, kw = kernel_hw
  sh, sw = stride
  n, _, _, c = x.shape
  _, ho, wo, o = dy.shape
  pads = _explicit_pads(x.shape[1:3], kernel_hw, stride, padding)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  rows = jnp.stack(
      [jax.lax.slice_in_dim(xp, i, i + (ho - 1) * sh + 1, sh, axis=1)
       for i in range(kh)], axis=3)  # [N, Ho, Wp, kh, C]
  # Contraction over (n, h) as the feature dimension, the width as the
  # spatial one, and (i, c) as the batch.
  out = jax.lax.conv_general_dilated(
      rows.reshape(n * ho, xp.shape[2], kh * c), dy.reshape(n * ho, wo, o),
      window_strides=(1,), padding='VALID', rhs_dilation=(sw,),
      dimension_numbers=('CWN', 'IWO', 'NWC'))  # [kh * C, Wp - (wo-1)sw, O]
  return out[:, :kw].reshape(kh, c, kw, o).transpose(0, 2, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_rows(x, w, stride, padding):
  """A dense convolution whose kernel gradient is `_kernel_grad_by_rows`."""
  return _conv(x, w, stride, padding, (1, 1))


def _conv_rows_fwd(x, w, stride, padding):
  return _conv_rows(x, w, stride, padding), (x, w)


def _conv_rows_bwd(stride, padding, res, dy):
  x, w = res
  _, input_grad = jax.vjp(lambda x: _conv(x, w, stride, padding, (1, 1)), x)
  return (input_grad(dy)[0],
          _kernel_grad_by_rows(x, dy, w.shape[:2], stride, padding))


_conv_rows.defvjp(_conv_rows_fwd, _conv_rows_bwd)


def _dense_conv_cpu(x, w, stride, padding, rate):
  """XLA's dense convolution, with the row-formulated kernel gradient where
  it is faster (spatial kernels, no dilation, 16 or more input channels)."""
  if (tuple(rate) == (1, 1) and tuple(w.shape[:2]) != (1, 1)
      and w.shape[2] >= _MIN_ROWS_CHANNELS):
    if not isinstance(padding, str):
      padding = tuple(tuple(p) for p in padding)
    return _conv_rows(x, w, tuple(stride), padding)
  return _conv(x, w, stride, padding, rate)


def _split_conv(x, w, stride, padding, rate, groups, conv=_conv):
  """One dense convolution per group, concatenated along channels."""
  xs = jnp.split(x, groups, axis=-1)
  ws = jnp.split(w, groups, axis=-1)
  return jnp.concatenate(
      [conv(xg, wg, stride, padding, rate) for xg, wg in zip(xs, ws)], -1)


def _im2col_conv(x, w, stride, padding, rate, groups):
  """Shifted strided slices (patches) contracted per group with one einsum.

  The patches are built from pad + slice, whose gradients are pad + add, so the
  backward pass is two batched matmuls and no grouped convolution at all.
  """
  kh, kw, cin_g, cout = w.shape
  n, h, wd, c = x.shape
  pads = _explicit_pads(
      (h, wd), ((kh - 1) * rate[0] + 1, (kw - 1) * rate[1] + 1), stride,
      padding)
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  hp, wp = x.shape[1], x.shape[2]
  ho = (hp - (kh - 1) * rate[0] - 1) // stride[0] + 1
  wo = (wp - (kw - 1) * rate[1] - 1) // stride[1] + 1
  patches = []
  for i in range(kh):
    for j in range(kw):
      r0, c0 = i * rate[0], j * rate[1]
      patches.append(jax.lax.slice(
          x, (0, r0, c0, 0),
          (n, r0 + (ho - 1) * stride[0] + 1, c0 + (wo - 1) * stride[1] + 1, c),
          (1, stride[0], stride[1], 1)))
  # [N, Ho, Wo, kh * kw, G, I/G] against [kh * kw, G, I/G, O/G].
  p = jnp.stack(patches, axis=3).reshape(n, ho, wo, kh * kw, groups, cin_g)
  wg = w.reshape(kh * kw, cin_g, groups, cout // groups).transpose(0, 2, 1, 3)
  out = jnp.einsum('nhwkgi,kgio->nhwgo', p, wg)
  return out.reshape(n, ho, wo, cout)


def _is_pointwise(kernel_shape, padding, groups: int) -> bool:
  """Whether the convolution is a 1x1 dense one that pads nothing."""
  return (tuple(kernel_shape[:2]) == (1, 1) and groups == 1
          and isinstance(padding, str))


def _matmul_conv(x, w, stride, padding, rate, groups):
  """A 1x1 dense convolution as one matmul over the flattened pixels.

  With a 1x1 kernel, "SAME" and "VALID" pad nothing at any stride (TF pads
  max((out - 1) * s + 1 - in, 0) = 0), so a strided 1x1 convolution is the
  strided subsample of its input times the [I, O] kernel; dilation does not
  apply. The weight gradient is then one [I, NHW] x [NHW, O] matmul, which
  XLA's CPU backend runs several times faster than the equivalent
  kernel-gradient convolution.
  """
  del rate
  if not _is_pointwise(w.shape, padding, groups):
    raise ValueError('The matmul formulation takes 1x1 kernels without groups '
                     f'or explicit padding; got kernel {w.shape}, '
                     f'{groups} groups.')
  if stride != (1, 1):
    x = x[:, ::stride[0], ::stride[1], :]
  n, h, wd, c = x.shape
  out = jnp.dot(x.reshape(n * h * wd, c), w.reshape(c, w.shape[-1]))
  return out.reshape(n, h, wd, w.shape[-1])


def grouped_conv2d(inputs: jax.Array, kernel: jax.Array, *,
                   stride: Sequence[int] = (1, 1),
                   padding: Union[str, Sequence[tuple[int, int]]] = 'SAME',
                   rate: Sequence[int] = (1, 1), feature_group_count: int = 1,
                   impl: str = 'auto') -> jax.Array:
  """A (grouped) 2-D convolution, NHWC inputs and HWIO kernel [kh, kw, I/G, O].

  All formulations compute the same function with the same parameters; they
  differ only in how XLA executes them. XLA's CPU backend runs a grouped
  convolution (and above all its gradients) one to two orders of magnitude
  slower than the same work as dense convolutions or matmuls, while GPU and TPU
  backends have fast native grouped kernels.

  Args:
    inputs: [N, H, W, I].
    kernel: [kh, kw, I / G, O].
    stride: (sh, sw).
    padding: 'SAME', 'VALID' or explicit ((top, bottom), (left, right)).
    rate: kernel dilation (dh, dw).
    feature_group_count: number of groups G.
    impl: 'native' (one grouped XLA convolution), 'split' (one dense
      convolution per group, concatenated), 'im2col' (patches and a batched
      matmul), 'matmul' (1x1 dense convolutions only: one matmul over the
      pixels), or 'auto': native on accelerators; when the default backend is
      CPU, matmul for 1x1 dense convolutions with string padding, native for
      other dense ones but with the kernel gradient taken as a 1-D
      convolution over rows (when undilated with 16 or more input channels
      per group), split (the same per group) for up to 16 groups and im2col
      beyond. The explicit 'split' and 'im2col' leave dense (G = 1)
      convolutions native.

  Returns:
    [N, H', W', O].
  """
  if impl not in GROUPED_CONV_IMPLS:
    raise ValueError(f'impl must be one of {GROUPED_CONV_IMPLS}, got {impl!r}.')
  stride, rate = tuple(stride), tuple(rate)
  groups = feature_group_count
  args = (stride, padding, rate, groups)
  if impl == 'matmul':
    return _matmul_conv(inputs, kernel, *args)
  # Chosen at trace time from the default backend rather than with
  # `lax.platform_dependent`, whose cond would carry every formulation in the
  # jaxpr (and double the convolutions any jaxpr-walking cost count sees).
  on_cpu = jax.default_backend() == 'cpu'
  if (impl == 'auto' and on_cpu
      and _is_pointwise(kernel.shape, padding, groups)):
    return _matmul_conv(inputs, kernel, *args)
  if impl == 'native' or (impl == 'auto' and not on_cpu):
    return _conv(inputs, kernel, *args)
  if impl == 'auto' and groups == 1:
    return _dense_conv_cpu(inputs, kernel, stride, padding, rate)
  if groups == 1:
    return _conv(inputs, kernel, *args)
  if impl == 'split':
    return _split_conv(inputs, kernel, *args)
  if impl == 'im2col':
    return _im2col_conv(inputs, kernel, *args)
  if groups <= _MAX_SPLIT_GROUPS:
    return _split_conv(inputs, kernel, *args, conv=_dense_conv_cpu)
  return _im2col_conv(inputs, kernel, *args)


class Conv2D(hk.Conv2D):
  """`hk.Conv2D` (NHWC, same parameters and initialisers) on `grouped_conv2d`.

  Lets the normalized baselines run their convolutions in the formulation the
  NF models use on each backend, so that comparisons measure normalization
  rather than how XLA executes a convolution. Masks and `lhs_dilation` are not
  supported.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the convolution to NHWC `inputs` [N, H, W, I]; returns NHWC."""
    if self.mask is not None or self.data_format != 'NHWC':
      raise ValueError('layers.Conv2D takes NHWC inputs and no mask.')
    w_shape = tuple(self.kernel_shape) + (
        inputs.shape[-1] // self.feature_group_count, self.output_channels)
    w_init = self.w_init
    if w_init is None:
      # hk.Conv2D's default.
      w_init = hk.initializers.TruncatedNormal(
          stddev=1.0 / np.sqrt(np.prod(w_shape[:-1])))
    w = hk.get_parameter('w', w_shape, inputs.dtype, init=w_init)
    out = grouped_conv2d(inputs, w, stride=self.stride, padding=self.padding,
                         rate=self.kernel_dilation,
                         feature_group_count=self.feature_group_count)
    if self.with_bias:
      out = out + hk.get_parameter('b', (self.output_channels,), inputs.dtype,
                                   init=self.b_init)
    return out


class WSConv2D(hk.Conv2D):
  """2-D convolution with Scaled Weight Standardization, learnable gain and bias.

  Parameters: `w` [kh, kw, I / groups, O] initialised from a fan-in variance
  scaling normal (WS makes the output insensitive to this choice), `gain` [O]
  initialised to ones and `bias` [O] initialised to zeros. Padding strings follow
  TensorFlow ("SAME" pads more at the end when the total is odd), which the
  released weights rely on at stride 2. Inputs are NHWC.
  """

  def __init__(self,
               output_channels: int,
               kernel_shape: Union[int, Sequence[int]],
               stride: Union[int, Sequence[int]] = 1,
               rate: Union[int, Sequence[int]] = 1,
               padding: str = 'SAME',
               feature_group_count: int = 1,
               eps: float = 1e-4,
               name: Optional[str] = None):
    """Builds the module.

    Args:
      output_channels: number of output channels O.
      kernel_shape: kernel size, an int or (kh, kw).
      stride: stride, an int or (sh, sw).
      rate: dilation rate of the kernel.
      padding: 'SAME' or 'VALID'.
      feature_group_count: number of groups; I and O must both divide by it
        (I = O = groups gives a depthwise convolution).
      eps: floor on N * var in the standardization.
      name: module name; parameter paths depend on it.
    """
    super().__init__(output_channels=output_channels,
                     kernel_shape=kernel_shape, stride=stride, rate=rate,
                     padding=padding, with_bias=True,
                     feature_group_count=feature_group_count,
                     data_format='NHWC', name=name)
    self.eps = eps

  def standardized_kernel(self, in_channels: int,
                          dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Creates or fetches `w` and `gain` and returns the standardized kernel."""
    if in_channels % self.feature_group_count:
      raise ValueError(
          f'{self.module_name}: {in_channels} input channels do not divide '
          f'into {self.feature_group_count} groups.')
    if self.output_channels % self.feature_group_count:
      raise ValueError(
          f'{self.module_name}: {self.output_channels} output channels do not '
          f'divide into {self.feature_group_count} groups.')
    w_shape = tuple(self.kernel_shape) + (
        in_channels // self.feature_group_count, self.output_channels)
    w_init = hk.initializers.VarianceScaling(1.0, 'fan_in', 'normal')
    w = hk.get_parameter('w', w_shape, dtype, init=w_init)
    gain = hk.get_parameter('gain', (self.output_channels,), dtype,
                            init=jnp.ones)
    return standardize_weight(w, gain, self.eps)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the convolution to NHWC `inputs`; returns NHWC."""
    kernel = self.standardized_kernel(inputs.shape[-1], inputs.dtype)
    out = grouped_conv2d(inputs, kernel, stride=self.stride,
                         padding=self.padding, rate=self.kernel_dilation,
                         feature_group_count=self.feature_group_count)
    bias = hk.get_parameter('bias', (self.output_channels,), inputs.dtype,
                            init=jnp.zeros)
    return out + bias


class PrestandardizedConv2D(WSConv2D):
  """WSConv2D for weights already standardized by `standardize_conv_params`.

  Holds `w` (the standardized kernel, gain folded in) and `bias` at the same
  paths as WSConv2D, and applies them as a plain convolution: Scaled WS depends
  only on the weights, so inference need not recompute it for every batch.
  """

  def standardized_kernel(self, in_channels: int,
                          dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Fetches the exported kernel `w` [kh, kw, I / groups, O] as is."""
    w_shape = tuple(self.kernel_shape) + (
        in_channels // self.feature_group_count, self.output_channels)
    return hk.get_parameter('w', w_shape, dtype,
                            init=hk.initializers.VarianceScaling(
                                1.0, 'fan_in', 'normal'))


def standardize_conv_params(params: hk.Params, eps: float = 1e-4) -> hk.Params:
  """Exports WSConv2D parameters for `PrestandardizedConv2D`.

  Every module holding exactly {'w', 'gain', 'bias'} with a 4-D `w` (a
  WSConv2D) becomes {'w': standardize_weight(w, gain, eps), 'bias': bias};
  every other module is returned unchanged. Run it once after loading weights.

  Args:
    params: a Haiku parameter mapping, module name -> {param name: array}.
    eps: the WSConv2D `eps` the model was built with (1e-4 in all families).

  Returns:
    A new mapping with the same module names.
  """
  out = {}
  for module, leaves in params.items():
    if set(leaves) == {'w', 'gain', 'bias'} and jnp.ndim(leaves['w']) == 4:
      out[module] = {'w': standardize_weight(leaves['w'], leaves['gain'], eps),
                     'bias': leaves['bias']}
    else:
      out[module] = dict(leaves)
  return out


class SqueezeExcite(hk.Module):
  """Squeeze-and-Excite gate: mean over H, W -> linear -> ReLU -> linear -> sigmoid.

  Returns the gate [N, 1, 1, out_ch] in (0, 1); NF blocks multiply the branch by
  2 * gate so that the gate's expected value (0.5 at init) does not halve the
  signal ([NFNet] sec. 3 / appendix).
  """

  def __init__(self, in_ch: int, out_ch: int, se_ratio: float = 0.5,
               activation: Activation = jax.nn.relu,
               name: Optional[str] = None):
    """Builds the module; hidden width is max(1, int(in_ch * se_ratio))."""
    super().__init__(name=name)
    self.hidden_ch = max(1, int(in_ch * se_ratio))
    self.activation = activation
    self.fc0 = hk.Linear(self.hidden_ch, with_bias=True)
    self.fc1 = hk.Linear(out_ch, with_bias=True)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.mean(x, axis=(1, 2))  # [N, C]
    h = self.fc1(self.activation(self.fc0(h)))
    return jax.nn.sigmoid(h)[:, None, None, :]


class StochDepth(hk.Module):
  """Stochastic depth: drops the residual branch of whole examples in training.

  Each example's branch is kept with probability 1 - drop_rate. Like the
  reference release, kept branches are NOT rescaled by 1 / keep_prob unless
  `scale_by_keep=True`; at evaluation the branch passes unchanged.
  """

  def __init__(self, drop_rate: float, scale_by_keep: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')
    self.drop_rate = drop_rate
    self.scale_by_keep = scale_by_keep

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    if not is_training or self.drop_rate == 0.0:
      return x
    keep_prob = 1.0 - self.drop_rate
    r = jax.random.uniform(hk.next_rng_key(), (x.shape[0],) + (1,) *
                           (x.ndim - 1), dtype=x.dtype)
    mask = jnp.floor(keep_prob + r)  # 1 with probability keep_prob.
    if self.scale_by_keep:
      x = x / keep_prob
    return x * mask


def skip_gain(dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """The SkipInit scalar gain of a residual branch, initialised to zero."""
  return hk.get_parameter('skip_gain', (), dtype, init=jnp.zeros)


def maybe_remat(block: Callable[..., object], remat: bool,
                **static_kwargs) -> Callable[[jax.Array], object]:
  """Returns x -> block(x, **static_kwargs), rematerialized if `remat`.

  With `remat`, the block's intermediate activations are not kept for the
  backward pass but recomputed from its input (`hk.remat`, i.e.
  `jax.checkpoint`), trading about one extra forward pass of compute for
  activation memory that no longer grows with the block's internal width.
  `static_kwargs` (e.g. is_training) are closed over, not traced.
  """
  fn = functools.partial(block, **static_kwargs)
  return hk.remat(fn) if remat else fn


avg_pool_2x2 = functools.partial(hk.avg_pool, window_shape=(1, 2, 2, 1),
                                 strides=(1, 2, 2, 1), padding='SAME')
