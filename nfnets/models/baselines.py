"""Normalized ResNet baselines and the unnormalized He-initialized NF-ResNet.

Bottleneck ResNets with BatchNorm or GroupNorm in three orderings:
  'conv_bn_relu'  the original post-activation ResNet ([ResNet] He et al. 2016a,
                  "Deep residual learning for image recognition"), the ResNet-50
                  of the 25.56M parameter count and of the GroupNorm paper;
  'bn_relu_conv'  the pre-activation ResNet ([PreAct] He et al. 2016b,
                  "Identity mappings in deep residual networks");
  'relu_bn_conv'  pre-activation with the nonlinearity and the normalization
                  swapped, whose signal propagation resembles that of NF-ResNets
                  ([NF-ResNet] Brock, De, Smith 2021, Figure 4).
"bn" names the position of the normalization layer, whichever kind it is. The
two pre-activation orderings are the normalized networks of the signal
propagation plots in [NF-ResNet] Figure 1.

The GroupNorm ResNet-50 ('resnet50_gn', post-activation) is that of [GN] Wu &
He 2018 ("Group Normalization", ECCV) sec. 5.1: G = 32 groups, eps 1e-5, GN
after the projection shortcut's conv too, the stride on the 3x3 conv
(ResNet v1.5), the classifier drawn from N(0, 0.01^2), and every gamma 1
except that of the last normalization of each residual block, 0, so that
each block starts as the identity ([GN] sec. 5.1, after Goyal et al. 2017).
Its weight decay of 1e-4 also on gamma and beta is a recipe setting
(`nfnets/configs/resnet_gn.py`).

`HeConv2D` is the plain convolution that turns an NF-ResNet into the
"NF-ResNet without Scaled WS" of [NF-ResNet] Figure 2.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers
from nfnets.models import common
from nfnets.models import nf_resnet
from nfnets.models import registry
from nfnets.models import stacking as stacking_lib

ORDERINGS = ('conv_bn_relu', 'bn_relu_conv', 'relu_bn_conv')
NORMS = ('batch', 'group')

_STAGE_WIDTHS = (256, 512, 1024, 2048)
_STEM_WIDTH = 64
# Published parameter counts in millions of the post-activation ResNets
# ([ResNet] Table 1 architectures; the normalization's scale and offset are the
# same number of parameters for BatchNorm and GroupNorm).
_PARAMS_M = {'50': 25.56, '101': 44.55, '152': 60.19, '200': 64.67}
# The same depths as the NF-ResNets (He et al. 2016 Table 1 plus the 288- and
# 600-layer networks of [NF-ResNet] Figure 1), so each has a normalized twin;
# no dropout.
RESNET_VARIANTS: dict[str, registry.ModelSpec] = {
    name: registry.ModelSpec(
        family='resnet', depth=v.depth, widths=_STAGE_WIDTHS,
        train_imsize=224, test_imsize=224, drop_rate=0.0,
        classifier='ResNet/~/linear', params_m=_PARAMS_M.get(name))
    for name, v in nf_resnet.NF_RESNET_VARIANTS.items()}

# He et al. 2015: fan-in variance 2 / fan_in keeps the second moment of a
# ReLU network's activations constant with depth.
_HE_INIT = hk.initializers.VarianceScaling(2.0, 'fan_in', 'normal')

Norm = Callable[[jax.Array, bool], jax.Array]


class HeConv2D(layers.Conv2D):
  """Plain 2-D convolution with bias and a fan-in variance-scaling init.

  `w` [kh, kw, I, O] ~ N(0, scale / fan_in), `b` [O] zeros. He et al. (2015)
  choose scale = 1 / E[phi(z)^2], z ~ N(0, 1), for the activation phi before
  the layer, so that the second moment of the signal is preserved: 2 for ReLU.
  Inputs are NHWC.
  """

  def __init__(self, output_channels: int, kernel_shape: Union[int, tuple],
               stride: Union[int, tuple] = 1, rate: Union[int, tuple] = 1,
               padding: str = 'SAME', feature_group_count: int = 1,
               scale: float = 2.0, name: Optional[str] = None):
    """Builds the module; `scale` is the variance times fan-in of `w`."""
    super().__init__(
        output_channels=output_channels, kernel_shape=kernel_shape,
        stride=stride, rate=rate, padding=padding, with_bias=True,
        feature_group_count=feature_group_count,
        w_init=hk.initializers.VarianceScaling(scale, 'fan_in', 'normal'),
        data_format='NHWC', name=name)


@functools.lru_cache(maxsize=None)
def _second_moment(activation: str) -> float:
  """E[(gamma * phi(z))^2] for z ~ N(0, 1), by Monte Carlo (2^20 samples)."""
  fn = layers.scaled_activation(activation)
  # Called while a model is traced; this estimate is a Python constant.
  with jax.ensure_compile_time_eval():
    z = jax.random.normal(jax.random.PRNGKey(0), (1 << 20,), jnp.float32)
    return float(jnp.mean(fn(z) ** 2))


def he_conv_for(activation: str = 'relu') -> Callable[..., HeConv2D]:
  """A `HeConv2D` factory for NF-ResNets using the gamma-scaled `activation`.

  NF-ResNets apply gamma * phi; the He scale 1 / E[(gamma * phi(z))^2] makes
  each convolution preserve the second moment exactly as He init does for the
  unscaled phi, so the "no WS" network differs from the NF-ResNet only in its
  weights not being standardized ([NF-ResNet] sec. 4.2, Figure 2).

  Args:
    activation: a name in `layers.GAMMAS`.

  Returns:
    A callable with the `WSConv2D` constructor signature.
  """

  def factory(output_channels, kernel_shape, **kwargs) -> HeConv2D:
    scale = 1.0 / _second_moment(activation)
    return HeConv2D(output_channels, kernel_shape, scale=scale, **kwargs)

  return factory


class BatchNorm(hk.Module):
  """BatchNorm over all axes but the last, with moving statistics in state.

  Parameters `scale` [C] (ones) and `offset` [C] (zeros); state `mean` [C]
  (zeros) and `var` [C] (ones), updated as ema = decay * ema + (1 - decay) *
  batch value when training. The state exists from `init` on whatever
  `is_training` is, so a model can be initialized in evaluation mode. Under
  `jax.jit` with a batch sharded over devices the batch statistics are those of
  the global batch (XLA inserts the all-reduce). Statistics are float32.
  """

  def __init__(self, decay: float = 0.9, eps: float = 1e-5,
               scale_init: hk.initializers.Initializer = jnp.ones,
               name: Optional[str] = None):
    """Builds the layer; `scale_init` initializes gamma (ones by default)."""
    super().__init__(name=name)
    self.decay, self.eps, self.scale_init = decay, eps, scale_init

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Normalizes x [..., C]: batch statistics if training, else the moving ones."""
    c = x.shape[-1]
    scale = hk.get_parameter('scale', (c,), x.dtype, init=self.scale_init)
    offset = hk.get_parameter('offset', (c,), x.dtype, init=jnp.zeros)
    mean_ema = hk.get_state('mean', (c,), jnp.float32, init=jnp.zeros)
    var_ema = hk.get_state('var', (c,), jnp.float32, init=jnp.ones)
    if is_training:
      x32 = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axis=axes)
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      d = self.decay
      hk.set_state('mean', d * mean_ema + (1 - d) * mean)
      hk.set_state('var', d * var_ema + (1 - d) * var)
    else:
      mean, var = mean_ema, var_ema
    inv = jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)
    shift = offset.astype(jnp.float32) - mean * inv
    return (x * inv.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)


def _make_norm(kind: str, channels: int, groups: int, name: str,
               bn_decay: float, zero_init: bool = False) -> Norm:
  """A normalization layer called as norm(x, is_training).

  `zero_init` starts its gamma at 0 instead of 1.
  """
  scale_init = jnp.zeros if zero_init else jnp.ones
  if kind == 'batch':
    return BatchNorm(decay=bn_decay, scale_init=scale_init, name=name)
  # A group count that does not divide a width-multiplied channel count falls
  # back to the largest one that does (32 -> 16 for 16 channels).
  gn = hk.GroupNorm(groups=math.gcd(groups, channels), eps=1e-5,
                    scale_init=scale_init, name=name)
  return lambda x, is_training: gn(x)


class ResBlock(hk.Module):
  """Normalized bottleneck block: 1x1 -> 3x3 (strided) -> 1x1.

  The transition shortcut is a strided 1x1 convolution (followed by a norm in
  the post-activation ordering; of the normalized, activated input in the
  pre-activation orderings, as in [PreAct] and NF-ResNets). With
  `zero_init_last_norm` the block's last normalization (`norm2`, in every
  ordering) starts with gamma = 0, so the residual branch starts at zero.
  """

  def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1,
               bottleneck_ratio: float = 0.25, ordering: str = 'conv_bn_relu',
               norm: str = 'batch', groups: int = 32, bn_decay: float = 0.9,
               activation: layers.Activation = jax.nn.relu,
               zero_init_last_norm: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.ordering = ordering
    self.activation = activation
    width = common.scaled_channels(out_ch, bottleneck_ratio)
    conv = lambda ch, k, s, n: layers.Conv2D(  # pylint: disable=g-long-lambda
        ch, kernel_shape=k, stride=s, with_bias=False, w_init=_HE_INIT,
        name=n)
    self.conv0 = conv(width, 1, 1, 'conv0')
    self.conv1 = conv(width, 3, stride, 'conv1')
    self.conv2 = conv(out_ch, 1, 1, 'conv2')
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, stride, 'conv_shortcut')
    mk = lambda ch, n, zero=False: _make_norm(norm, ch, groups, n, bn_decay,
                                              zero)
    if ordering == 'conv_bn_relu':
      norm_chs = (width, width, out_ch)
      if self.use_projection:
        self.norm_shortcut = mk(out_ch, 'norm_shortcut')
    else:
      norm_chs = (in_ch, width, width)
    self.norms = [mk(ch, f'norm{i}', zero_init_last_norm and i == 2)
                  for i, ch in enumerate(norm_chs)]

  def _pre(self, i: int, x: jax.Array, is_training: bool) -> jax.Array:
    if self.ordering == 'bn_relu_conv':
      return self.activation(self.norms[i](x, is_training))
    return self.norms[i](self.activation(x), is_training)

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (block output, residual branch output), NHWC."""
    shortcut, _, branch = self.residual(x, is_training)
    if self.ordering == 'conv_bn_relu':
      return self.activation(branch + shortcut), branch
    return branch + shortcut, branch

  def residual(self, x: jax.Array, is_training: bool
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(shortcut, k, branch), NHWC: the parts a `stacking.HighOrderBlock`
    combines. k is the branch itself (no residual scale); the block output
    is shortcut + k, activated in the post-activation ordering."""
    if self.ordering == 'conv_bn_relu':
      shortcut = x
      if self.use_projection:
        shortcut = self.norm_shortcut(self.conv_shortcut(x), is_training)
      out = self.activation(self.norms[0](self.conv0(x), is_training))
      out = self.activation(self.norms[1](self.conv1(out), is_training))
      branch = self.norms[2](self.conv2(out), is_training)
      return shortcut, branch, branch
    out = self._pre(0, x, is_training)
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self._pre(1, out, is_training))
    branch = self.conv2(self._pre(2, out, is_training))
    return shortcut, branch, branch


class ResNet(common.ResidualNet):
  """Bottleneck ResNet with BatchNorm or GroupNorm, in any of `ORDERINGS`."""

  def __init__(self, num_classes: int, variant: str = '50', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, ordering: str = 'conv_bn_relu',
               norm: str = 'batch', groups: int = 32, bn_decay: float = 0.9,
               activation: str = 'relu', drop_rate: Optional[float] = None,
               fc_init: Optional[hk.initializers.Initializer] = None,
               zero_init_last_norm: Optional[bool] = None,
               remat: bool = False, stacking: str = 'euler',
               name: str = 'ResNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      depth, drop_rate, remat, name: see `common.ResidualNet`.
      variant: a key of `RESNET_VARIANTS` ('50', '101', ..., '600').
      widths, width: stage widths and their multiplier, as for
        `nf_resnet.NFResNet`.
      ordering: one of `ORDERINGS`.
      norm: 'batch' (BatchNorm; uses and updates state) or 'group'.
      groups: GroupNorm groups (reduced to a divisor of narrow layers).
      bn_decay: BatchNorm moving-average decay.
      activation: name of the (unscaled) nonlinearity.
      fc_init: classifier weight initializer, N(0, 0.01) by default.
      zero_init_last_norm: gamma = 0 in the last normalization of every
        block. None means True for GroupNorm ([GN] sec. 5.1) and False for
        BatchNorm, whose networks keep He et al.'s all-ones init (the
        normalized networks of the signal propagation plots); pass True
        to train BN and GN from the same init.
      stacking: high-order stacking scheme ([HO-ResNet], see
        `stacking.HighOrderBlock`), a name in `layers.high_order.TABLEAUX`;
        'euler' is the plain network. With s stages `depth` counts
        sub-blocks, a multiple of s per stage, and the network has the
        parameters of the plain one of that depth. In the post-activation
        ordering every stage input and the block output are activated, as
        every block's input and output are there.

    Raises:
      UnknownTableauError: an unknown `stacking`.
      StackingError: a depth that is not a multiple of the scheme's stages
        (the message gives the nearest).
    """
    if ordering not in ORDERINGS:
      raise ValueError(f'ordering must be one of {ORDERINGS}, got '
                       f'{ordering!r}.')
    if norm not in NORMS:
      raise ValueError(f'norm must be one of {NORMS}, got {norm!r}.')
    super().__init__(RESNET_VARIANTS, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    self.ordering = ordering
    self.activation = layers.raw_activation(activation)
    if zero_init_last_norm is None:
      zero_init_last_norm = norm == 'group'

    ch = common.scaled_channels(_STEM_WIDTH, width)
    self.initial_conv = layers.Conv2D(ch, kernel_shape=7, stride=2,
                                      with_bias=False, w_init=_HE_INIT,
                                      name='initial_conv')
    mk = lambda c, n: _make_norm(norm, c, groups, n, bn_decay)
    # Post-activation normalizes the stem; pre-activation leaves that to the
    # first block and normalizes the last block's output instead ([PreAct]).
    if ordering == 'conv_bn_relu':
      self.initial_norm = mk(ch, 'initial_norm')
    tableau = stacking_lib.resolve_stacking(stacking, self.depth)
    sub_blocks = []
    for stage, num_blocks in enumerate(self.depth):
      out_ch = common.scaled_channels(self.widths[stage], width)
      for block in range(num_blocks):
        stride = 2 if block == 0 and stage > 0 else 1
        sub_blocks.append(ResBlock(
            ch, out_ch, stride=stride, ordering=ordering, norm=norm,
            groups=groups, bn_decay=bn_decay, activation=self.activation,
            zero_init_last_norm=zero_init_last_norm))
        ch = out_ch
    self.blocks = stacking_lib.high_order_blocks(
        sub_blocks, tableau,
        self.activation if ordering == 'conv_bn_relu' else None)
    if ordering != 'conv_bn_relu':
      self.final_norm = mk(ch, 'final_norm')
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Strided 7x7 conv and 3x3 max pool: [N, H, W, 3] -> [N, H/4, W/4, C].

    The post-activation ordering normalizes and activates before the pool.
    """
    out = self.initial_conv(x)
    if self.ordering == 'conv_bn_relu':
      out = self.activation(self.initial_norm(out, is_training))
    return hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1),
                       padding='SAME')

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Pre-activation blocks leave their sum unnormalized: finish it here."""
    if self.ordering == 'bn_relu_conv':
      return self.activation(self.final_norm(x, is_training))
    if self.ordering == 'relu_bn_conv':
      return self.final_norm(self.activation(x), is_training)
    return x


for _variant in RESNET_VARIANTS:
  registry.register(f'resnet{_variant}_bn', ResNet, RESNET_VARIANTS[_variant],
                    variant=_variant, norm='batch')
  registry.register(f'resnet{_variant}_gn', ResNet, RESNET_VARIANTS[_variant],
                    variant=_variant, norm='group')
  # HeConv2D has no WS gain, so the NF-ResNet's published count does not hold.
  registry.register(
      f'nf_resnet{_variant}_no_ws', nf_resnet.NFResNet,
      dataclasses.replace(nf_resnet.NF_RESNET_VARIANTS[_variant],
                          params_m=None),
      variant=_variant, conv=he_conv_for('relu'))
