"""NF-ResNets ([NF-ResNet] Brock, De, Smith 2021, sec. 4 and Table 2).

Pre-activation bottleneck ResNets without normalization: Scaled WS convolutions,
the alpha/beta variance schedule and a zero-initialised skip gain. The 288- and
600-layer depths are those of the paper's signal propagation study (Figure 1).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import haiku as hk
import jax

from nfnets import layers
from nfnets.models import common
from nfnets.models import registry


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


class NFResBlock(hk.Module):
  """NF-ResNet pre-activation bottleneck block ([NF-ResNet] Figure 2).

  The transition shortcut is a strided 1x1 conv of act(x) * beta; the branch is
  1x1 -> 3x3 (strided) -> 1x1 with activations in between, optionally gated by
  Squeeze-Excite, then scaled by skip_gain * alpha.
  """

  def __init__(self, in_ch: int, out_ch: int, *,
               bottleneck_ratio: float = 0.25, stride: int = 1,
               beta: float = 1.0, alpha: float = 0.2,
               activation: layers.Activation = jax.nn.relu,
               conv: common.ConvFactory = layers.WSConv2D,
               stochdepth_rate: float = 0.0, use_se: bool = False,
               se_ratio: float = 0.25, name: Optional[str] = None):
    super().__init__(name=name)
    self.beta, self.alpha = beta, alpha
    self.activation = activation
    width = common.scaled_channels(out_ch, bottleneck_ratio)
    self.conv0 = conv(width, kernel_shape=1, name='conv0')
    self.conv1 = conv(width, kernel_shape=3, stride=stride, name='conv1')
    self.conv2 = conv(out_ch, kernel_shape=1, name='conv2')
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, kernel_shape=1, stride=stride,
                                name='conv_shortcut')
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio) if use_se else None
    self.stoch_depth = layers.StochDepth(stochdepth_rate)

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (block output, residual branch output)."""
    out = self.activation(x) * self.beta
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv2(self.activation(out))
    branch = 2 * self.se(out) * out if self.se is not None else out
    out = self.stoch_depth(branch, is_training)
    out = out * layers.skip_gain(out.dtype)
    return out * self.alpha + shortcut, branch


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
               remat: bool = False,
               name: str = 'NF_ResNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `NF_RESNET_VARIANTS` ('50', '101', ..., '600').
      depth: blocks per stage, any number of stages; None takes the
        variant's.
      widths: output channels per stage (before `width`), one per stage of
        `depth`; None takes ResNet's (256, 512, 1024, 2048).
      width: multiplier on every channel count (1.0 is ResNet's 64..2048).
      alpha: residual branch scale.
      stochdepth_rate: stochastic depth rate of the last block.
      drop_rate: dropout before the classifier; None takes the variant's.
      activation: name (gamma from the table) or a callable (gamma estimated).
      fc_init: classifier weight initializer, N(0, 0.01) by default.
      use_se: gate each branch with Squeeze-Excite.
      se_ratio: Squeeze-Excite hidden width as a fraction of its input.
      conv: convolution module factory (WSConv2D by default).
      remat: rematerialize each block in the backward pass (less activation
        memory for about one more forward pass of compute).
      name: module name.
    """
    if variant not in NF_RESNET_VARIANTS:
      raise ValueError(f'Unknown NF-ResNet variant {variant!r}; known: '
                       f'{sorted(NF_RESNET_VARIANTS, key=int)}.')
    spec = NF_RESNET_VARIANTS[variant]
    depth, widths = common.stage_layout(depth, widths, spec.depth,
                                        spec.widths)
    super().__init__(
        drop_rate=spec.drop_rate if drop_rate is None else drop_rate,
        remat=remat, name=name)
    self.activation = layers.scaled_activation(activation)
    ch = common.scaled_channels(_STEM_WIDTH, width)
    self.initial_conv = conv(ch, kernel_shape=7, stride=2,
                             name='initial_conv')
    self.plans = common.block_plans(depth, alpha, stochdepth_rate)
    self.blocks = []
    for plan in self.plans:
      out_ch = common.scaled_channels(widths[plan.stage], width)
      stride = 2 if plan.first_in_stage and plan.stage > 0 else 1
      self.blocks.append(NFResBlock(
          ch, out_ch, stride=stride, beta=plan.beta, alpha=alpha,
          activation=self.activation, conv=conv,
          stochdepth_rate=plan.stochdepth_rate, use_se=use_se,
          se_ratio=se_ratio))
      ch = out_ch
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Strided 7x7 conv and 3x3 max pool: [N, H, W, 3] -> [N, H/4, W/4, C]."""
    del is_training
    out = self.initial_conv(x)
    return hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1),
                       padding='SAME')

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """The pre-activation blocks leave their sum unactivated; activate it."""
    del is_training
    return self.activation(x)


for _variant in NF_RESNET_VARIANTS:
  registry.register(f'nf_resnet{_variant}', NFResNet,
                    NF_RESNET_VARIANTS[_variant], variant=_variant)
