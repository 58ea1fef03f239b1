"""ShuffleNet v1 ([ShuffleNet] Zhang et al. 2018) and v2 ([ShuffleNetV2] Ma
et al. 2018), with BatchNorm after every convolution.

Both are a 3x3 stride-2 stem conv (24 channels), a 3x3 stride-2 max pool,
three stages of [4, 8, 4] units (the first strided), [v2: a 1x1 conv,]
global average pooling and a linear classifier with bias.

v1 unit ([ShuffleNet] Figure 2): grouped 1x1 -> BN -> ReLU -> channel shuffle
-> depthwise 3x3 -> BN -> grouped 1x1 -> BN, to a quarter of the output
width inside. At stride 1 the input is added and the sum activated; at stride
2 a 3x3 average pool of the input is concatenated with the branch, which then
produces only (out - in) channels. The network's first 1x1 conv is not
grouped: its input is the 24-channel stem (sec. 3.3).

v2 unit ([ShuffleNetV2] Figure 3): at stride 1 the channels split in half, one
half passes, the other runs 1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> 1x1 ->
BN -> ReLU; at stride 2 both branches see the whole input and the passing one
becomes depthwise 3x3 (strided) -> BN -> 1x1 -> BN -> ReLU. The halves are
concatenated and shuffled with 2 groups.

Layouts follow the PyTorch references (the authors' megvii-model/
ShuffleNet-Series and torchvision), whose parameter counts these equal:
bias-free convolutions, pad 1 around 3x3 convs and pools, an average pool
that counts its zero padding, BatchNorm momentum 0.1 (decay 0.9), eps 1e-5.
`conv_impl` picks every convolution's formulation (`layers.grouped_conv2d`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers
from nfnets.models import baselines
from nfnets.models import common
from nfnets.models import registry

_DEPTH = (4, 8, 4)
# PyTorch's BatchNorm2d defaults (momentum 0.1 is a decay of 0.9).
_BN_DECAY = 0.9
_BN_EPS = 1e-5
# Both papers: a 1000-way classifier on the pooled features.
_IMAGENET_CLASSES = 1000
# He et al. 2015 for the ReLU network; BatchNorm makes the scale immaterial.
_CONV_INIT = hk.initializers.VarianceScaling(2.0, 'fan_in', 'normal')


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShuffleSpec(registry.ModelSpec):
  """A `ModelSpec` with the ShuffleNet columns.

  Attributes:
    groups: groups of v1's 1x1 convolutions (1 for v2).
    stem_width: output channels of the stem conv.
    head_channels: output channels of v2's final 1x1 conv (0: none, v1).
  """
  groups: int = 1
  stem_width: int = 24
  head_channels: int = 0


def _v1_row(groups: int, widths: tuple[int, int, int], params: int,
            paper_mmacs: float) -> ShuffleSpec:
  # The paper counts convolutions only; the registry's `gmacs`, like
  # `count_macs`, includes the classifier's C x 1000 multiply-adds.
  fc_macs = widths[-1] * _IMAGENET_CLASSES
  return ShuffleSpec(
      family='shufflenet_v1', depth=_DEPTH, widths=widths, train_imsize=224,
      test_imsize=224, drop_rate=0.0, classifier='ShuffleNetV1/~/linear',
      params_m=params / 1e6, gmacs=(paper_mmacs * 1e6 + fc_macs) / 1e9,
      groups=groups)


# [ShuffleNet] Table 1 (stage output channels at 1x per group count) and
# Table 2 (MFLOPs of the convolutions, 224 px); parameter counts are those of
# the network as built here and by the authors' code, with the classifier's
# bias (which their code leaves out: 1000 fewer).
SHUFFLENET_V1_VARIANTS: dict[str, ShuffleSpec] = {
    'g1': _v1_row(1, (144, 288, 576), 1_531_936, 143),
    'g2': _v1_row(2, (200, 400, 800), 1_733_848, 140),
    'g3': _v1_row(3, (240, 480, 960), 1_865_728, 137),
    'g4': _v1_row(4, (272, 544, 1088), 1_968_344, 133),
    'g8': _v1_row(8, (384, 768, 1536), 2_434_768, 137),
}


def _v2_row(widths: tuple[int, int, int], head: int, params: int,
            gmacs: float, drop_rate: float = 0.0) -> ShuffleSpec:
  return ShuffleSpec(
      family='shufflenet_v2', depth=_DEPTH, widths=widths, train_imsize=224,
      test_imsize=224, drop_rate=drop_rate, classifier='ShuffleNetV2/~/linear',
      params_m=params / 1e6, gmacs=gmacs, head_channels=head)


# [ShuffleNetV2] Table 5 (stage output channels and the final conv's), with
# torchvision's exact parameter counts and multiply-adds (convs and the
# classifier, 224 px). The authors' code drops out 20% of the pooled
# features of 2.0x only.
SHUFFLENET_V2_VARIANTS: dict[str, ShuffleSpec] = {
    'x0_5': _v2_row((48, 96, 192), 1024, 1_366_792, 0.0405),
    'x1_0': _v2_row((116, 232, 464), 1024, 2_278_604, 0.1449),
    'x1_5': _v2_row((176, 352, 704), 1024, 3_503_624, 0.2958),
    'x2_0': _v2_row((244, 488, 976), 2048, 7_393_996, 0.5833, 0.2),
}


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """[ShuffleNet] sec. 3.1: mixes channels across `groups` groups.

  The channels of x [..., C] are viewed as [..., groups, C / groups],
  transposed to [..., C / groups, groups] and flattened, so output channel
  j * groups + g is input channel g * (C / groups) + j: each group of the
  next grouped conv sees one channel block of every group of this one.

  Raises:
    ValueError: C not a multiple of `groups`.
  """
  *lead, c = x.shape
  if groups < 1 or c % groups:
    raise ValueError(f'Cannot shuffle {c} channels in {groups} groups.')
  return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(
      *lead, c)


def channel_unshuffle(x: jax.Array, groups: int) -> jax.Array:
  """The inverse of `channel_shuffle(., groups)`: a shuffle in C / groups."""
  c = x.shape[-1]
  if groups < 1 or c % groups:
    raise ValueError(f'Cannot unshuffle {c} channels in {groups} groups.')
  return channel_shuffle(x, c // groups)


def _pool_3x3_s2(x: jax.Array, kind: str) -> jax.Array:
  """PyTorch's 3x3 stride-2 max or average pool with padding 1, NHWC.

  [N, H, W, C] -> [N, ceil(H / 2), ceil(W / 2), C]. The max pool pads with
  -inf; the average divides by 9 everywhere, zero padding included
  (`count_include_pad`), as the references' `nn.AvgPool2d` does.
  """
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 2, 2, 1)
  # Python scalars as initial values: JAX differentiates reduce_window only
  # where it recognizes a concrete (max, -inf) or (add, 0) pair.
  if kind == 'max':
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides,
                                 pads)
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads) / 9


def _channels(channels: int, width: float, divisor: int) -> int:
  """channels * width to the nearest multiple of `divisor`, at least that."""
  return max(divisor, int(channels * width / divisor + 0.5) * divisor)


class _ConvBN(hk.Module):
  """A bias-free conv (PyTorch's symmetric padding) and its BatchNorm.

  Parameters: `conv` {w} and `bn` {scale, offset}, BN statistics in state.
  """

  def __init__(self, channels: int, kernel: int, *, stride: int = 1,
               groups: int = 1, conv_impl: str = 'auto',
               name: Optional[str] = None):
    super().__init__(name=name)
    # A string padding keeps 1x1 convs on the matmul path on CPU.
    padding = 'VALID' if kernel == 1 else ((kernel // 2, kernel // 2),) * 2
    self.conv = layers.Conv2D(
        channels, kernel, stride=stride, padding=padding, with_bias=False,
        feature_group_count=groups, w_init=_CONV_INIT, impl=conv_impl,
        name='conv')
    self.bn = baselines.BatchNorm(decay=_BN_DECAY, eps=_BN_EPS, name='bn')

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """[N, H, W, I] -> [N, H / stride, W / stride, channels], normalized."""
    return self.bn(self.conv(x), is_training)


class ShuffleV1Unit(hk.Module):
  """[ShuffleNet] Figure 2 (b) at stride 1 and (c) at stride 2."""

  def __init__(self, in_ch: int, out_ch: int, *, stride: int, groups: int,
               first_groups: int, conv_impl: str = 'auto',
               name: Optional[str] = None):
    """Builds the unit.

    Args:
      in_ch: input channels.
      out_ch: output channels; at stride 1 equal to `in_ch`.
      stride: 1 (identity shortcut, added) or 2 (pooled shortcut,
        concatenated).
      groups: groups of the 1x1 convs.
      first_groups: groups of the first 1x1 conv (1 for the network's first
        unit, whose input is the stem).
      conv_impl: formulation of the convolutions (`layers.grouped_conv2d`).
      name: module name.
    """
    super().__init__(name=name)
    if (in_ch != out_ch if stride == 1 else out_ch <= in_ch):
      raise ValueError(f'A ShuffleNet v1 unit at stride 1 keeps its width and '
                       f'at stride 2 widens it (the input is concatenated); '
                       f'got {in_ch} -> {out_ch} at stride {stride}.')
    self.stride, self.groups = stride, groups
    mid = out_ch // 4
    branch_ch = out_ch - in_ch if stride > 1 else out_ch
    self.pointwise0 = _ConvBN(mid, 1, groups=first_groups,
                              conv_impl=conv_impl, name='pointwise0')
    self.depthwise = _ConvBN(mid, 3, stride=stride, groups=mid,
                             conv_impl=conv_impl, name='depthwise')
    self.pointwise1 = _ConvBN(branch_ch, 1, groups=groups,
                              conv_impl=conv_impl, name='pointwise1')

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (output [N, H', W', out_ch], branch [N, H', W', branch])."""
    h = jax.nn.relu(self.pointwise0(x, is_training))
    h = channel_shuffle(h, self.groups)
    h = self.depthwise(h, is_training)  # No ReLU after the depthwise conv.
    branch = self.pointwise1(h, is_training)
    if self.stride == 1:
      return jax.nn.relu(x + branch), branch
    shortcut = _pool_3x3_s2(x, 'avg')
    return jax.nn.relu(jnp.concatenate([shortcut, branch], axis=-1)), branch


class ShuffleV2Unit(hk.Module):
  """[ShuffleNetV2] Figure 3 (c) at stride 1 and (d) at stride 2."""

  def __init__(self, in_ch: int, out_ch: int, *, stride: int,
               conv_impl: str = 'auto', name: Optional[str] = None):
    """Builds the unit.

    Args:
      in_ch: input channels.
      out_ch: output channels, even; at stride 1 equal to `in_ch`.
      stride: 1 (channel split) or 2 (both branches see the input).
      conv_impl: formulation of the convolutions (`layers.grouped_conv2d`).
      name: module name.
    """
    super().__init__(name=name)
    if (stride == 1 and in_ch != out_ch) or out_ch % 2:
      raise ValueError(f'A ShuffleNet v2 unit needs an even output width, '
                       f'equal to its input at stride 1; got {in_ch} -> '
                       f'{out_ch} at stride {stride}.')
    self.stride = stride
    half = out_ch // 2
    self.shortcut_depthwise = self.shortcut_pointwise = None
    if stride > 1:
      self.shortcut_depthwise = _ConvBN(in_ch, 3, stride=stride, groups=in_ch,
                                        conv_impl=conv_impl,
                                        name='shortcut_depthwise')
      self.shortcut_pointwise = _ConvBN(half, 1, conv_impl=conv_impl,
                                        name='shortcut_pointwise')
    self.pointwise0 = _ConvBN(half, 1, conv_impl=conv_impl, name='pointwise0')
    self.depthwise = _ConvBN(half, 3, stride=stride, groups=half,
                             conv_impl=conv_impl, name='depthwise')
    self.pointwise1 = _ConvBN(half, 1, conv_impl=conv_impl, name='pointwise1')

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (output [N, H', W', out_ch], branch [N, H', W', out_ch / 2])."""
    if self.stride == 1:
      shortcut, h = jnp.split(x, 2, axis=-1)
    else:
      shortcut = self.shortcut_depthwise(x, is_training)
      shortcut = jax.nn.relu(self.shortcut_pointwise(shortcut, is_training))
      h = x
    h = jax.nn.relu(self.pointwise0(h, is_training))
    h = self.depthwise(h, is_training)
    branch = jax.nn.relu(self.pointwise1(h, is_training))
    out = jnp.concatenate([shortcut, branch], axis=-1)
    return channel_shuffle(out, 2), branch


def _stages(stem_ch: int, depth: Sequence[int], stage_chs: Sequence[int],
            make: Callable[[int, int, int, int], common.Block]
            ) -> list[common.Block]:
  """Every stage's units, make(in_ch, out_ch, stride, index); the first unit
  of each stage has stride 2.

  Not a method: Haiku would scope the units' names under the method's.
  """
  units, ch = [], stem_ch
  for num_units, out_ch in zip(depth, stage_chs):
    for i in range(num_units):
      units.append(make(ch, out_ch, 2 if i == 0 else 1, len(units)))
      ch = out_ch
  return units


class _ShuffleNet(common.ResidualNet):
  """Stem conv, BN, ReLU and max pool -> units -> [head conv] -> pool -> fc.

  Subclasses build `self.blocks` with `_stages` and set `self.fc`.
  """

  def __init__(self, variants: dict[str, ShuffleSpec], variant: str, *,
               depth: Optional[Sequence[int]],
               widths: Optional[Sequence[int]], width: float,
               stem_width: Optional[int], stem_divisor: int,
               stage_divisor: int, drop_rate: Optional[float],
               conv_impl: str, remat: bool, name: str):
    """Resolves the layout and builds the stem (arguments as the families').

    Stage widths round to multiples of `stage_divisor`, the stem's to
    multiples of `stem_divisor`, after the `width` multiplier.
    """
    super().__init__(variants, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    if width <= 0:
      raise ValueError(f'width must be positive, got {width}.')
    self.spec = variants[variant]
    self.activation = jax.nn.relu
    stem = self.spec.stem_width if stem_width is None else stem_width
    self.stem_ch = _channels(stem, width, stem_divisor)
    self.stage_chs = [_channels(w, width, stage_divisor) for w in self.widths]
    self.stem_conv = _ConvBN(self.stem_ch, 3, stride=2, conv_impl=conv_impl,
                             name='stem')

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """3x3 s2 conv, BN, ReLU, 3x3 s2 max pool.

    [N, H, W, 3] -> [N, ceil(H / 4), ceil(W / 4), stem channels].
    """
    return _pool_3x3_s2(jax.nn.relu(self.stem_conv(x, is_training)), 'max')


class ShuffleNetV1(_ShuffleNet):
  """ShuffleNet v1 at 1x ([ShuffleNet] Table 1)."""

  def __init__(self, num_classes: int, variant: str = 'g3', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, groups: Optional[int] = None,
               stem_width: Optional[int] = None,
               drop_rate: Optional[float] = None, conv_impl: str = 'auto',
               fc_init: Optional[hk.initializers.Initializer] = None,
               remat: bool = False, name: str = 'ShuffleNetV1'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `SHUFFLENET_V1_VARIANTS` ('g1', 'g2', 'g3', 'g4',
        'g8').
      depth, drop_rate, remat, name: see `common.ResidualNet`.
      widths: stage output channels before `width`; None takes the
        variant's.
      width: multiplier of the stem and stage widths ([ShuffleNet] sec. 4.1
        scales all filters): stages round to multiples of 4 x groups (the
        bottleneck is a quarter of them, in whole groups), the stem to
        multiples of groups.
      groups: groups of the 1x1 convs; None takes the variant's.
      stem_width: stem conv channels before `width`; None takes 24.
      conv_impl: formulation of every convolution, see
        `layers.grouped_conv2d` ('auto' picks per backend).
      fc_init: classifier weight initializer, N(0, 0.01) by default (the
        authors' code).

    Raises:
      ValueError: an unknown variant, a bad depth/widths override, a
        non-positive width, or a stage no wider than its input.
    """
    if groups is None:
      spec = SHUFFLENET_V1_VARIANTS.get(variant)
      groups = spec.groups if spec else 1  # An unknown variant fails below.
    if groups < 1:
      raise ValueError(f'groups must be positive, got {groups}.')
    super().__init__(SHUFFLENET_V1_VARIANTS, variant, depth=depth,
                     widths=widths, width=width, stem_width=stem_width,
                     stem_divisor=groups, stage_divisor=4 * groups,
                     drop_rate=drop_rate, conv_impl=conv_impl, remat=remat,
                     name=name)
    self.groups = groups
    self.blocks = _stages(
        self.stem_ch, self.depth, self.stage_chs,
        lambda cin, cout, stride, i: ShuffleV1Unit(
            cin, cout, stride=stride, groups=groups,
            first_groups=1 if i == 0 else groups, conv_impl=conv_impl))
    self.fc = hk.Linear(num_classes, w_init=fc_init or
                        hk.initializers.RandomNormal(0.01))

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """The last unit's (activated) output is pooled as it is."""
    del is_training
    return x


class ShuffleNetV2(_ShuffleNet):
  """ShuffleNet v2 ([ShuffleNetV2] Table 5)."""

  def __init__(self, num_classes: int, variant: str = 'x1_0', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, stem_width: Optional[int] = None,
               head_channels: Optional[int] = None,
               drop_rate: Optional[float] = None, conv_impl: str = 'auto',
               fc_init: Optional[hk.initializers.Initializer] = None,
               remat: bool = False, name: str = 'ShuffleNetV2'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `SHUFFLENET_V2_VARIANTS` ('x0_5', 'x1_0', 'x1_5',
        'x2_0').
      depth, drop_rate, remat, name: see `common.ResidualNet`.
      widths: stage output channels before `width`; None takes the
        variant's.
      width: multiplier of the stem, stage and head widths (a knob for small
        models; the published sizes are variants with width 1): stages round
        to even widths (the units split them in half).
      stem_width: stem conv channels before `width`; None takes 24.
      head_channels: channels of the final 1x1 conv before `width`; None
        takes the variant's.
      conv_impl: formulation of every convolution, see
        `layers.grouped_conv2d` ('auto' picks per backend).
      fc_init: classifier weight initializer, N(0, 0.01) by default (the
        authors' code).

    Raises:
      ValueError: an unknown variant, a bad depth/widths override or a
        non-positive width.
    """
    super().__init__(SHUFFLENET_V2_VARIANTS, variant, depth=depth,
                     widths=widths, width=width, stem_width=stem_width,
                     stem_divisor=1, stage_divisor=2, drop_rate=drop_rate,
                     conv_impl=conv_impl, remat=remat, name=name)
    self.blocks = _stages(
        self.stem_ch, self.depth, self.stage_chs,
        lambda cin, cout, stride, _: ShuffleV2Unit(
            cin, cout, stride=stride, conv_impl=conv_impl))
    head = self.spec.head_channels if head_channels is None else head_channels
    self.final = _ConvBN(_channels(head, width, 1), 1, conv_impl=conv_impl,
                         name='final')
    self.fc = hk.Linear(num_classes, w_init=fc_init or
                        hk.initializers.RandomNormal(0.01))

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """1x1 conv, BN, ReLU: [N, H, W, C] -> [N, H, W, head_channels]."""
    return jax.nn.relu(self.final(x, is_training))


for _variant, _spec in SHUFFLENET_V1_VARIANTS.items():
  registry.register(f'shufflenet_v1_{_variant}', ShuffleNetV1, _spec,
                    variant=_variant)
for _variant, _spec in SHUFFLENET_V2_VARIANTS.items():
  registry.register(f'shufflenet_v2_{_variant}', ShuffleNetV2, _spec,
                    variant=_variant)
