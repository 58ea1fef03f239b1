"""The convolution backend: per-backend formulations of the same convolution
and of Scaled Weight Standardization.

Every formulation here computes the same function of the same parameters; they
differ only in how XLA executes them. XLA's CPU backend runs grouped
convolutions, kernel-gradient convolutions and major-axis reductions far
slower than the same work written as dense convolutions, matmuls or dots,
while GPU and TPU backends have fast native kernels for all of them. 'auto'
picks per backend at trace time; the explicit names exist so that tests and
benchmarks can run any formulation on any backend.

References:
  [NFNet] Brock, De, Smith, Simonyan. "High-Performance Large-Scale Image
    Recognition Without Normalization", ICML 2021.
"""
from __future__ import annotations

import difflib
import functools
from typing import Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

Padding = Union[str, Sequence[tuple[int, int]]]

GROUPED_CONV_IMPLS = ('auto', 'native', 'split', 'im2col', 'matmul')
STANDARDIZE_IMPLS = ('auto', 'dots', 'reduce')


def check_impl(impl: str, valid: Sequence[str], what: str = 'impl') -> None:
  """Raises a short ValueError if `impl` is not one of `valid`."""
  if impl in valid:
    return
  close = difflib.get_close_matches(str(impl), valid, n=1)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  raise ValueError(f'{what} must be one of {tuple(valid)}, got {impl!r}.{hint}')


def _on_cpu() -> bool:
  # Chosen at trace time from the default backend rather than with
  # `lax.platform_dependent`, whose cond would carry every formulation in the
  # jaxpr (and double the work any jaxpr-walking cost count sees).
  return jax.default_backend() == 'cpu'


# Weight standardization.


def standardize_weight(w: jax.Array, gain: jax.Array, eps: float = 1e-4,
                       impl: str = 'auto') -> jax.Array:
  """Scaled Weight Standardization of an HWIO kernel ([NFNet] eq. 2).

  W_hat = gain * (W - mean(W)) / (std(W) * sqrt(N)), with the mean and the
  population variance taken over the fan-in (H, W, I) of each output channel
  and N = H * W * I. As in the reference release, `eps` is a floor on N * var
  rather than a term added to it, so well-conditioned weights are unaffected.

  Args:
    w: kernel [..., I, O] (HWIO for 2-D convolutions).
    gain: per-output-channel gain [O].
    eps: lower bound on N * var.
    impl: 'reduce' (jnp.mean and jnp.var over the fan-in axes), 'dots' (the
      same two-pass moments as vector-matrix dots, in float32) or 'auto':
      dots when the default backend is CPU, reduce elsewhere.

  Returns:
    The standardized kernel, same shape and dtype as `w`.
  """
  check_impl(impl, STANDARDIZE_IMPLS)
  fan_in = int(np.prod(w.shape[:-1]))
  if impl == 'dots' or (impl == 'auto' and _on_cpu()):
    return _standardize_by_dots(w, gain, eps, fan_in)
  return _standardize_by_reduce(w, gain, eps, fan_in)


def _standardize_by_reduce(w: jax.Array, gain: jax.Array, eps: float,
                           fan_in: int) -> jax.Array:
  """`standardize_weight` with jnp.mean / jnp.var over the fan-in axes."""
  axes = tuple(range(w.ndim - 1))
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w, axis=axes, keepdims=True)
  scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * gain
  # Fused form of (w - mean) * scale: one multiply-add over the kernel.
  return (w * scale - mean * scale).astype(w.dtype)


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


# Convolution.

# Above this many groups, 'auto' on CPU uses 'im2col' rather than one
# convolution per group: the per-group graph grows with the group count and so
# does its compile time, while im2col stays one batched matmul.
_MAX_SPLIT_GROUPS = 16
# Below this many input channels XLA's own kernel gradient is as fast or
# faster than the row formulation (measured for the 3-channel stem).
_MIN_ROWS_CHANNELS = 16
_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def _conv(x: jax.Array, w: jax.Array, stride, padding, rate,
          groups: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, w, window_strides=stride, padding=padding, rhs_dilation=rate,
      dimension_numbers=_NHWC_HWIO, feature_group_count=groups)


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
  """A dense convolution in its fastest CPU formulation: a matmul for 1x1
  kernels with string padding, else XLA's convolution with the
  row-formulated kernel gradient where that is faster (spatial kernels, no
  dilation, 16 or more input channels)."""
  if _is_pointwise(w.shape, padding, 1):
    return _matmul_conv(x, w, stride, padding, rate)
  if (tuple(rate) == (1, 1) and tuple(w.shape[:2]) != (1, 1)
      and w.shape[2] >= _MIN_ROWS_CHANNELS):
    if not isinstance(padding, str):
      # custom_vjp's non-differentiable arguments must be hashable.
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


def _matmul_conv(x, w, stride, padding, rate, groups=1):
  """A 1x1 convolution as one matmul over the flattened pixels per group.

  With a 1x1 kernel, "SAME" and "VALID" pad nothing at any stride (TF pads
  max((out - 1) * s + 1 - in, 0) = 0), so a strided 1x1 convolution is the
  strided subsample of its input times the [I, O] kernel; dilation does not
  apply. The weight gradient is then one [I, NHW] x [NHW, O] matmul, which
  XLA's CPU backend runs several times faster than the equivalent
  kernel-gradient convolution. Grouped kernels are split into one matmul per
  group: for ShuffleNet v1's grouped 1x1 convs (2-8 groups, forward and
  backward, batch 16 on 2 CPU cores) that beat the native grouped
  convolution 3-25x, a dense convolution per group 1.1-3.7x and one batched
  einsum over the groups 1.2-2.6x.
  """
  if not _is_pointwise(w.shape, padding, 1):
    raise ValueError('The matmul formulation takes 1x1 kernels without '
                     f'explicit padding; got kernel {w.shape}, padding '
                     f'{padding!r}.')
  if groups > 1:
    return _split_conv(x, w, stride, padding, rate, groups, conv=_matmul_conv)
  if stride != (1, 1):
    x = x[:, ::stride[0], ::stride[1], :]
  n, h, wd, c = x.shape
  out = jnp.dot(x.reshape(n * h * wd, c), w.reshape(c, w.shape[-1]))
  return out.reshape(n, h, wd, w.shape[-1])


def grouped_conv2d(inputs: jax.Array, kernel: jax.Array, *,
                   stride: Sequence[int] = (1, 1),
                   padding: Padding = 'SAME',
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
      matmul), 'matmul' (1x1 convolutions with string padding only: one
      matmul over the pixels per group), or 'auto': native on accelerators;
      when the default backend is CPU, matmul for 1x1 dense convolutions
      with string padding, native for other dense ones but with the kernel
      gradient taken as a 1-D convolution over rows (when undilated with 16
      or more input channels per group), split (the same per group, so
      matmuls for 1x1 kernels) for up to 16 groups and im2col beyond. The
      explicit 'split' and 'im2col' leave dense (G = 1) convolutions native.

  Returns:
    [N, H', W', O].
  """
  check_impl(impl, GROUPED_CONV_IMPLS)
  stride, rate = tuple(stride), tuple(rate)
  groups = feature_group_count
  args = (stride, padding, rate, groups)
  if impl == 'matmul':
    return _matmul_conv(inputs, kernel, *args)
  on_cpu = _on_cpu()
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
  rather than how XLA executes a convolution. Parameters: `w` [kh, kw,
  I / groups, O] and, with `with_bias`, `b` [O]. Masks and `lhs_dilation` are
  not supported.
  """

  def __init__(self,
               output_channels: int,
               kernel_shape: Union[int, Sequence[int]],
               stride: Union[int, Sequence[int]] = 1,
               rate: Union[int, Sequence[int]] = 1,
               padding: Padding = 'SAME',
               with_bias: bool = True,
               w_init: Optional[hk.initializers.Initializer] = None,
               b_init: Optional[hk.initializers.Initializer] = None,
               data_format: str = 'NHWC',
               mask: Optional[jax.Array] = None,
               feature_group_count: int = 1,
               impl: str = 'auto',
               name: Optional[str] = None):
    """Builds the module; arguments as `hk.Conv2D`'s, plus `impl`.

    Args:
      output_channels: number of output channels O.
      kernel_shape: kernel size, an int or (kh, kw).
      stride: stride, an int or (sh, sw).
      rate: dilation rate of the kernel.
      padding: 'SAME', 'VALID' or explicit ((top, bottom), (left, right)).
      with_bias: whether to add the bias `b`.
      w_init: initialiser of `w`; hk.Conv2D's truncated normal by default.
      b_init: initialiser of `b`; zeros by default.
      data_format: must be 'NHWC'.
      mask: must be None.
      feature_group_count: number of groups.
      impl: a formulation in `GROUPED_CONV_IMPLS`, see `grouped_conv2d`.
      name: module name; parameter paths depend on it.
    """
    if mask is not None or data_format != 'NHWC':
      raise ValueError('layers.Conv2D takes NHWC inputs and no mask.')
    check_impl(impl, GROUPED_CONV_IMPLS)
    super().__init__(output_channels=output_channels,
                     kernel_shape=kernel_shape, stride=stride, rate=rate,
                     padding=padding, with_bias=with_bias, w_init=w_init,
                     b_init=b_init, data_format=data_format,
                     feature_group_count=feature_group_count, name=name)
    self.impl = impl

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the convolution to NHWC `inputs` [N, H, W, I]; returns NHWC."""
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
                         feature_group_count=self.feature_group_count,
                         impl=self.impl)
    if self.with_bias:
      out = out + hk.get_parameter('b', (self.output_channels,), inputs.dtype,
                                   init=self.b_init)
    return out
