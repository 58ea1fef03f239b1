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

from nfnets.layers import conv as conv_lib

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


class WSConv2D(hk.Conv2D):
  """2-D convolution with Scaled Weight Standardization, learnable gain and bias.

  Parameters: `w` [kh, kw, I / groups, O] initialised from a fan-in variance
  scaling normal (WS makes the output insensitive to this choice), `gain` [O]
  initialised to ones (or by `gain_init`) and `bias` [O] initialised to
  zeros. Padding strings follow TensorFlow ("SAME" pads more at the end when
  the total is odd), which the released weights rely on at stride 2. Inputs
  are NHWC.
  """

  def __init__(self,
               output_channels: int,
               kernel_shape: Union[int, Sequence[int]],
               stride: Union[int, Sequence[int]] = 1,
               rate: Union[int, Sequence[int]] = 1,
               padding: str = 'SAME',
               feature_group_count: int = 1,
               eps: float = 1e-4,
               impl: str = 'auto',
               gain_init: Optional[hk.initializers.Initializer] = None,
               name: Optional[str] = None):
    """Builds the module.

    Args:
      output_channels, kernel_shape, stride, rate: as for `Conv2D` (output
        channels O, kernel size, stride and dilation, ints or pairs).
      padding: 'SAME' or 'VALID'.
      feature_group_count: number of groups; I and O must both divide by it
        (I = O = groups gives a depthwise convolution).
      eps: floor on N * var in the standardization.
      impl: how the convolution runs, one of `GROUPED_CONV_IMPLS` (see
        `grouped_conv2d`); it changes speed, not the function or parameters.
      gain_init: initializer of `gain`; None gives ones. Zeros make the conv
        output its bias (zero at init), which zero-initialises a residual
        branch ending in this conv without a separate SkipInit gain.
      name: module name; parameter paths depend on it.
    """
    conv_lib.check_impl(impl, conv_lib.GROUPED_CONV_IMPLS)
    super().__init__(output_channels=output_channels,
                     kernel_shape=kernel_shape, stride=stride, rate=rate,
                     padding=padding, with_bias=True,
                     feature_group_count=feature_group_count,
                     data_format='NHWC', name=name)
    self.eps = eps
    self.impl = impl
    self.gain_init = jnp.ones if gain_init is None else gain_init

  def _kernel_shape(self, in_channels: int) -> tuple[int, ...]:
    """[kh, kw, I / groups, O], after checking that the groups divide."""
    if in_channels % self.feature_group_count:
      raise ValueError(
          f'{self.module_name}: {in_channels} input channels do not divide '
          f'into {self.feature_group_count} groups.')
    if self.output_channels % self.feature_group_count:
      raise ValueError(
          f'{self.module_name}: {self.output_channels} output channels do not '
          f'divide into {self.feature_group_count} groups.')
    return tuple(self.kernel_shape) + (
        in_channels // self.feature_group_count, self.output_channels)

  def standardized_kernel(self, in_channels: int,
                          dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Creates or fetches `w` and `gain`; returns the standardized kernel.

    Returns:
      [kh, kw, I / groups, O] in `dtype`.
    """
    w_init = hk.initializers.VarianceScaling(1.0, 'fan_in', 'normal')
    w = hk.get_parameter('w', self._kernel_shape(in_channels), dtype,
                         init=w_init)
    gain = hk.get_parameter('gain', (self.output_channels,), dtype,
                            init=self.gain_init)
    return conv_lib.standardize_weight(w, gain, self.eps)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the convolution to NHWC `inputs` [N, H, W, I]; returns NHWC."""
    kernel = self.standardized_kernel(inputs.shape[-1], inputs.dtype)
    out = conv_lib.grouped_conv2d(
        inputs, kernel, stride=self.stride, padding=self.padding,
        rate=self.kernel_dilation,
        feature_group_count=self.feature_group_count, impl=self.impl)
    bias = hk.get_parameter('bias', (self.output_channels,), inputs.dtype,
                            init=jnp.zeros)
    return out + bias


class PrestandardizedConv2D(WSConv2D):
  """WSConv2D for weights already standardized by `standardize_conv_params`.

  Holds `w` (the standardized kernel, gain folded in) and `bias` at the same
  paths as WSConv2D, and applies them as a plain convolution: Scaled WS depends
  only on the weights, so inference need not recompute it for every batch.
  Initialised from scratch, it is a plain convolution with bias in the
  WSConv2D layout (fan-in variance scaling `w`, zero `bias`).
  """

  def standardized_kernel(self, in_channels: int,
                          dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Fetches the exported kernel `w` [kh, kw, I / groups, O] as is."""
    return hk.get_parameter('w', self._kernel_shape(in_channels), dtype,
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
      out[module] = {
          'w': conv_lib.standardize_weight(leaves['w'], leaves['gain'], eps),
          'bias': leaves['bias']}
    else:
      out[module] = dict(leaves)
  return out


class SqueezeExcite(hk.Module):
  """Squeeze-and-Excite gate: mean over H, W -> linear -> ReLU -> linear -> sigmoid.

  Returns the gate [N, 1, 1, out_ch] in (0, 1); NF blocks multiply the branch by
  2 * gate so that the gate's expected value (0.5 at init) does not halve the
  signal ([NFNet] sec. 3 / appendix). Parameters: `linear` (w [in_ch, hidden],
  b) and `linear_1` (w [hidden, out_ch], b).
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
    """Gate [N, 1, 1, out_ch] for NHWC `x` [N, H, W, in_ch]."""
    h = jnp.mean(x, axis=(1, 2))  # [N, C]
    h = self.fc1(self.activation(self.fc0(h)))
    return jax.nn.sigmoid(h)[:, None, None, :]


class StochDepth(hk.Module):
  """Stochastic depth: drops the residual branch of whole examples in training.

  Each example's branch is kept with probability 1 - drop_rate. Like the
  reference release, kept branches are not rescaled by 1 / keep_prob, so the
  branch's expected value in training is keep_prob times its value at
  evaluation, where it passes unchanged.
  """

  def __init__(self, drop_rate: float, name: Optional[str] = None):
    """Builds the module; `drop_rate` in [0, 1) is the drop probability."""
    super().__init__(name=name)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')
    self.drop_rate = drop_rate

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """`x` [N, ...] with each example zeroed with probability drop_rate."""
    if not is_training or self.drop_rate == 0.0:
      return x
    keep_prob = 1.0 - self.drop_rate
    r = jax.random.uniform(hk.next_rng_key(), (x.shape[0],) + (1,) *
                           (x.ndim - 1), dtype=x.dtype)
    mask = jnp.floor(keep_prob + r)  # 1 with probability keep_prob.
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


# Average pooling over 2x2 windows at stride 2 ("SAME"): [N, H, W, C] ->
# [N, ceil(H / 2), ceil(W / 2), C], the shortcut downsampling of NF blocks.
avg_pool_2x2 = functools.partial(hk.avg_pool, window_shape=(1, 2, 2, 1),
                                 strides=(1, 2, 2, 1), padding='SAME')
