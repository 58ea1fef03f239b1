"""NFNets F0-F7 ([NFNet] Brock et al. 2021, Table 1 and appendix).

Parameter paths follow the reference release (`NFNet/~/stem_conv0`,
`NFNet/~/nf_block_1/conv1b`, `.../squeeze_excite/~/linear`, `NFNet/~/final_conv`,
`NFNet/~/linear`), so the released weights load without renaming.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import haiku as hk

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


class NFBlock(common.NFResidualBlock):
  """NFNet bottleneck block with two grouped 3x3 convs ([NFNet] Figure 5).

  Pre-activation: h = conv2(act(conv1b(act(conv1(act(conv0(act(x) * beta)))))));
  h = 2 * SE(h) * h; out = x' + alpha * skip_gain * stochdepth(h), where x' is x
  itself or, at a transition, a 2x2 average pool (when strided) followed by a
  1x1 conv of act(x) * beta.
  """


class NFNet(common.DeepStemNet):
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
      depth, drop_rate, remat, name: see `common.ResidualNet`.
      variant: a key of `NFNET_VARIANTS` ('F0'..'F7', 'F0+'..'F7+').
      widths: output channels per stage (before `width`), one per stage of
        `depth`; None takes the variant's. The stem ends at half the first.
      width: multiplier on every channel count (1.0 is the published model);
        group widths shrink with it so tiny models stay valid.
      se_ratio: Squeeze-Excite hidden width as a fraction of its input.
      alpha: residual branch scale.
      stochdepth_rate: stochastic depth rate of the last block (linear in depth).
      activation: name (gamma from the table) or a callable (gamma estimated).
      fc_init: classifier weight initializer, N(0, 0.01) by default.
      final_conv_mult: width of the final 1x1 conv relative to the last stage.
      group_size: channels per group of the 3x3 convs (at width 1.0).
      expansion: bottleneck ratio of the block's inner width to its output.
      use_two_convs: two grouped 3x3 convs per block (NFNets) or one.
      conv: convolution module factory (WSConv2D by default).
    """
    super().__init__(NFNET_VARIANTS, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    self.num_classes = num_classes
    self.activation = layers.scaled_activation(activation)
    group_size = common.scaled_channels(group_size, width)
    ch = common.scaled_channels(self.widths[0] // 2, width)
    self.stem_convs = common.deep_stem_convs(conv, ch, width)
    self.plans = common.block_plans(self.depth, alpha, stochdepth_rate)
    self.blocks = []
    for plan in self.plans:
      out_ch = common.scaled_channels(self.widths[plan.stage], width)
      stride = 2 if plan.first_in_stage and plan.stage > 0 else 1
      inner, groups = common.grouped_width(int(out_ch * expansion),
                                           group_size)
      self.blocks.append(NFBlock(
          ch, out_ch, width=inner, groups=groups, stride=stride,
          two_mid_convs=use_two_convs, se='out', se_ratio=se_ratio,
          beta=plan.beta, alpha=alpha, activation=self.activation, conv=conv,
          stochdepth_rate=plan.stochdepth_rate))
      ch = out_ch
    self.final_conv = conv(int(final_conv_mult * ch), kernel_shape=1,
                           name='final_conv')
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)


for _variant in NFNET_VARIANTS:
  registry.register(f'nfnet_{_variant.lower().replace("+", "_plus")}', NFNet,
                    NFNET_VARIANTS[_variant], variant=_variant)
