"""MnasNet-A1 and -B1 ([MnasNet] Tan et al. 2019) and NF-MnasNet-B1.

MBConv networks with ReLU found by platform-aware architecture search; B1 is
the SE-free network that EfficientNet-B0's search space grew from. The
BatchNorm networks follow the TF reference (`mbconv` has the details); their
parameter counts equal timm's (A1) and torchvision's (B1 at widths 0.5,
0.75, 1.0, 1.3) exactly. Unlike EfficientNet, the head conv keeps 1280
channels at every width. `nf_mnasnet_b1` is B1 without normalization (Scaled
WS, alpha/beta, SkipInit; see `mbconv`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import haiku as hk

from nfnets import layers
from nfnets.models import common
from nfnets.models import mbconv
from nfnets.models import registry

Stage = mbconv.Stage
# [MnasNet] Figure 7: the separable conv of the first stage (no residual),
# then (kernel, stride, expansion, SE ratio) of each MBConv stage.
_A1_STAGES = (Stage(3, 1, 1, skip=False), Stage(3, 2, 6),
              Stage(5, 2, 3, 0.25), Stage(3, 2, 6), Stage(3, 1, 6, 0.25),
              Stage(5, 2, 6, 0.25), Stage(3, 1, 6))
# The TF reference's mnasnet-b1 (torchvision's MNASNet): no SE.
_B1_STAGES = (Stage(3, 1, 1, skip=False), Stage(3, 2, 3), Stage(5, 2, 3),
              Stage(5, 2, 6), Stage(3, 1, 6), Stage(5, 2, 6), Stage(3, 1, 6))
_B1_DEPTH = (1, 3, 3, 3, 2, 4, 1)
_B1_WIDTHS = (16, 24, 40, 80, 96, 192, 320)
_HEAD = 1280


def _row(stages: tuple[Stage, ...], depth: tuple[int, ...],
         widths: tuple[int, ...], width: float, params: int,
         gmacs: float) -> mbconv.MobileSpec:
  return mbconv.MobileSpec(
      family='mnasnet', depth=depth, widths=widths, stages=stages,
      width_multiplier=width, train_imsize=224, test_imsize=224,
      drop_rate=0.2, classifier='MnasNet/~/linear', params_m=params / 1e6,
      gmacs=gmacs)


# Stages, repeats, widths, width multiplier, then the exact parameter count
# and multiply-adds (billions at 224 px): A1 from [MnasNet] Table 1 (312M
# MACs), B1 and its width variants from torchvision.
MNASNET_VARIANTS: dict[str, mbconv.MobileSpec] = {
    'a1': _row(_A1_STAGES, (1, 2, 3, 4, 2, 3, 1),
               (16, 24, 40, 80, 112, 160, 320), 1.0, 3_887_038, 0.312),
    'b1': _row(_B1_STAGES, _B1_DEPTH, _B1_WIDTHS, 1.0, 4_383_312, 0.314),
    '050': _row(_B1_STAGES, _B1_DEPTH, _B1_WIDTHS, 0.5, 2_218_512, 0.104),
    '075': _row(_B1_STAGES, _B1_DEPTH, _B1_WIDTHS, 0.75, 3_170_208, 0.215),
    '130': _row(_B1_STAGES, _B1_DEPTH, _B1_WIDTHS, 1.3, 6_282_256, 0.526),
}


class MnasNet(mbconv.MobileNet):
  """MnasNet ([MnasNet] Figure 7 and the TF reference's B1)."""

  def __init__(self, num_classes: int, variant: str = 'b1', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: Optional[float] = None,
               drop_rate: Optional[float] = None,
               stochdepth_rate: float = 0.0,
               activation: Union[str, layers.Activation] = 'relu',
               norm: Optional[str] = 'batch', alpha: float = 0.2,
               conv: Optional[common.ConvFactory] = None,
               fc_init: Optional[hk.initializers.Initializer] = None,
               remat: bool = False, name: Optional[str] = None):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `MNASNET_VARIANTS` ('a1', 'b1', or B1 at width
        '050', '075', '130').
      depth: blocks per stage (one to seven stages); None takes the
        variant's.
      widths: stage output channels before `width`; None takes the
        variant's.
      width: width multiplier of the stem and stages (not of the 1280-channel
        head), with `mbconv.round_filters`; None takes the variant's.
      drop_rate: dropout before the classifier; None takes the variant's.
      stochdepth_rate: drop-connect rate of the last block (0: none, as in
        the published models).
      activation, norm, alpha, conv, fc_init, remat: see `mbconv.MobileNet`.
      name: module name; None takes 'MnasNet', or 'NF_MnasNet' without
        normalization.
    """
    super().__init__(
        MNASNET_VARIANTS, variant, num_classes, depth=depth, widths=widths,
        width=width, head_channels=_HEAD, scale_head=False,
        drop_rate=drop_rate, stochdepth_rate=stochdepth_rate,
        activation=activation, norm=norm, alpha=alpha, conv=conv,
        fc_init=fc_init, remat=remat,
        name=name or ('MnasNet' if norm else 'NF_MnasNet'))


for _variant, _spec in MNASNET_VARIANTS.items():
  registry.register(f'mnasnet_{_variant}', MnasNet, _spec, variant=_variant)
registry.register(
    'nf_mnasnet_b1', MnasNet,
    mbconv.normalizer_free_spec(MNASNET_VARIANTS['b1'], 'NF_MnasNet'),
    variant='b1', norm=None)
