"""The mobile inverted bottleneck (MBConv) trunk of EfficientNet and MnasNet.

Both families are a strided 3x3 stem conv, stages of MBConv blocks
([MobileNetV2] Sandler et al. 2018), a 1x1 head conv, global pooling, dropout
and a linear classifier, with BatchNorm after every convolution. This module
holds what they share: the reference's channel and repeat rounding, the
per-stage block table (`Stage`), a `ModelSpec` with the compound-scaling
columns (`MobileSpec`), the block (`MBConvBlock`) and the network
(`MobileNet`), each in a BatchNorm form and a normalizer-free form.

Semantics follow the TensorFlow reference implementations of [EfficientNet]
(Tan & Le 2019) and [MnasNet] (Tan et al. 2019): TF 'SAME' padding, SE width
from the block's input channels, no expansion conv at expansion 1, a linear
(unactivated) projection, an identity residual only at stride 1 with equal
input and output widths, and drop-connect on those residual blocks with
survivors rescaled by 1 / keep probability.

The normalizer-free form ([NF-ResNet] Brock, De, Smith 2021) replaces every
conv + BatchNorm by a Scaled WS conv with gain and bias, scales activations by
their gamma, feeds each branch x * beta, adds residual branches as
x + alpha * skip_gain * branch (SkipInit: skip_gain starts at zero), and
doubles the SE gate so that its expected value (0.5 at init) does not halve
the signal ([NFNet] sec. 3).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers
from nfnets.models import baselines
from nfnets.models import common
from nfnets.models import registry

# TF reference: channels are multiples of 8.
_DIVISOR = 8
# The reference's BatchNorm: TF momentum 0.99 and epsilon 1e-3.
_BN_DECAY = 0.99
_BN_EPS = 1e-3


def round_filters(channels: float, multiplier: float = 1.0,
                  divisor: int = _DIVISOR) -> int:
  """Channels after a width multiplier, as the TF references round them.

  max(divisor, int(c * m + divisor / 2) // divisor * divisor), plus one more
  `divisor` when that falls below 0.9 * c * m (never lose more than 10%):
  round_filters(32, 1.2) == 40, round_filters(24, 0.75) == 24.
  """
  scaled = channels * multiplier
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, multiplier: float) -> int:
  """Blocks in a stage after a depth multiplier: ceil(m * repeats)."""
  return int(math.ceil(multiplier * repeats))


@dataclasses.dataclass(frozen=True)
class Stage:
  """The blocks of one stage (a row of [MnasNet] Figure 7 / [EfficientNet]
  Table 1; the stage's repeats and width are `depth` and `widths`).

  Attributes:
    kernel: depthwise kernel size.
    stride: stride of the stage's first block.
    expansion: inner width of a block relative to its input (1: no expansion
      conv, the separable conv of the first stage).
    se_ratio: Squeeze-Excite hidden width relative to the block's input
      channels; 0 for no SE.
    skip: whether blocks of the stage may have an identity residual.
  """
  kernel: int
  stride: int
  expansion: int
  se_ratio: float = 0.0
  skip: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class MobileSpec(registry.ModelSpec):
  """A `ModelSpec` with the block table and the compound-scaling columns.

  `depth` is the blocks per stage after the depth multiplier; `widths` are
  the stage widths before the width multiplier, which the network applies
  with `round_filters`.

  Attributes:
    stages: one `Stage` per entry of `depth`.
    width_multiplier: the variant's width coefficient (the constructor's
      default `width`).
    depth_multiplier: the depth coefficient `depth` was computed with.
  """
  stages: tuple[Stage, ...] = ()
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0


def normalizer_free_spec(spec: MobileSpec, module_name: str) -> MobileSpec:
  """The spec of `spec`'s network built with norm=None, named `module_name`.

  It has no published counts: Scaled WS gains and biases replace BatchNorm's
  scales and offsets one for one, and each residual block adds a skip gain.
  """
  return dataclasses.replace(
      spec, family=f'nf_{spec.family}', classifier=f'{module_name}/~/linear',
      params_m=None, gmacs=None)


def tf_conv(output_channels: int, kernel_shape: int, stride: int = 1,
            feature_group_count: int = 1,
            name: Optional[str] = None) -> layers.Conv2D:
  """A bias-free conv initialized as in the TF references, N(0, 2 / fan_out).

  The reference's depthwise kernel is [k, k, C, 1], whose fan-out is k * k:
  the fan-in of our [k, k, 1, C] grouped kernel.
  """
  mode = 'fan_in' if feature_group_count > 1 else 'fan_out'
  return layers.Conv2D(
      output_channels, kernel_shape, stride=stride, with_bias=False,
      feature_group_count=feature_group_count,
      w_init=hk.initializers.VarianceScaling(2.0, mode, 'normal'), name=name)


Norm = Callable[[jax.Array, bool], jax.Array]
NormFactory = Callable[[str], Norm]


class MBConvBlock(hk.Module):
  """Mobile inverted bottleneck: [expand 1x1] -> depthwise kxk -> [SE] -> 1x1.

  With BatchNorm (`norm` given): expand conv -> BN -> act (only when
  expansion > 1), depthwise conv (strided) -> BN -> act, SE gate, projection
  conv -> BN without activation; output x + drop_connect(branch) when
  `residual`, else the branch. Normalizer-free (`norm` None): the branch sees
  x * beta, the SE gate is doubled, and a residual output is
  x + alpha * skip_gain * drop_connect(branch).
  """

  def __init__(self, in_ch: int, out_ch: int, *, kernel: int, stride: int,
               expansion: int, se_ratio: float, residual: bool,
               activation: layers.Activation,
               se_activation: layers.Activation,
               conv: common.ConvFactory, norm: Optional[NormFactory],
               beta: float = 1.0, alpha: float = 0.2,
               drop_rate: float = 0.0, name: Optional[str] = None):
    """Builds the block.

    Args:
      in_ch: input channels.
      out_ch: output channels.
      kernel: depthwise kernel size.
      stride: depthwise stride.
      expansion: inner width = in_ch * expansion.
      se_ratio: SE hidden width = max(1, int(in_ch * se_ratio)); 0: no SE.
      residual: add the identity shortcut (needs stride 1, in_ch == out_ch).
      activation: nonlinearity after the expansion and depthwise convs.
      se_activation: nonlinearity inside SE.
      conv: convolution factory (`tf_conv` with BatchNorm, else a WS conv).
      norm: BatchNorm factory taking the module name; None: normalizer-free.
      beta: normalizer-free input scale, 1 / expected std of x.
      alpha: normalizer-free residual branch scale.
      drop_rate: drop-connect probability of a residual branch in training.
      name: module name.
    """
    super().__init__(name=name)
    if residual and (stride != 1 or in_ch != out_ch):
      raise ValueError(f'An identity residual needs stride 1 and equal widths; '
                       f'got stride {stride}, {in_ch} -> {out_ch} channels.')
    self.residual, self.activation = residual, activation
    self.beta, self.alpha, self.drop_rate = beta, alpha, drop_rate
    self.normalizer_free = norm is None
    mid = in_ch * expansion
    self.expand_conv = None
    if expansion != 1:
      self.expand_conv = conv(mid, kernel_shape=1, name='expand_conv')
    self.depthwise_conv = conv(mid, kernel_shape=kernel, stride=stride,
                               feature_group_count=mid, name='depthwise_conv')
    self.se = None
    if se_ratio > 0:
      # [EfficientNet]/[MnasNet] reference: the SE width comes from the
      # block's input channels, not from the expanded width it gates.
      self.se = layers.SqueezeExcite(in_ch, mid, se_ratio,
                                     activation=se_activation)
    self.project_conv = conv(out_ch, kernel_shape=1, name='project_conv')
    identity = lambda x, is_training: x
    make = norm or (lambda name: identity)
    self.expand_norm = make('expand_bn') if self.expand_conv else None
    self.depthwise_norm = make('depthwise_bn')
    self.project_norm = make('project_bn')
    self.stoch_depth = layers.StochDepth(drop_rate)

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (block output, residual branch), both [N, H', W', out_ch]."""
    h = x * self.beta if self.normalizer_free else x
    if self.expand_conv is not None:
      h = self.activation(self.expand_norm(self.expand_conv(h), is_training))
    h = self.activation(self.depthwise_norm(self.depthwise_conv(h),
                                            is_training))
    if self.se is not None:
      gate = self.se(h)  # [N, 1, 1, mid]
      h = h * (2 * gate if self.normalizer_free else gate)
    branch = self.project_norm(self.project_conv(h), is_training)
    if not self.residual:
      return branch, branch
    out = self.stoch_depth(branch, is_training)
    if is_training and self.drop_rate > 0:
      # The reference's drop-connect keeps the branch's expected value.
      out = out / (1.0 - self.drop_rate)
    if self.normalizer_free:
      out = out * layers.skip_gain(out.dtype) * self.alpha
    return x + out, branch


class MobileNet(common.ResidualNet):
  """Stem conv -> MBConv stages -> 1x1 head conv -> pool -> dropout -> fc.

  The trunk of the MBConv families; a family subclass passes its table and
  its head. `norm='batch'` is the published network; `norm=None` its
  normalizer-free form (see the module docstring).
  """

  def __init__(self, variants: Mapping[str, MobileSpec], variant: str,
               num_classes: int, *, depth: Optional[Sequence[int]],
               widths: Optional[Sequence[int]], width: Optional[float],
               head_channels: int, scale_head: bool,
               drop_rate: Optional[float], stochdepth_rate: float,
               activation: Union[str, layers.Activation],
               norm: Optional[str], alpha: float,
               conv: Optional[common.ConvFactory],
               fc_init: Optional[hk.initializers.Initializer],
               remat: bool, name: str):
    """Builds the network.

    Args:
      variants: the family's table, variant -> `MobileSpec`.
      variant: a key of `variants`.
      num_classes: classifier outputs.
      depth, widths, drop_rate, remat, name: see `common.ResidualNet`; the
        stages are the first len(depth) of the variant's `stages`.
      width: width multiplier, applied with `round_filters` to the stem, the
        stage widths and (if `scale_head`) the head; None takes the
        variant's.
      head_channels: output channels of the 1x1 head conv before `width`.
      scale_head: whether `width` applies to the head conv.
      stochdepth_rate: drop-connect rate of the last block, growing linearly
        with the block index from 0 at the first.
      activation: a name (see `layers.GAMMAS`) or a callable; gamma-scaled in
        the normalizer-free form; SE uses it unscaled.
      norm: 'batch' or None (normalizer-free).
      alpha: normalizer-free residual branch scale.
      conv: convolution factory; None takes `tf_conv` with BatchNorm and
        `layers.WSConv2D` without.
      fc_init: classifier weight initializer; None takes the reference's
        uniform(+-1 / sqrt(num_classes)) with BatchNorm and zeros without.

    Raises:
      ValueError: an unknown variant or norm, a non-positive width, or more
        stages than the variant's block table has.
    """
    if norm not in ('batch', None):
      raise ValueError(f"norm must be 'batch' or None (normalizer-free); got "
                       f'{norm!r}.')
    super().__init__(variants, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    spec = variants[variant]
    self.width = spec.width_multiplier if width is None else width
    if self.width <= 0:
      raise ValueError(f'width must be positive, got {self.width}.')
    if len(self.depth) > len(spec.stages):
      raise ValueError(f'{name} has {len(spec.stages)} stages; depth '
                       f'{self.depth} asks for {len(self.depth)}.')
    nf = norm is None
    raw = activation if callable(activation) else layers.raw_activation(
        activation)
    self.activation = layers.scaled_activation(activation) if nf else raw
    if conv is None:
      conv = layers.WSConv2D if nf else tf_conv
    make_norm = None if nf else (lambda n: baselines.BatchNorm(
        decay=_BN_DECAY, eps=_BN_EPS, name=n))

    ch = round_filters(32, self.width)
    self.stem_conv = conv(ch, kernel_shape=3, stride=2, name='stem_conv')
    self.stem_norm = make_norm('stem_bn') if make_norm else None
    self.blocks = []
    # Expected variance of the normalizer-free residual stream, from which
    # each block's beta follows. `common.block_plans` assumes a projected
    # shortcut at every transition; an MBConv transition has none, so its
    # output is the branch alone, of unit variance ([NF-ResNet] sec. 4.1).
    var = 1.0
    for plan in common.block_plans(self.depth, alpha, stochdepth_rate):
      stage = spec.stages[plan.stage]
      out_ch = round_filters(self.widths[plan.stage], self.width)
      stride = stage.stride if plan.first_in_stage else 1
      residual = stage.skip and stride == 1 and ch == out_ch
      self.blocks.append(MBConvBlock(
          ch, out_ch, kernel=stage.kernel, stride=stride,
          expansion=stage.expansion, se_ratio=stage.se_ratio,
          residual=residual, activation=self.activation, se_activation=raw,
          conv=conv, norm=make_norm, beta=var ** -0.5, alpha=alpha,
          drop_rate=plan.stochdepth_rate if residual else 0.0))
      var = var + alpha ** 2 if residual else 1.0
      ch = out_ch
    head = (round_filters(head_channels, self.width) if scale_head
            else head_channels)
    self.final_conv = conv(head, kernel_shape=1, name='final_conv')
    self.final_norm = make_norm('final_bn') if make_norm else None
    if fc_init is None:
      fc_init = (jnp.zeros if nf else
                 hk.initializers.VarianceScaling(1 / 3, 'fan_out', 'uniform'))
    self.fc = hk.Linear(num_classes, w_init=fc_init)

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Strided 3x3 conv, norm, act: [N, H, W, 3] -> [N, H/2, W/2, C]."""
    x = self.stem_conv(x)
    if self.stem_norm is not None:
      x = self.stem_norm(x, is_training)
    return self.activation(x)

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """1x1 head conv, norm, act: [N, H, W, C] -> [N, H, W, head]."""
    x = self.final_conv(x)
    if self.final_norm is not None:
      x = self.final_norm(x, is_training)
    return self.activation(x)
