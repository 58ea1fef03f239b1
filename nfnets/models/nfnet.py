"""NFNets F0-F7 ([NFNet] Brock et al. 2021, Table 1 and appendix).

Parameter paths follow the reference release (`NFNet/~/stem_conv0`,
`NFNet/~/nf_block_1/conv1b`, `.../squeeze_excite/~/linear`, `NFNet/~/final_conv`,
`NFNet/~/linear`), so the released weights load without renaming.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import haiku as hk
import jax

from nfnets import layers
from nfnets.models import common
from nfnets.models import registry


_BASE_WIDTH = (256, 512, 1536, 1536)
_PLUS_WIDTH = (384, 768, 2048, 2048)


def _row(depth: tuple[int, ...], train_imsize: int, test_imsize: int,
         randaugment_magnitude: int, drop_rate: float,
         params_m: Optional[float] = None,
         gmacs: Optional[float] = None) -> registry.ModelSpec:
  return registry.ModelSpec(
      family='nfnet', depth=depth, widths=_BASE_WIDTH,
      train_imsize=train_imsize, test_imsize=test_imsize,
      drop_rate=drop_rate, classifier='NFNet/~/linear', params_m=params_m,
      gmacs=gmacs, randaugment_magnitude=randaugment_magnitude)


# [NFNet] Table 1: depths are [1, 2, 6, 3] * (N + 1) for FN. Columns: depth,
# train and test resolution, RandAugment magnitude, dropout, published
# parameters (millions) and inference multiply-adds at the test resolution
# (billions; for the variants the tests check).
NFNET_VARIANTS: dict[str, registry.ModelSpec] = {
    'F0': _row((1, 2, 6, 3), 192, 256, 5, 0.2, 71.5, 12.38),
    'F1': _row((2, 4, 12, 6), 224, 320, 10, 0.3, 132.6),
    'F2': _row((3, 6, 18, 9), 256, 352, 10, 0.4, 193.8),
    'F3': _row((4, 8, 24, 12), 320, 416, 15, 0.4, 254.9),
    'F4': _row((5, 10, 30, 15), 384, 512, 15, 0.5, 316.1),
    'F5': _row((6, 12, 36, 18), 416, 544, 15, 0.5, 377.2),
    'F6': _row((7, 14, 42, 21), 448, 576, 15, 0.5, 438.4, 377.28),
    'F7': _row((8, 16, 48, 24), 480, 608, 15, 0.5, 499.5),
}
# The wider "+" variants of the appendix, which publishes no counts for them.
NFNET_VARIANTS.update({
    f'{k}+': dataclasses.replace(v, widths=_PLUS_WIDTH, params_m=None,
                                 gmacs=None)
    for k, v in list(NFNET_VARIANTS.items())})


class NFBlock(hk.Module):
  """NFNet bottleneck block with two grouped 3x3 convs ([NFNet] Figure 5).

  Pre-activation: h = conv2(act(conv1b(act(conv1(act(conv0(act(x) * beta)))))));
  h = 2 * SE(h) * h; out = x' + alpha * skip_gain * stochdepth(h), where x' is x
  itself or, at a transition, a 2x2 average pool (when strided) followed by a
  1x1 conv of act(x) * beta.
  """

  def __init__(self, in_ch: int, out_ch: int, *, expansion: float = 0.5,
               se_ratio: float = 0.5, kernel_size: int = 3,
               group_size: int = 128, stride: int = 1, beta: float = 1.0,
               alpha: float = 0.2, activation: layers.Activation = jax.nn.gelu,
               conv: common.ConvFactory = layers.WSConv2D,
               stochdepth_rate: float = 0.0, use_two_convs: bool = True,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.stride, self.beta, self.alpha = stride, beta, alpha
    self.activation = activation
    self.use_two_convs = use_two_convs
    self.width, groups = common.grouped_width(int(out_ch * expansion),
                                              group_size)
    self.conv0 = conv(self.width, kernel_shape=1, name='conv0')
    self.conv1 = conv(self.width, kernel_shape=kernel_size, stride=stride,
                      feature_group_count=groups, name='conv1')
    if use_two_convs:
      self.conv1b = conv(self.width, kernel_shape=kernel_size,
                         feature_group_count=groups, name='conv1b')
    self.conv2 = conv(out_ch, kernel_shape=1, name='conv2')
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, kernel_shape=1, name='conv_shortcut')
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)
    self.stoch_depth = layers.StochDepth(stochdepth_rate)

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (block output, residual branch output), both [N, H', W', out_ch]."""
    out = self.activation(x) * self.beta
    if self.stride > 1:
      shortcut = self.conv_shortcut(layers.avg_pool_2x2(out))
    elif self.use_projection:
      shortcut = self.conv_shortcut(out)
    else:
      shortcut = x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    if self.use_two_convs:
      out = self.conv1b(self.activation(out))
    out = self.conv2(self.activation(out))
    branch = 2 * self.se(out) * out
    out = self.stoch_depth(branch, is_training)
    out = out * layers.skip_gain(out.dtype)
    return out * self.alpha + shortcut, branch


class NFNet(common.ResidualNet):
  """Normalizer-Free Network, F-series ([NFNet] sec. 5 and Table 1)."""

  def __init__(self, num_classes: int, variant: str = 'F0', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, se_ratio: float = 0.5, alpha: float = 0.2,
               stochdepth_rate: float = 0.1, drop_rate: Optional[float] = None,
               activation: Union[str, layers.Activation] = 'gelu',
               fc_init: Optional[hk.initializers.Initializer] = None,
               final_conv_mult: float = 2.0, group_size: int = 128,
               expansion: float = 0.5, use_two_convs: bool = True,
               conv: common.ConvFactory = layers.WSConv2D,
               remat: bool = False,
               name: str = 'NFNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `NFNET_VARIANTS` ('F0'..'F7', 'F0+'..'F7+').
      depth: blocks per stage, any number of stages; None takes the
        variant's.
      widths: output channels per stage (before `width`), one per stage of
        `depth`; None takes the variant's. The stem ends at half the first.
      width: multiplier on every channel count (1.0 is the published model);
        group widths shrink with it so tiny models stay valid.
      se_ratio: Squeeze-Excite hidden width as a fraction of its input.
      alpha: residual branch scale.
      stochdepth_rate: stochastic depth rate of the last block (linear in depth).
      drop_rate: dropout before the classifier; None takes the variant's.
      activation: name (gamma from the table) or a callable (gamma estimated).
      fc_init: classifier weight initializer, N(0, 0.01) by default.
      final_conv_mult: width of the final 1x1 conv relative to the last stage.
      group_size: channels per group of the 3x3 convs (at width 1.0).
      expansion: bottleneck ratio of the block's inner width to its output.
      use_two_convs: two grouped 3x3 convs per block (NFNets) or one.
      conv: convolution module factory (WSConv2D by default).
      remat: rematerialize each block in the backward pass (less activation
        memory for about one more forward pass of compute).
      name: module name.
    """
    if variant not in NFNET_VARIANTS:
      raise ValueError(f'Unknown NFNet variant {variant!r}; known: '
                       f'{sorted(NFNET_VARIANTS)}.')
    spec = NFNET_VARIANTS[variant]
    depth, widths = common.stage_layout(depth, widths, spec.depth,
                                        spec.widths)
    super().__init__(
        drop_rate=spec.drop_rate if drop_rate is None else drop_rate,
        remat=remat, name=name)
    self.num_classes = num_classes
    self.activation = layers.scaled_activation(activation)
    group_size = common.scaled_channels(group_size, width)
    ch = common.scaled_channels(widths[0] // 2, width)
    stem_widths = [common.scaled_channels(c, width) for c in (16, 32, 64)]
    self.stem_convs = [
        conv(stem_widths[0], kernel_shape=3, stride=2, name='stem_conv0'),
        conv(stem_widths[1], kernel_shape=3, stride=1, name='stem_conv1'),
        conv(stem_widths[2], kernel_shape=3, stride=1, name='stem_conv2'),
        conv(ch, kernel_shape=3, stride=2, name='stem_conv3'),
    ]
    self.plans = common.block_plans(depth, alpha, stochdepth_rate)
    self.blocks = []
    for plan in self.plans:
      out_ch = common.scaled_channels(widths[plan.stage], width)
      stride = 2 if plan.first_in_stage and plan.stage > 0 else 1
      self.blocks.append(NFBlock(
          ch, out_ch, expansion=expansion, se_ratio=se_ratio,
          group_size=group_size, stride=stride, beta=plan.beta, alpha=alpha,
          activation=self.activation, conv=conv,
          stochdepth_rate=plan.stochdepth_rate, use_two_convs=use_two_convs))
      ch = out_ch
    self.final_conv = conv(int(final_conv_mult * ch), kernel_shape=1,
                           name='final_conv')
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Four 3x3 convs, two of them strided: [N, H, W, 3] -> [N, H/4, W/4, C]."""
    del is_training
    out = x
    for i, stem_conv in enumerate(self.stem_convs):
      out = stem_conv(out if i == 0 else self.activation(out))
    return out

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """The widening final 1x1 conv, activated."""
    del is_training
    return self.activation(self.final_conv(x))


for _variant in NFNET_VARIANTS:
  registry.register(f'nfnet_{_variant.lower().replace("+", "_plus")}', NFNet,
                    NFNET_VARIANTS[_variant], variant=_variant)
