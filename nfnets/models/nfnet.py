"""NFNets F0-F7 ([NFNet] Brock et al. 2021, Table 1 and appendix).

Parameter paths follow the reference release (`NFNet/~/stem_conv0`,
`NFNet/~/nf_block_1/conv1b`, `.../squeeze_excite/~/linear`, `NFNet/~/final_conv`,
`NFNet/~/linear`), so the released weights load without renaming.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers
from nfnets.models import common


@dataclasses.dataclass(frozen=True)
class NFNetVariant:
  """One row of [NFNet] Table 1 (with the "+" widths from its appendix)."""
  width: tuple[int, int, int, int]
  depth: tuple[int, int, int, int]
  train_imsize: int
  test_imsize: int
  randaugment_magnitude: int
  drop_rate: float


_BASE_WIDTH = (256, 512, 1536, 1536)
_PLUS_WIDTH = (384, 768, 2048, 2048)

# [NFNet] Table 1: depths are [1, 2, 6, 3] * (N + 1) for FN.
NFNET_VARIANTS: dict[str, NFNetVariant] = {
    'F0': NFNetVariant(_BASE_WIDTH, (1, 2, 6, 3), 192, 256, 5, 0.2),
    'F1': NFNetVariant(_BASE_WIDTH, (2, 4, 12, 6), 224, 320, 10, 0.3),
    'F2': NFNetVariant(_BASE_WIDTH, (3, 6, 18, 9), 256, 352, 10, 0.4),
    'F3': NFNetVariant(_BASE_WIDTH, (4, 8, 24, 12), 320, 416, 15, 0.4),
    'F4': NFNetVariant(_BASE_WIDTH, (5, 10, 30, 15), 384, 512, 15, 0.5),
    'F5': NFNetVariant(_BASE_WIDTH, (6, 12, 36, 18), 416, 544, 15, 0.5),
    'F6': NFNetVariant(_BASE_WIDTH, (7, 14, 42, 21), 448, 576, 15, 0.5),
    'F7': NFNetVariant(_BASE_WIDTH, (8, 16, 48, 24), 480, 608, 15, 0.5),
}
NFNET_VARIANTS.update({
    f'{k}+': dataclasses.replace(v, width=_PLUS_WIDTH)
    for k, v in list(NFNET_VARIANTS.items())})

# Published parameter counts in millions ([NFNet] Table 1).
NFNET_PARAMS_M = {'F0': 71.5, 'F1': 132.6, 'F2': 193.8, 'F3': 254.9,
                  'F4': 316.1, 'F5': 377.2, 'F6': 438.4, 'F7': 499.5}
# Published inference cost in billions of multiply-adds at the test resolution
# ([NFNet] Table 1), for the variants checked by the tests.
NFNET_GFLOPS = {'F0': 12.38, 'F6': 377.28}


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


class NFNet(hk.Module):
  """Normalizer-Free Network, F-series ([NFNet] sec. 5 and Table 1)."""

  def __init__(self, num_classes: int, variant: str = 'F0', *,
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
    super().__init__(name=name)
    self.remat = remat
    if variant not in NFNET_VARIANTS:
      raise ValueError(f'Unknown NFNet variant {variant!r}; known: '
                       f'{sorted(NFNET_VARIANTS)}.')
    spec = NFNET_VARIANTS[variant]
    self.num_classes = num_classes
    self.activation = layers.scaled_activation(activation)
    self.drop_rate = spec.drop_rate if drop_rate is None else drop_rate
    group_size = common.scaled_channels(group_size, width)
    ch = common.scaled_channels(spec.width[0] // 2, width)
    stem_widths = [common.scaled_channels(c, width) for c in (16, 32, 64)]
    self.stem_convs = [
        conv(stem_widths[0], kernel_shape=3, stride=2, name='stem_conv0'),
        conv(stem_widths[1], kernel_shape=3, stride=1, name='stem_conv1'),
        conv(stem_widths[2], kernel_shape=3, stride=1, name='stem_conv2'),
        conv(ch, kernel_shape=3, stride=2, name='stem_conv3'),
    ]
    self.plans = common.block_plans(spec.depth, alpha, stochdepth_rate)
    self.blocks = []
    for plan in self.plans:
      out_ch = common.scaled_channels(spec.width[plan.stage], width)
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

  def __call__(self, x: jax.Array, is_training: bool = True,
               return_activations: bool = False):
    """Maps NHWC images to logits [N, num_classes] (no softmax).

    With `return_activations`, returns (logits, `common.Activations`).
    """
    acts = common.Activations()
    out = x
    for i, stem_conv in enumerate(self.stem_convs):
      out = stem_conv(out if i == 0 else self.activation(out))
    acts.stem = out
    for block in self.blocks:
      out, branch = layers.maybe_remat(block, self.remat,
                                       is_training=is_training)(out)
      if return_activations:
        acts.blocks.append(out)
        acts.branches.append(branch)
    out = self.activation(self.final_conv(out))
    pooled = jnp.mean(out, axis=(1, 2))  # [N, C]
    acts.pooled = pooled
    if is_training and self.drop_rate > 0.0:
      pooled = hk.dropout(hk.next_rng_key(), self.drop_rate, pooled)
    logits = self.fc(pooled)
    return (logits, acts) if return_activations else logits
