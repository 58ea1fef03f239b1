"""ECA-NFNet-L0 ... L3: timm's lighter NFNets with Efficient Channel Attention.

timm's `eca_nfnet_l0` ... `eca_nfnet_l3` (Wightman, pytorch-image-models,
`nfnet.py`) keep the NFNet-F0 ... F3 depths and the [NFNet] trunk (the
four-conv stem, pre-activation bottlenecks with two grouped 3x3 convs,
average-pool-then-1x1 transitions, a widening final 1x1 conv), and make it
lighter: bottleneck ratio 0.25 instead of 0.5 (inner widths 64 / 128 / 384 /
384), group width 64 instead of 128, SiLU instead of GELU, and ECA
([ECA-Net]) instead of Squeeze-Excite after the block's last conv, as
2 * ECA(h) * h. Published figures (timm's weights, its own recipes; top-1 on
ImageNet validation at the test resolution, crop 1.0):

| variant | params | train / test px | final conv | top-1 |
|---|---|---|---|---|
| L0 | 24,143,924 | 224 / 288 | 2304 | 82.59 |
| L1 | 41,407,728 | 256 / 320 | 3072 | 84.06 |
| L2 | 56,722,348 | 320 / 384 | 3072 | 84.71 |
| L3 | 72,036,968 | 352 / 448 | 3072 | (no weights) |

L0 is published at 4.244 GMACs at 224 px (`count_macs`, convs and the
classifier: 4.288). Parameter paths follow this package's NFNet
(`ECA_NFNet/~/stem_conv0`, `ECA_NFNet/~/nf_block_1/~/conv1b`,
`.../nf_block_1/~/eca` with `w` [5], `ECA_NFNet/~/final_conv`,
`ECA_NFNet/~/linear`), not timm's.

Where the function differs from timm's (the parameters do not): timm folds
the activation gamma into each conv's weights (`gamma_in_act=False`), which
also scales the stem's first conv and the final conv and leaves the final
activation unscaled, while this package scales every activation, as the
[NFNet] release does; timm pads symmetrically (PyTorch) where this package
pads "SAME" (more at the end at stride 2); timm's WS adds eps 1e-5 to the
variance where WSConv2D floors N * var at 1e-4; timm's stochastic depth rate
grows from 0 to the rate at the last block and rescales kept branches by
1 / keep probability, this package's grows from 0 to rate * (n - 1) / n and
does not rescale (as the [NFNet] release).

References:
  [NFNet] Brock, De, Smith, Simonyan. "High-Performance Large-Scale Image
    Recognition Without Normalization", ICML 2021.
  [ECA-Net] Wang et al. "ECA-Net: Efficient Channel Attention for Deep
    Convolutional Neural Networks", CVPR 2020.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers
from nfnets.models import common
from nfnets.models import registry


def _row(depth: tuple[int, ...], train_imsize: int, test_imsize: int,
         randaugment_magnitude: int, drop_rate: float,
         params: int) -> registry.ModelSpec:
  return registry.ModelSpec(
      family='eca_nfnet', depth=depth, widths=(256, 512, 1536, 1536),
      train_imsize=train_imsize, test_imsize=test_imsize,
      drop_rate=drop_rate, classifier='ECA_NFNet/~/linear',
      params_m=params / 1e6, randaugment_magnitude=randaugment_magnitude)


# timm's `model_cfgs['eca_nfnet_lN']` and `default_cfgs` (depths; train and
# test resolution), with timm's exact parameter counts. timm publishes no
# per-variant dropout or RandAugment magnitude for them: these two columns
# are those of the F-variant with the same depths ([NFNet] Table 1).
ECA_NFNET_VARIANTS: dict[str, registry.ModelSpec] = {
    'L0': _row((1, 2, 6, 3), 224, 288, 5, 0.2, 24_143_924),
    'L1': _row((2, 4, 12, 6), 256, 320, 10, 0.3, 41_407_728),
    'L2': _row((3, 6, 18, 9), 320, 384, 10, 0.4, 56_722_348),
    'L3': _row((4, 8, 24, 12), 352, 448, 15, 0.4, 72_036_968),
}
# Final 1x1 conv width relative to the last stage (timm's `feat_mult`):
# 1.5 x 1536 = 2304 for L0, 2 x 1536 = 3072 for the others.
FINAL_CONV_MULT: dict[str, float] = {'L0': 1.5, 'L1': 2.0, 'L2': 2.0,
                                     'L3': 2.0}


class ECANFBlock(hk.Module):
  """NFNet bottleneck with ECA after its last conv (timm's `NormFreeBlock`).

  h = conv2(act(conv1b(act(conv1(act(conv0(act(x) * beta)))))));
  h = attn_gain * ECA(h) * h; out = x' + alpha * [skip_gain *]
  stochdepth(h), where x' is x itself or, at a transition, a 1x1 conv of
  act(x) * beta, after a 2x2 average pool when strided (timm's
  `DownsampleAvg`). With `zero_init_last` conv2's WS gain starts at zero and
  there is no skip_gain; without it conv2's gain starts at one and the
  SkipInit scalar skip_gain at zero. Either way the branch is zero at init.
  """

  def __init__(self, in_ch: int, out_ch: int, *, width: int, groups: int,
               stride: int, beta: float, alpha: float,
               activation: layers.Activation, conv: common.ConvFactory,
               eca_kernel_size: Optional[int], attn_gain: float,
               zero_init_last: bool, stochdepth_rate: float,
               name: Optional[str] = 'nf_block'):
    """Builds the block (arguments as in `ECANFNet` and `NFResidualBlock`)."""
    super().__init__(name=name)
    self.stride, self.beta, self.alpha = stride, beta, alpha
    self.activation, self.attn_gain = activation, attn_gain
    self.zero_init_last = zero_init_last
    self.conv0 = conv(width, kernel_shape=1, name='conv0')
    self.conv1 = conv(width, kernel_shape=3, stride=stride,
                      feature_group_count=groups, name='conv1')
    self.conv1b = conv(width, kernel_shape=3, feature_group_count=groups,
                       name='conv1b')
    last_kwargs = dict(gain_init=jnp.zeros) if zero_init_last else {}
    self.conv2 = conv(out_ch, kernel_shape=1, name='conv2', **last_kwargs)
    self.conv_shortcut = None
    if stride > 1 or in_ch != out_ch:
      self.conv_shortcut = conv(out_ch, kernel_shape=1, name='conv_shortcut')
    self.eca = layers.ECA(eca_kernel_size)
    self.stoch_depth = layers.StochDepth(stochdepth_rate)

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (block output, residual branch), both [N, H', W', out_ch]."""
    out = self.activation(x) * self.beta
    if self.conv_shortcut is None:
      shortcut = x
    elif self.stride > 1:
      shortcut = self.conv_shortcut(layers.avg_pool_2x2(out))
    else:
      shortcut = self.conv_shortcut(out)
    h = self.conv1(self.activation(self.conv0(out)))
    h = self.conv2(self.activation(self.conv1b(self.activation(h))))
    # The gate's mean is about 0.5 at init; the gain keeps the branch's
    # variance ([NFNet] sec. 3, timm's attn_gain).
    branch = self.attn_gain * self.eca(h) * h
    out = self.stoch_depth(branch, is_training)
    if not self.zero_init_last:
      out = out * layers.skip_gain(out.dtype)
    return out * self.alpha + shortcut, branch


class ECANFNet(common.DeepStemNet):
  """ECA-NFNet, timm's L-series (see the module docstring)."""

  def __init__(self, num_classes: int, variant: str = 'L0', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, alpha: float = 0.2,
               stochdepth_rate: float = 0.1, drop_rate: Optional[float] = None,
               activation: Union[str, layers.Activation] = 'silu',
               fc_init: Optional[hk.initializers.Initializer] = None,
               final_conv_mult: Optional[float] = None, group_size: int = 64,
               expansion: float = 0.25, eca_kernel_size: Optional[int] = None,
               attn_gain: float = 2.0, zero_init_last: bool = True,
               conv: common.ConvFactory = layers.WSConv2D,
               remat: bool = False, name: str = 'ECA_NFNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      depth, drop_rate, remat, name: see `common.ResidualNet`.
      variant: a key of `ECA_NFNET_VARIANTS` ('L0'..'L3').
      widths: output channels per stage (before `width`), one per stage of
        `depth`; None takes the variant's. The stem ends at half the first.
      width: multiplier on every channel count (1.0 is the published model);
        group widths shrink with it so tiny models stay valid.
      alpha: residual branch scale.
      stochdepth_rate: stochastic depth rate of the last block (linear in
        depth).
      activation: name (gamma from the table) or a callable (gamma
        estimated); SiLU as in timm.
      fc_init: classifier weight initializer, N(0, 0.01) by default (timm's).
      final_conv_mult: width of the final 1x1 conv relative to the last
        stage; None takes the variant's (`FINAL_CONV_MULT`).
      group_size: channels per group of the 3x3 convs (at width 1.0).
      expansion: bottleneck ratio of the block's inner width to its output.
      eca_kernel_size: ECA's 1-D kernel width; None applies [ECA-Net]'s
        adaptive rule to each block's output channels (5 at full width).
      attn_gain: the factor on ECA's gate (2: its mean at init is 0.5).
      zero_init_last: how each residual branch starts at zero. True (the
        default): the WS gain of the block's last conv starts at zero, as in
        timm (`zero_init_last`, no `skipinit`), so the parameters match
        timm's one for one (the counts of the table) and its published
        accuracies were trained this way. False: that gain starts at one and
        a SkipInit scalar `skip_gain` per block starts at zero, as in this
        package's NFNet-F (one more parameter per block); choose it for
        `nfnets.spp`'s `unit_skip_gains`, which sets skip gains to one to
        make the branches count at init and does nothing to conv gains.
      conv: convolution module factory (WSConv2D by default); with
        `zero_init_last` it must take `gain_init`.
    """
    super().__init__(ECA_NFNET_VARIANTS, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    self.num_classes = num_classes
    self.activation = layers.scaled_activation(activation)
    if final_conv_mult is None:
      final_conv_mult = FINAL_CONV_MULT[variant]
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
      self.blocks.append(ECANFBlock(
          ch, out_ch, width=inner, groups=groups, stride=stride,
          beta=plan.beta, alpha=alpha, activation=self.activation, conv=conv,
          eca_kernel_size=eca_kernel_size, attn_gain=attn_gain,
          zero_init_last=zero_init_last,
          stochdepth_rate=plan.stochdepth_rate))
      ch = out_ch
    self.final_conv = conv(int(final_conv_mult * ch), kernel_shape=1,
                           name='final_conv')
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)


for _variant in ECA_NFNET_VARIANTS:
  registry.register(f'eca_nfnet_{_variant.lower()}', ECANFNet,
                    ECA_NFNET_VARIANTS[_variant], variant=_variant)
