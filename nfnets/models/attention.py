"""Residual Attention Networks: Attention-56 and Attention-92.

[RAN] Wang et al. 2017, "Residual Attention Network for Image
Classification" (CVPR), in the ImageNet form of the authors' released Caffe
definitions (github.com/fwang91/residual-attention-network,
`imagenet_model/Attention-56-deploy.prototxt`, `model/Attention-92-deploy.
prototxt`), which this file follows layer for layer:

  stem     7x7/2 conv (64), BN-ReLU, 3x3/2 max pool          [N, 56, 56, 64]
  stage s  one pre-activation bottleneck unit to the stage's width (strided
           from stage 2 on), then `depth[s]` Attention Modules; the last
           stage (`mask_downsamplings` 0) is `depth[s]` plain units
  head     BN-ReLU, global average pool, fully connected (with bias)

Every unit is a pre-activation bottleneck (BN-ReLU-conv x 3, the stride on
the 3x3, a 1x1 strided projection of the pre-activated input where the
shape changes): `baselines.ResBlock` with ordering 'bn_relu_conv'. Convs have
no bias; every BN has a scale and a shift.

An Attention Module (p = 1, t = 2, r = 1; [RAN] sec. 3) maps x to
  x' = pre(x);  T = trunk(x')  (2 units)
  M  = sigmoid(head(mask(x')))
  out = post((1 + M) * T)                          (attention residual, eq. 4)
The mask branch is the bottom-up top-down hourglass of [RAN] sec. 3.3 with D
down-samplings (3, 2, 1 in stages 1-3): D times a 3x3/2 max pool followed by
one unit, a second unit at the lowest resolution, then D - 1 times a
bilinear up-sampling to the next resolution plus a skip unit applied to the
down path's map there, followed by one unit; a last up-sampling to the
trunk's size, and the head BN-ReLU-1x1 conv, BN-ReLU-1x1 conv. M has T's
shape: soft attention over space and channels ("mixed attention", sec. 3.2).

Up-sampling is Caffe's `Interp` (bilinear, corners aligned). Maps stop
shrinking at 1x1 (a 'SAME' max pool of a 1x1 map is the identity), so any
input size works; from 32 px digits the stage-1 mask branch reaches 1x1.
At 224 and 320 px every pooled map has an even size, where 'SAME' pooling
and Caffe's pooling give the same windows.

`return_activations=True` adds each module's mask M(x) [N, H, W, C] to
`Activations.masks` under 'stage{s}/attention{i}/mask' (s from 1, i from 0
within the stage); the module's residual branch is M * T.
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets import layers
from nfnets.models import baselines
from nfnets.models import common
from nfnets.models import registry

_WIDTHS = (256, 512, 1024, 2048)
_STEM_WIDTH = 64
# Max-pool down-samplings of each stage's mask branch ([RAN] sec. 3.3 and the
# Caffe definitions): 3 (2 skips), 2 (1 skip), 1 (none); 0 marks the last
# stage, which has plain units only.
_MASK_DOWNSAMPLINGS = (3, 2, 1, 0)
# He et al. 2015 fan-in init, as for the BatchNorm ResNets (`baselines`).
_HE_INIT = hk.initializers.VarianceScaling(2.0, 'fan_in', 'normal')

# ImageNet Residual Attention Networks ([RAN] Table 2 and the Caffe
# definitions). `depth`: Attention Modules per stage (plain units in the last
# stage). `params_m`: the exact count of the released Caffe definitions,
# 31,810,728 and 52,466,344 (conv weights, BN scale and shift, FC weight and
# bias); [RAN] sec. 4.2 states 31.9M and 51.3M. `gmacs`: [RAN] sec. 4.2,
# convs and FC at 224 px (the paper's "FLOPs"), given where it is at
# `test_imsize`.
# Published ImageNet top-1 error (single crop): 21.76% for Attention-56 at
# 224 px, 19.5% for Attention-92 at 320 px (the release's README), hence
# Attention-92's `test_imsize`; no dropout.
ATTENTION_VARIANTS: dict[str, registry.ModelSpec] = {
    '56': registry.ModelSpec(
        family='attention', depth=(1, 1, 1, 3), widths=_WIDTHS,
        train_imsize=224, test_imsize=224, drop_rate=0.0,
        classifier='AttentionNet/~/linear', params_m=31.81, gmacs=6.27),
    '92': registry.ModelSpec(
        family='attention', depth=(1, 2, 3, 3), widths=_WIDTHS,
        train_imsize=224, test_imsize=320, drop_rate=0.0,
        classifier='AttentionNet/~/linear', params_m=52.47),
}
# [RAN] sec. 4.2 multiply-adds at 224 px, in billions, for every variant
# (Attention-92's spec has none at its 320 px test resolution).
GMACS_AT_224 = {'56': 6.27, '92': 10.53}


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Caffe's `Interp`: bilinear resampling with aligned corners.

  Output pixel i of n_out samples the input at i * (n_in - 1) / (n_out - 1)
  (the first and last pixels coincide; a single-pixel axis is broadcast).
  Gathers and a lerp with constant weights, so no matrix product is counted
  as a multiply-add.

  Args:
    x: [N, H, W, C].
    size: (H', W').

  Returns:
    [N, H', W', C], in x's dtype.
  """
  for axis, n_out in zip((1, 2), size):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    pos = np.arange(n_out) * scale
    lo = np.minimum(np.floor(pos).astype(np.int32), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    frac = jnp.asarray((pos - lo).reshape(shape), x.dtype)
    below = jnp.take(x, lo, axis=axis)
    x = below + (jnp.take(x, hi, axis=axis) - below) * frac
  return x


def _max_pool(x: jax.Array) -> jax.Array:
  """3x3/2 max pool, 'SAME': [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]."""
  return hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1),
                     padding='SAME')


class AttentionModule(hk.Module):
  """One Attention Module, preceded by its stage's transition unit if any.

  Called as module(x, is_training) -> (output, M * T, {key: M}); see the
  module docstring. Sub-modules are named after the Caffe layers' roles:
  'transition' (the stage's first unit, `pre_res_s` in Caffe), 'pre0',
  'trunk0', 'trunk1', 'down{i}' (the unit after pool i + 1), 'bottom',
  'skip{i}' and 'up{i}' (at the resolution after pool i + 1), 'mask_norm{j}'
  / 'mask_conv{j}' (the head), 'post0'.
  """

  def __init__(self, in_ch: int, ch: int, *, transition: bool, stride: int,
               downsamplings: int, key: str, bn_decay: float = 0.9,
               activation: layers.Activation = jax.nn.relu,
               name: Optional[str] = None):
    """Builds the module.

    Args:
      in_ch: input channels.
      ch: the module's channels (output, trunk and mask).
      transition: start with the stage's first unit (`in_ch` -> `ch`).
      stride: stride of the transition unit (1 in stage 1).
      downsamplings: max pools of the mask branch, at least 1.
      key: where `Activations.masks` files the mask, e.g.
        'stage1/attention0/mask'.
      bn_decay: BatchNorm moving-average decay.
      activation: the nonlinearity.
      name: module name.
    """
    if downsamplings < 1:
      raise ValueError(f'An Attention Module needs at least one mask '
                       f'down-sampling, got {downsamplings}.')
    super().__init__(name=name)
    self.key, self.downsamplings = key, downsamplings
    self.activation = activation

    def unit(name: str, in_ch: int = ch, stride: int = 1) -> hk.Module:
      return baselines.ResBlock(in_ch, ch, stride=stride,
                                ordering='bn_relu_conv', bn_decay=bn_decay,
                                activation=activation, name=name)

    self.transition = None
    if transition:
      self.transition = unit('transition', in_ch, stride)
    self.pre = unit('pre0')
    self.trunk = [unit(f'trunk{i}') for i in range(2)]
    self.down = [unit(f'down{i}') for i in range(downsamplings)]
    self.bottom = unit('bottom')
    self.skips = [unit(f'skip{i}') for i in range(downsamplings - 1)]
    self.up = [unit(f'up{i}') for i in range(downsamplings - 1)]
    self.mask_norms = [baselines.BatchNorm(bn_decay, name=f'mask_norm{j}')
                       for j in range(2)]
    self.mask_convs = [layers.Conv2D(ch, kernel_shape=1, with_bias=False,
                                     w_init=_HE_INIT,
                                     name=f'mask_conv{j}') for j in range(2)]
    self.post = unit('post0')

  def mask_logits(self, x: jax.Array, out_size: Sequence[int],
                  is_training: bool) -> jax.Array:
    """The mask branch before its sigmoid: [N, H, W, C] -> [N, *out_size, C].

    `x` is the pre-processing unit's output x'.
    """
    levels = []  # The down path's map after each pool's unit.
    m = x
    for unit in self.down:
      m, _ = unit(_max_pool(m), is_training)
      levels.append(m)
    m, _ = self.bottom(m, is_training)
    for i in reversed(range(self.downsamplings - 1)):
      skip, _ = self.skips[i](levels[i], is_training)
      m = resize_bilinear(m, levels[i].shape[1:3]) + skip
      m, _ = self.up[i](m, is_training)
    m = resize_bilinear(m, out_size)
    for norm, conv in zip(self.mask_norms, self.mask_convs):
      m = conv(self.activation(norm(m, is_training)))
    return m

  def __call__(self, x: jax.Array, is_training: bool
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns (output, attention residual M * T, {key: M}), all NHWC."""
    if self.transition is not None:
      x, _ = self.transition(x, is_training)
    x, _ = self.pre(x, is_training)
    trunk = x
    for unit in self.trunk:
      trunk, _ = unit(trunk, is_training)
    mask = jax.nn.sigmoid(self.mask_logits(x, trunk.shape[1:3], is_training))
    residual = mask * trunk
    # (1 + M) * T, [RAN] eq. 4: the mask can only amplify the trunk's
    # features, and M near 0 leaves them unchanged.
    out, _ = self.post(trunk + residual, is_training)
    return out, residual, {self.key: mask}


class AttentionNet(common.ResidualNet):
  """Residual Attention Network (pre-activation units, BatchNorm)."""

  def __init__(self, num_classes: int, variant: str = '56', *,
               depth: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None,
               width: float = 1.0,
               mask_downsamplings: Optional[Sequence[int]] = None,
               bn_decay: float = 0.9, activation: str = 'relu',
               drop_rate: Optional[float] = None,
               fc_init: Optional[hk.initializers.Initializer] = None,
               remat: bool = False, name: str = 'AttentionNet'):
    """Builds the network.

    Args:
      num_classes: classifier outputs.
      variant: a key of `ATTENTION_VARIANTS` ('56' or '92').
      depth: Attention Modules per stage (plain units in stages whose
        `mask_downsamplings` is 0); None takes the variant's.
      widths: output channels per stage before `width`; bottleneck units are
        a quarter as wide inside.
      width: channel multiplier of the stem and every stage.
      mask_downsamplings: max pools of each stage's mask branch, 0 for a
        stage of plain units; None takes (3, 2, 1, 0) cut to `depth`'s
        stages.
      bn_decay: BatchNorm moving-average decay.
      activation: name of the (unscaled) nonlinearity.
      drop_rate, remat, name: see `common.ResidualNet`.
      fc_init: classifier weight initializer, N(0, 0.01) by default.
    """
    super().__init__(ATTENTION_VARIANTS, variant, depth=depth, widths=widths,
                     drop_rate=drop_rate, remat=remat, name=name)
    if mask_downsamplings is None:
      if len(self.depth) > len(_MASK_DOWNSAMPLINGS):
        raise ValueError(
            f'depth has {len(self.depth)} stages; pass mask_downsamplings '
            f'with one entry per stage (the default covers '
            f'{len(_MASK_DOWNSAMPLINGS)}).')
      mask_downsamplings = _MASK_DOWNSAMPLINGS[:len(self.depth)]
    try:
      mask_downsamplings = tuple(operator.index(d) for d in mask_downsamplings)
      ok = (len(mask_downsamplings) == len(self.depth)
            and min(mask_downsamplings) >= 0)
    except TypeError:
      ok = False
    if not ok:
      raise ValueError(
          f'mask_downsamplings must hold one integer >= 0 per stage of depth '
          f'{self.depth}; got {mask_downsamplings!r}.')
    self.activation = layers.raw_activation(activation)
    ch = common.scaled_channels(_STEM_WIDTH, width)
    self.initial_conv = layers.Conv2D(ch, kernel_shape=7, stride=2,
                                      with_bias=False,
                                      w_init=_HE_INIT,
                                      name='initial_conv')
    self.initial_norm = baselines.BatchNorm(bn_decay, name='initial_norm')
    self.blocks = []
    for stage, (num, pools) in enumerate(zip(self.depth, mask_downsamplings)):
      out_ch = common.scaled_channels(self.widths[stage], width)
      stride = 1 if stage == 0 else 2
      for i in range(num):
        first = i == 0
        if pools:
          self.blocks.append(AttentionModule(
              ch, out_ch, transition=first, stride=stride,
              downsamplings=pools,
              key=f'stage{stage + 1}/attention{i}/mask', bn_decay=bn_decay,
              activation=self.activation))
        else:
          self.blocks.append(baselines.ResBlock(
              ch, out_ch, stride=stride if first else 1,
              ordering='bn_relu_conv', bn_decay=bn_decay,
              activation=self.activation))
        ch = out_ch
    self.final_norm = baselines.BatchNorm(bn_decay, name='final_norm')
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """7x7/2 conv, BN-ReLU, 3x3/2 max pool: [N, H, W, 3] -> [N, H/4, W/4, C]."""
    out = self.activation(self.initial_norm(self.initial_conv(x),
                                            is_training))
    return _max_pool(out)

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """The pre-activation units leave their sum unnormalized: BN-ReLU it."""
    return self.activation(self.final_norm(x, is_training))


for _variant in ATTENTION_VARIANTS:
  registry.register(f'attention{_variant}', AttentionNet,
                    ATTENTION_VARIANTS[_variant], variant=_variant)
