"""NF-RegNets B0-B8 ([NF-ResNet] Brock, De, Smith 2021, sec. 5 and appendix).

EfficientNet-like RegNetY models without normalization: one grouped 3x3 conv
(group width 8) per inverted-bottleneck block with expansion 2.25, Squeeze-Excite
on the expanded width, SiLU, and a final 1x1 conv widened as in EfficientNets.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers
from nfnets.models import common
from nfnets.models import registry


def _row(widths: tuple[int, ...], depth: tuple[int, ...], train_imsize: int,
         test_imsize: int, drop_rate: float,
         params_m: Optional[float] = None) -> registry.ModelSpec:
  return registry.ModelSpec(
      family='nf_regnet', depth=depth, widths=widths,
      train_imsize=train_imsize, test_imsize=test_imsize, drop_rate=drop_rate,
      classifier='NF_RegNet/~/linear', params_m=params_m)


# The NF-RegNet table of [NF-ResNet]. Columns: stage widths (before `width`
# and the 0.75 below), depth, train and test resolution, dropout, published
# parameters in millions (for the variants the tests check).
NF_REGNET_VARIANTS: dict[str, registry.ModelSpec] = {
    'B0': _row((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2, 8.60),
    'B1': _row((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
    'B2': _row((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
    'B3': _row((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
    'B4': _row((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
    'B5': _row((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
    'B6': _row((88, 184, 376, 792), (3, 8, 16, 16), 448, 528, 0.5),
    'B7': _row((96, 208, 416, 880), (4, 10, 19, 19), 512, 600, 0.5),
    'B8': _row((104, 232, 456, 968), (4, 11, 22, 22), 600, 672, 0.5, 142.3),
}

# The table's widths are scaled by 0.75 in the released models.
_BASE_WIDTH_MULT = 0.75


class NFBlock(common.NFResidualBlock):
  """NF-RegNet inverted bottleneck: 1x1 expand -> grouped 3x3 -> SE -> 1x1.

  The transition shortcut is a 2x2 average pool followed by a 1x1 conv.
  """


class NFRegNet(common.ResidualNet):
  """Normalizer-Free RegNet ([NF-ResNet] sec. 5)."""

  def __init__(self, num_classes: int, variant: str = 'B0', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, expansion: float = 2.25,
               group_size: int = 8, se_ratio: float = 0.5, alpha: float = 0.2,
               stochdepth_rate: float = 0.1, drop_rate: Optional[float] = None,
               activation: Union[str, layers.Activation] = 'silu',
               fc_init: Optional[hk.initializers.Initializer] = None,
               conv: common.ConvFactory = layers.WSConv2D,
               remat: bool = False,
               name: str = 'NF_RegNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      depth, drop_rate, remat, name: see `common.ResidualNet`.
      variant: a key of `NF_REGNET_VARIANTS` ('B0'..'B8').
      widths: output channels per stage before `width` and the released
        models' 0.75 scaling, one per stage of `depth`; None takes the
        variant's.
      width: multiplier on every channel count (1.0 is the published model).
      expansion: inner width of a block relative to its input.
      group_size: channels per group of the 3x3 convs.
      se_ratio: Squeeze-Excite hidden width as a fraction of the inner width.
      alpha: residual branch scale.
      stochdepth_rate: stochastic depth rate of the last block.
      activation: name (gamma from the table) or a callable (gamma estimated).
      fc_init: classifier weight initializer, zeros by default (as released).
      conv: convolution module factory (WSConv2D by default).
    """
    super().__init__(NF_REGNET_VARIANTS, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    self.activation = layers.scaled_activation(activation)
    mult = _BASE_WIDTH_MULT * width
    ch = common.scaled_channels(self.widths[0], mult)
    self.initial_conv = conv(ch, kernel_shape=3, stride=2,
                             name='initial_conv')
    self.plans = common.block_plans(self.depth, alpha, stochdepth_rate)
    self.blocks = []
    for plan in self.plans:
      out_ch = common.scaled_channels(self.widths[plan.stage], mult)
      # The first block does not expand, following EfficientNets.
      inner, groups = common.grouped_width(
          int(ch * (1.0 if plan.index == 0 else expansion)), group_size)
      self.blocks.append(NFBlock(
          ch, out_ch, width=inner, groups=groups,
          stride=2 if plan.first_in_stage else 1, se='mid',
          se_ratio=se_ratio, beta=plan.beta, alpha=alpha,
          activation=self.activation, conv=conv,
          stochdepth_rate=plan.stochdepth_rate))
      ch = out_ch
    # EfficientNet-B0 widens 320 -> 1280 at its head; keep that ratio to the
    # (unscaled) last-stage width of 440.
    self.final_conv = conv(int(1280 * ch // 440), kernel_shape=1,
                           name='final_conv')
    self.fc = hk.Linear(num_classes, w_init=fc_init or jnp.zeros,
                        with_bias=True)

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """One strided 3x3 conv: [N, H, W, 3] -> [N, H/2, W/2, C]."""
    del is_training
    return self.initial_conv(x)



for _variant in NF_REGNET_VARIANTS:
  registry.register(f'nf_regnet_{_variant.lower()}', NFRegNet,
                    NF_REGNET_VARIANTS[_variant], variant=_variant)
