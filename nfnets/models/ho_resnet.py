"""High-order CIFAR ResNets ([HO-ResNet] Luo et al. 2021): one residual
block per Runge-Kutta step, any scheme of `layers.high_order.TABLEAUX`.

The network of the authors' released code (its `CFResNet`): a 3x3 stem conv
of 16 channels, BatchNorm and ReLU; three stages of 16, 32 and 64 channels
at strides 1, 2, 2; global average pooling and a linear classifier.

Each block is one step of its scheme with s sub-blocks F_1..F_s
(`layers.high_order.stacked`): k_1 = F_1(x), k_i = F_i(s + sum_j a_ij k_j),
out = ReLU(s + sum_i b_i k_i). A sub-block is the pre-activation pair
F(v) = conv3x3(ReLU(BN(conv3x3(ReLU(BN(v)))))), its first BN over v's
channels; only F_1 of a stage's first block strides and widens. The
shortcut s is the block input, or in a transition block the input
subsampled by the stride and zero-padded in channels (He et al.'s option A:
(out - in) / 2 zero channels on each side). The ReLU after the sum is the
released code's (`post_activation=False` drops it, so blocks compose as
plain RK steps and the head applies the last ReLU instead).

A stage's depth counts blocks of its scheme, so schemes of equal sub-block
count have equal parameters: Euler [4, 4, 4] = Midpoint [2, 2, 2] = RK4
[1, 1, 1] = 366,842 parameters for 10 classes, and RK8 [1, 1, 1] = Euler
[14, 14, 14] = 1,339,002. The released code's `Verner89Block` builds 16
sub-blocks and uses 14, so its RK8 [1, 1, 1] holds 1,533,434 parameters,
194,432 of them never used; this one builds only the 14.

Stem stride: the released code's stem conv has stride 2, so a 32 px image
reaches the stages at 16 px and the classifier pools a 4x4 map; He et al.'s
CIFAR ResNet (and `stem_stride=1`) keeps 32 px to an 8x8 map, at about 4x
the multiply-adds and the same parameters. The default is the released
code's (stride 2), as the paper's numbers come from it.

Layout details as in that code (PyTorch): bias-free convs with symmetric
padding 1, BatchNorm momentum 0.1 (decay 0.9) and eps 1e-5, He-normal
(fan-in) convolution and classifier weights, the classifier bias
U(+-1/sqrt(fan_in)) (PyTorch's Linear default, which its init keeps).

Reference:
  [HO-ResNet] Luo, Sun, Zhou, Wu, Kamata. "Rethinking ResNets: Improved
    Stacking Strategies With High Order Schemes", arXiv 2103.15244 (2021);
    code: github.com/zlannnn/HO-ResNet, HO-ResNet.py.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers
from nfnets.layers import high_order
from nfnets.models import baselines
from nfnets.models import common
from nfnets.models import registry

_WIDTHS = (16, 32, 64)
# PyTorch's BatchNorm2d defaults (momentum 0.1 is a decay of 0.9).
_BN_DECAY = 0.9
_BN_EPS = 1e-5
# kaiming_normal_ (fan-in, gain sqrt(2)), the released code's init.
_HE_INIT = hk.initializers.VarianceScaling(2.0, 'fan_in', 'normal')
_PAD_1 = ((1, 1), (1, 1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HOResNetSpec(registry.ModelSpec):
  """A `ModelSpec` with the high-order columns.

  Attributes:
    stacking: the scheme, a key of `layers.high_order.TABLEAUX`.
    stem_stride: stride of the stem conv.
  """
  stacking: str = 'euler'
  stem_stride: int = 2


def _row(stacking: str, depth: int) -> HOResNetSpec:
  return HOResNetSpec(
      family='ho_resnet', depth=(depth,) * 3, widths=_WIDTHS, train_imsize=32,
      test_imsize=32, drop_rate=0.0, classifier='HOResNet/~/linear',
      stacking=stacking)


# Pairs of equal parameter count, named by layer count 6 m + 2 (the stem,
# two convs per sub-block, m sub-blocks per stage, the classifier), as the
# paper compares schemes at equal parameters: 26 layers (m = 4, 366,842
# parameters for 10 classes) and 86 layers (m = 14, 1,339,002).
HO_RESNET_VARIANTS: dict[str, HOResNetSpec] = {
    '26_euler': _row('euler', 4),
    '26_midpoint': _row('midpoint', 2),
    '26_rk4': _row('rk4', 1),
    '86_euler': _row('euler', 14),
    '86_midpoint': _row('midpoint', 7),
    '86_rk8': _row('rk8', 1),
    '86_rk8_authors': _row('rk8_authors', 1),
}


class PreActSubBlock(hk.Module):
  """F(v) = conv2(ReLU(bn2(conv1(ReLU(bn1(v)))))), conv1 strided.

  Parameters: `bn1` over the input's channels, `conv1` [3, 3, I, O],
  `bn2` and `conv2` [3, 3, O, O]; BatchNorm statistics in state.
  """

  def __init__(self, out_ch: int, *, stride: int = 1,
               name: Optional[str] = None):
    super().__init__(name=name)
    conv = functools.partial(layers.Conv2D, out_ch, 3, padding=_PAD_1,
                             with_bias=False, w_init=_HE_INIT)
    bn = functools.partial(baselines.BatchNorm, decay=_BN_DECAY, eps=_BN_EPS)
    self.bn1, self.bn2 = bn(name='bn1'), bn(name='bn2')
    self.conv1 = conv(stride=stride, name='conv1')
    self.conv2 = conv(name='conv2')

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """[N, H, W, I] -> [N, ceil(H / stride), ceil(W / stride), O]."""
    out = self.conv1(jax.nn.relu(self.bn1(x, is_training)))
    return self.conv2(jax.nn.relu(self.bn2(out, is_training)))


def option_a_shortcut(x: jax.Array, out_ch: int, stride: int) -> jax.Array:
  """He et al.'s parameter-free shortcut: subsample, then zero channels.

  [N, H, W, I] -> [N, ceil(H / stride), ceil(W / stride), out_ch], the
  input's channels in the middle with (out_ch - I) // 2 zeros before them.

  Raises:
    ValueError: out_ch < I (a shortcut cannot narrow).
  """
  in_ch = x.shape[-1]
  if out_ch < in_ch:
    raise ValueError(f'The option-A shortcut pads channels and cannot narrow '
                     f'{in_ch} to {out_ch}; pass non-decreasing widths.')
  x = x[:, ::stride, ::stride, :]
  lo = (out_ch - in_ch) // 2
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (lo, out_ch - in_ch - lo)))


class HOBlock(hk.Module):
  """One step of a Runge-Kutta scheme over pre-activation sub-blocks."""

  def __init__(self, in_ch: int, out_ch: int, *,
               tableau: high_order.ButcherTableau, stride: int = 1,
               post_activation: bool = True, name: Optional[str] = None):
    """Builds the block.

    Args:
      in_ch: input channels.
      out_ch: output channels, at least `in_ch`.
      tableau: the scheme; the block builds one sub-block per stage,
        `f1`..`fs`.
      stride: stride of F_1 and of the shortcut.
      post_activation: apply ReLU to the block's output.
      name: module name.
    """
    super().__init__(name=name)
    self.tableau = tableau
    self.out_ch, self.stride = out_ch, stride
    self.reshape = stride > 1 or in_ch != out_ch
    self.post_activation = post_activation
    self.sub_blocks = [
        PreActSubBlock(out_ch, stride=stride if i == 0 else 1, name=f'f{i + 1}')
        for i in range(tableau.num_stages)]

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (block output, sum_i b_i k_i), NHWC."""
    shortcut = x
    if self.reshape:
      shortcut = option_a_shortcut(x, self.out_ch, self.stride)
    fs = [functools.partial(f, is_training=is_training)
          for f in self.sub_blocks]
    out = high_order.stacked(self.tableau, x, shortcut, fs)
    branch = out - shortcut
    if self.post_activation:
      out = jax.nn.relu(out)
    return out, branch


class HOResNet(common.ResidualNet):
  """The CIFAR ResNet of [HO-ResNet] with any stacking scheme."""

  def __init__(self, num_classes: int, variant: str = '26_euler', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0, stacking: Optional[str] = None,
               stem_stride: Optional[int] = None,
               post_activation: bool = True,
               drop_rate: Optional[float] = None, remat: bool = False,
               name: str = 'HOResNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `HO_RESNET_VARIANTS`.
      depth: blocks of the scheme per stage (each holds one sub-block per
        stage of the scheme); None takes the variant's.
      widths: stage output channels before `width`, non-decreasing (the
        shortcut pads); the stem has the first stage's. None takes 16, 32, 64.
      width: multiplier of every width.
      stacking: a key of `layers.high_order.TABLEAUX` ('euler', 'midpoint',
        'rk4', 'rk8', 'rk8_authors'); None takes the variant's.
      stem_stride: stride of the stem conv; None takes the variant's (2, the
        released code's; 1 is He et al.'s CIFAR layout).
      post_activation: ReLU after each block's sum (the released code); off,
        the head applies one ReLU before pooling.
      drop_rate, remat, name: see `common.ResidualNet`.

    Raises:
      UnknownTableauError: an unknown `stacking` (names the nearest).
      ValueError: an unknown variant, a bad depth/widths override, or a
        stage narrower than the one before.
    """
    super().__init__(HO_RESNET_VARIANTS, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    spec = HO_RESNET_VARIANTS[variant]
    tableau = high_order.get_tableau(stacking or spec.stacking)
    self.stem_stride = spec.stem_stride if stem_stride is None else stem_stride
    self.post_activation = post_activation
    self.activation = jax.nn.relu
    ch = common.scaled_channels(self.widths[0], width)
    self.stem_conv = layers.Conv2D(ch, 3, stride=self.stem_stride,
                                   padding=_PAD_1, with_bias=False,
                                   w_init=_HE_INIT, name='stem_conv')
    self.stem_bn = baselines.BatchNorm(decay=_BN_DECAY, eps=_BN_EPS,
                                       name='stem_bn')
    self.blocks = []
    for stage, num_blocks in enumerate(self.depth):
      out_ch = common.scaled_channels(self.widths[stage], width)
      for block in range(num_blocks):
        stride = 2 if block == 0 and stage > 0 else 1
        self.blocks.append(HOBlock(
            ch, out_ch, tableau=tableau, stride=stride,
            post_activation=post_activation))
        ch = out_ch
    bound = 1.0 / math.sqrt(ch)
    self.fc = hk.Linear(num_classes, w_init=_HE_INIT,
                        b_init=hk.initializers.RandomUniform(-bound, bound))

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """3x3 conv, BN, ReLU: [N, H, W, 3] -> [N, H / stem_stride, ..., C]."""
    return jax.nn.relu(self.stem_bn(self.stem_conv(x), is_training))

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Post-activated blocks are pooled as they are; else after a ReLU."""
    del is_training
    return x if self.post_activation else jax.nn.relu(x)


for _variant, _spec in HO_RESNET_VARIANTS.items():
  registry.register(f'ho_resnet{_variant}', HOResNet, _spec, variant=_variant)
