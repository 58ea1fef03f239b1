"""NF-ResNets ([NF-ResNet] Brock, De, Smith 2021, sec. 4 and Table 2).

Pre-activation bottleneck ResNets without normalization: Scaled WS convolutions,
the alpha/beta variance schedule and a zero-initialised skip gain. The 288- and
600-layer depths are those of the paper's signal propagation study (Figure 1).

`stacking` regroups the blocks into the high-order residual blocks of
[HO-ResNet] (Luo et al. 2021, "Rethinking ResNets: Improved Stacking
Strategies With High Order Schemes"): one Runge-Kutta step of s sub-blocks
(`stacking.HighOrderBlock`), stage depths counted in sub-blocks, the parameters
those of the network without stacking: sub-block m over the network keeps
the plain network's path, 'NF_ResNet/~/nf_res_block_{m}' ('nf_res_block'
for m = 0), so block k of an s-stage scheme holds sub-blocks k*s..k*s+s-1.
Each sub-block's beta follows the scheme's variance (`stacking.block_plans`,
docs/high_order_nf.md):

  create('nf_resnet50', stacking='rk4', depth=(4, 4, 8, 4))
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import haiku as hk
import jax

from nfnets import layers
from nfnets.models import common
from nfnets.models import registry
from nfnets.models import stacking as stacking_lib


_STAGE_WIDTHS = (256, 512, 1024, 2048)
_STEM_WIDTH = 64


def _row(depth: tuple[int, ...],
         params_m: Optional[float] = None) -> registry.ModelSpec:
  return registry.ModelSpec(
      family='nf_resnet', depth=depth, widths=_STAGE_WIDTHS, train_imsize=224,
      test_imsize=224, drop_rate=0.25, classifier='NF_ResNet/~/linear',
      params_m=params_m)


# Stage depths of He et al. 2016 (Table 1), and the deep variants of
# [NF-ResNet] Figure 1 (3 layers per bottleneck block, 4 equal stages).
# Published parameter counts in millions are those of the BN ResNets of the
# same shape (WS gains and biases replace BN scales and offsets one for one).
NF_RESNET_VARIANTS: dict[str, registry.ModelSpec] = {
    '50': _row((3, 4, 6, 3), 25.56),
    '101': _row((3, 4, 23, 3), 44.55),
    '152': _row((3, 8, 36, 3), 60.19),
    '200': _row((3, 24, 36, 3), 64.67),
    '288': _row((24, 24, 24, 24)),
    '600': _row((50, 50, 50, 50)),
}

# Inner width of a bottleneck block relative to its output (He et al. 2016).
_BOTTLENECK_RATIO = 0.25


class NFResBlock(common.NFResidualBlock):
  """NF-ResNet pre-activation bottleneck block ([NF-ResNet] Figure 2).

  The transition shortcut is a strided 1x1 conv of act(x) * beta; the branch is
  1x1 -> 3x3 (strided) -> 1x1 with activations in between, optionally gated by
  Squeeze-Excite, then scaled by skip_gain * alpha.
  """


class NFResNet(common.ResidualNet):
  """Normalizer-Free ResNet ([NF-ResNet] sec. 4)."""

  def __init__(self, num_classes: int, variant: str = '50', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, alpha: float = 0.2,
               stochdepth_rate: float = 0.1, drop_rate: Optional[float] = None,
               activation: Union[str, layers.Activation] = 'relu',
               fc_init: Optional[hk.initializers.Initializer] = None,
               use_se: bool = False, se_ratio: float = 0.25,
               conv: common.ConvFactory = layers.WSConv2D,
               remat: bool = False, stacking: str = 'euler',
               ho_variance: str = 'scheme',
               name: str = 'NF_ResNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      depth, drop_rate, remat, name: see `common.ResidualNet`.
      variant: a key of `NF_RESNET_VARIANTS` ('50', '101', ..., '600').
      widths: output channels per stage (before `width`), one per stage of
        `depth`; None takes ResNet's (256, 512, 1024, 2048).
      width: multiplier on every channel count (1.0 is ResNet's 64..2048).
      alpha: residual branch scale.
      stochdepth_rate: stochastic depth rate of the last block.
      activation: name (gamma from the table) or a callable (gamma estimated).
      fc_init: classifier weight initializer, N(0, 0.01) by default.
      use_se: gate each branch with Squeeze-Excite.
      se_ratio: Squeeze-Excite hidden width as a fraction of its input.
      conv: convolution module factory (WSConv2D by default).
      stacking: high-order stacking scheme, a name in
        `layers.high_order.TABLEAUX` ('euler', the plain network, or
        'midpoint', 'rk4', 'rk8', ...). With s stages, `depth` counts
        sub-blocks, a multiple of s per stage; stochastic depth rates grow
        over sub-blocks; `return_activations` gives one entry per sub-block.
      ho_variance: 'scheme' (each sub-block's beta from the scheme's
        variance) or 'euler' (the betas of the network without stacking),
        see `stacking.block_plans`.

    Raises:
      UnknownTableauError: an unknown `stacking`.
      StackingError: an unknown `ho_variance`, or a depth that is not a
        multiple of the scheme's stages (the message gives the nearest).
    """
    super().__init__(NF_RESNET_VARIANTS, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    self.activation = layers.scaled_activation(activation)
    ch = common.scaled_channels(_STEM_WIDTH, width)
    self.initial_conv = conv(ch, kernel_shape=7, stride=2,
                             name='initial_conv')
    tableau = stacking_lib.resolve_stacking(stacking, self.depth)
    self.plans = stacking_lib.block_plans(self.depth, alpha,
                                          stochdepth_rate, tableau, ho_variance)
    sub_blocks = []
    for plan in self.plans:
      out_ch = common.scaled_channels(self.widths[plan.stage], width)
      stride = 2 if plan.first_in_stage and plan.stage > 0 else 1
      sub_blocks.append(NFResBlock(
          ch, out_ch, width=common.scaled_channels(out_ch, _BOTTLENECK_RATIO),
          stride=stride, se='out' if use_se else None, se_ratio=se_ratio,
          pool_shortcut=False, beta=plan.beta, alpha=alpha,
          activation=self.activation, conv=conv,
          stochdepth_rate=plan.stochdepth_rate))
      ch = out_ch
    self.blocks = stacking_lib.high_order_blocks(sub_blocks, tableau)
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Strided 7x7 conv and 3x3 max pool: [N, H, W, 3] -> [N, H/4, W/4, C]."""
    del is_training
    out = self.initial_conv(x)
    return hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1),
                       padding='SAME')



for _variant in NF_RESNET_VARIANTS:
  registry.register(f'nf_resnet{_variant}', NFResNet,
                    NF_RESNET_VARIANTS[_variant], variant=_variant)
