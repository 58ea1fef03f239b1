"""EfficientNet-B0 ... B7 ([EfficientNet] Tan & Le 2019) and NF-EfficientNet-B0.

MBConv networks with SE (ratio 0.25 of each block's input channels) and SiLU
everywhere, compound-scaled in width, depth and resolution from B0. The
BatchNorm networks follow the TF reference (`mbconv` has the details); their
parameter counts equal the reference's exactly. `nf_efficientnet_b0` is B0
without normalization (Scaled WS, alpha/beta, SkipInit; see `mbconv`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import haiku as hk

from nfnets import layers
from nfnets.models import common
from nfnets.models import mbconv
from nfnets.models import registry

# [EfficientNet] Table 1, EfficientNet-B0: (MBConv kernel, stride of the
# stage's first block, expansion, SE ratio) per stage; repeats and output
# channels below.
_B0_STAGES = (
    mbconv.Stage(3, 1, 1, 0.25),
    mbconv.Stage(3, 2, 6, 0.25),
    mbconv.Stage(5, 2, 6, 0.25),
    mbconv.Stage(3, 2, 6, 0.25),
    mbconv.Stage(5, 1, 6, 0.25),
    mbconv.Stage(5, 2, 6, 0.25),
    mbconv.Stage(3, 1, 6, 0.25),
)
_B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_B0_WIDTHS = (16, 24, 40, 80, 112, 192, 320)
# Stem and head convs of B0, both scaled by the width coefficient.
_HEAD = 1280


def _row(width: float, depth: float, resolution: int, dropout: float,
         params: int, gmacs: float) -> mbconv.MobileSpec:
  return mbconv.MobileSpec(
      family='efficientnet',
      depth=tuple(mbconv.round_repeats(r, depth) for r in _B0_REPEATS),
      widths=_B0_WIDTHS, stages=_B0_STAGES, width_multiplier=width,
      depth_multiplier=depth, train_imsize=resolution,
      test_imsize=resolution, drop_rate=dropout,
      classifier='EfficientNet/~/linear', params_m=params / 1e6, gmacs=gmacs)


# The compound scaling of [EfficientNet] sec. 3.3 as the TF reference sets it:
# (width, depth, resolution, dropout), then the reference's exact parameter
# count and its multiply-adds (convs and FCs, billions at `resolution`).
EFFICIENTNET_VARIANTS: dict[str, mbconv.MobileSpec] = {
    'b0': _row(1.0, 1.0, 224, 0.2, 5_288_548, 0.386),
    'b1': _row(1.0, 1.1, 240, 0.2, 7_794_184, 0.687),
    'b2': _row(1.1, 1.2, 260, 0.3, 9_109_994, 0.994),
    'b3': _row(1.2, 1.4, 300, 0.3, 12_233_232, 1.827),
    'b4': _row(1.4, 1.8, 380, 0.4, 19_341_616, 4.394),
    'b5': _row(1.6, 2.2, 456, 0.4, 30_389_784, 10.27),
    'b6': _row(1.8, 2.6, 528, 0.5, 43_040_704, 19.07),
    'b7': _row(2.0, 3.1, 600, 0.5, 66_347_960, 37.75),
}


class EfficientNet(mbconv.MobileNet):
  """EfficientNet ([EfficientNet] Table 1 and sec. 3.3)."""

  def __init__(self, num_classes: int, variant: str = 'b0', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: Optional[float] = None,
               depth_multiplier: Optional[float] = None,
               drop_rate: Optional[float] = None,
               stochdepth_rate: float = 0.2,
               activation: Union[str, layers.Activation] = 'silu',
               norm: Optional[str] = 'batch', alpha: float = 0.2,
               conv: Optional[common.ConvFactory] = None,
               fc_init: Optional[hk.initializers.Initializer] = None,
               remat: bool = False, name: Optional[str] = None):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `EFFICIENTNET_VARIANTS` ('b0' ... 'b7').
      depth: blocks per stage (one to seven stages); None takes the
        variant's, or B0's scaled by `depth_multiplier` when that is given.
      widths: stage output channels before `width`; None takes B0's.
      width: width coefficient applied to stem, stages and head with
        `mbconv.round_filters`; None takes the variant's.
      depth_multiplier: depth coefficient: B0's repeats r become ceil(d * r).
      drop_rate: dropout before the classifier; None takes the variant's.
      stochdepth_rate: drop-connect rate of the last block (the reference's
        drop_connect_rate), linear in the block index.
      activation, norm, alpha, conv, fc_init, remat: see `mbconv.MobileNet`.
      name: module name; None takes 'EfficientNet', or 'NF_EfficientNet'
        without normalization.

    Raises:
      ValueError: both `depth` and `depth_multiplier` given, or see
        `mbconv.MobileNet`.
    """
    if depth_multiplier is not None:
      if depth is not None:
        raise ValueError('Pass depth (blocks per stage) or depth_multiplier '
                         '(a scale of B0\'s), not both.')
      depth = [mbconv.round_repeats(r, depth_multiplier)
               for r in _B0_REPEATS]
    super().__init__(
        EFFICIENTNET_VARIANTS, variant, num_classes, depth=depth,
        widths=widths, width=width, head_channels=_HEAD, scale_head=True,
        drop_rate=drop_rate, stochdepth_rate=stochdepth_rate,
        activation=activation, norm=norm, alpha=alpha, conv=conv,
        fc_init=fc_init, remat=remat,
        name=name or ('EfficientNet' if norm else 'NF_EfficientNet'))


for _variant, _spec in EFFICIENTNET_VARIANTS.items():
  registry.register(f'efficientnet_{_variant}', EfficientNet, _spec,
                    variant=_variant)
registry.register(
    'nf_efficientnet_b0', EfficientNet,
    mbconv.normalizer_free_spec(EFFICIENTNET_VARIANTS['b0'], 'NF_EfficientNet'),
    variant='b0', norm=None)
