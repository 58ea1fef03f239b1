"""Pieces shared by the model families: the stem -> blocks -> pooled head
network (`ResidualNet`), the per-stage layout and its checks, the NF
alpha/beta variance schedule, group-width rounding, and the output container
for per-block activations (high-order stacking regroups the blocks in
`stacking`)."""
from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers

ConvFactory = Callable[..., hk.Module]
# (output, residual branch[, {name: attention mask}]), see `ResidualNet`.
Block = Callable[..., tuple]


def stage_layout(
    depth: Optional[Sequence[int]], widths: Optional[Sequence[int]],
    default_depth: Sequence[int], default_widths: Sequence[int],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Blocks and output widths per stage: the overrides, else the variant's.

  Any number of stages (at least one) is valid: every stage after the first
  halves the resolution, so a test can build a one- or two-stage network.

  Raises:
    ValueError: `depth` or `widths` empty or with an entry that is not a
      positive integer, or the two of different lengths.
  """
  layout = {}
  for what, given, default in (('depth', depth, default_depth),
                               ('widths', widths, default_widths)):
    values = default if given is None else given
    try:
      layout[what] = tuple(operator.index(v) for v in values)
      ok = bool(layout[what]) and min(layout[what]) >= 1
    except TypeError:
      ok = False
    if not ok:
      raise ValueError(f'{what} must be a non-empty sequence of positive '
                       f'integers, one per stage; got {values!r}.')
  depth, widths = layout['depth'], layout['widths']
  if len(depth) != len(widths):
    raise ValueError(
        f'depth has {len(depth)} stages but widths has {len(widths)} '
        f'({widths}); pass widths with one entry per stage of depth.')
  return depth, widths


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """Where a residual block sits and how it scales its signal.

  Attributes:
    stage: stage index (0-based).
    index: block index over the whole network (0-based).
    first_in_stage: True for a stage's transition block.
    beta: 1 / expected std of the block's input; the branch input is multiplied
      by it so that each branch sees unit variance at initialization.
    stochdepth_rate: the block's drop rate, growing linearly with `index`.
    expected_var: the expected variance of the residual stream at the block's
      output (at initialization, with skip gains set to one). For a
      sub-block of a high-order block, the variance after it: the next
      sub-block's input, or the block's output after the last sub-block.
    sub_block: position (Butcher stage, 0-based) of the block within its
      high-order block; 0 without high-order stacking.
    num_sub_blocks: stages of the scheme it belongs to (1: plain residual
      block, i.e. Euler).
  """
  stage: int
  index: int
  first_in_stage: bool
  beta: float
  stochdepth_rate: float
  expected_var: float
  sub_block: int = 0
  num_sub_blocks: int = 1


def block_plans(depths: Sequence[int], alpha: float,
                stochdepth_rate: float) -> list[BlockPlan]:
  """Lays out the NF variance schedule ([NF-ResNet] sec. 4.1).

  The residual stream is x_{l+1} = x_l + alpha * f(x_l / beta_l) with
  beta_l = sqrt(Var(x_l)), so Var(x_{l+1}) = Var(x_l) + alpha^2. At a stage's
  transition block the shortcut sees the (downscaled) normalised input, so the
  variance resets to 1 + alpha^2 after it.
  """
  plans = []
  num_blocks = sum(depths)
  expected_var = 1.0
  index = 0
  for stage, depth in enumerate(depths):
    for block in range(depth):
      beta = 1.0 / expected_var ** 0.5
      if block == 0:
        expected_var = 1.0
      expected_var += alpha ** 2
      plans.append(BlockPlan(
          stage=stage, index=index, first_in_stage=block == 0, beta=beta,
          stochdepth_rate=stochdepth_rate * index / num_blocks,
          expected_var=expected_var))
      index += 1
  return plans


def grouped_width(width: int, group_size: int) -> tuple[int, int]:
  """Rounds `width` down to a whole number of groups of `group_size` channels.

  Returns (rounded width, number of groups). A width narrower than one group
  becomes a single group of `width` channels, so that width-multiplied tiny
  models stay valid where the reference would produce zero groups.
  """
  if width < 1:
    raise ValueError(f'Block width must be at least 1, got {width}.')
  if width < group_size:
    return width, 1
  groups = width // group_size
  return groups * group_size, groups


def scaled_channels(channels: int, multiplier: float) -> int:
  """Channels after a width multiplier, at least one."""
  return max(1, int(channels * multiplier))


@dataclasses.dataclass
class Activations:
  """Intermediate tensors returned with `return_activations=True`.

  Attributes:
    stem: stem output [N, H, W, C].
    blocks: residual-stream output of every block, [N, H_i, W_i, C_i] each.
      With high-order stacking one entry per sub-block
      (`stacking.HighOrderBlock`): the stream after it, i.e. the next
      sub-block's input, or the block's output after its last sub-block.
    branches: every block's (sub-block's) residual-branch output before
      stochastic depth, the skip gain and alpha (what signal propagation
      plots call the residual branch), same shapes as `blocks`.
    pooled: globally pooled features before dropout and the classifier [N, D].
    masks: attention masks by name, e.g. 'stage1/attention0/mask'
      [N, H, W, C], from blocks that return them (empty for the families
      without attention).
  """
  stem: Optional[jax.Array] = None
  blocks: list[jax.Array] = dataclasses.field(default_factory=list)
  branches: list[jax.Array] = dataclasses.field(default_factory=list)
  pooled: Optional[jax.Array] = None
  masks: dict[str, jax.Array] = dataclasses.field(default_factory=dict)


jax.tree_util.register_dataclass(
    Activations, data_fields=['stem', 'blocks', 'branches', 'pooled', 'masks'],
    meta_fields=[])


class NFResidualBlock(hk.Module):
  """The NF bottleneck residual block every NF family builds on.

  The branch sees act(x) * beta ([NF-ResNet] sec. 4.1) and runs
  conv0 (1x1) -> conv1 (k x k, grouped, strided) [-> conv1b] -> conv2 (1x1)
  with activations in between, gated by Squeeze-Excite (2 * SE(h) * h) either
  on the inner width ('mid', before conv2) or on the output ('out'). The
  block returns (x' + alpha * skip_gain * stochdepth(branch), branch), where
  x' is x itself or, at a transition, a 1x1 conv of act(x) * beta: after a
  2x2 average pool when `pool_shortcut` and strided, else the conv carries
  the stride. Families subclass it to name their blocks (parameter paths
  follow the class name) and choose the options.
  """

  def __init__(self, in_ch: int, out_ch: int, *, width: int, groups: int = 1,
               kernel_size: int = 3, stride: int = 1,
               two_mid_convs: bool = False, se: Optional[str] = None,
               se_ratio: float = 0.5, pool_shortcut: bool = True,
               beta: float = 1.0, alpha: float = 0.2,
               activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
               conv: ConvFactory = layers.WSConv2D,
               stochdepth_rate: float = 0.0, name: Optional[str] = None):
    """Builds the block.

    Args:
      in_ch: input channels.
      out_ch: output channels.
      width: channels of the inner convs (conv0, conv1, conv1b).
      groups: groups of the k x k convs.
      kernel_size: k.
      stride: stride of conv1 (and of the transition shortcut).
      two_mid_convs: a second k x k conv, `conv1b` (NFNets).
      se: None, 'mid' (on the inner width) or 'out' (on the output).
      se_ratio: Squeeze-Excite hidden width as a fraction of its input.
      pool_shortcut: subsample the strided shortcut by average pooling.
      beta: 1 / expected std of the block's input.
      alpha: residual branch scale.
      activation: the (gamma-scaled) nonlinearity.
      conv: convolution module factory.
      stochdepth_rate: probability of dropping the branch in training.
      name: module name.
    """
    if se not in (None, 'mid', 'out'):
      raise ValueError(f"se must be None, 'mid' or 'out'; got {se!r}.")
    super().__init__(name=name)
    self.stride, self.beta, self.alpha = stride, beta, alpha
    self.activation = activation
    self.width = width
    self.se_position = se
    self.pool_shortcut = pool_shortcut
    self.conv0 = conv(width, kernel_shape=1, name='conv0')
    self.conv1 = conv(width, kernel_shape=kernel_size, stride=stride,
                      feature_group_count=groups, name='conv1')
    self.conv1b = None
    if two_mid_convs:
      self.conv1b = conv(width, kernel_shape=kernel_size,
                         feature_group_count=groups, name='conv1b')
    self.conv2 = conv(out_ch, kernel_shape=1, name='conv2')
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, kernel_shape=1,
                                stride=1 if pool_shortcut else stride,
                                name='conv_shortcut')
    se_ch = width if se == 'mid' else out_ch
    self.se = layers.SqueezeExcite(se_ch, se_ch, se_ratio) if se else None
    self.stoch_depth = layers.StochDepth(stochdepth_rate)

  def _gate(self, h: jax.Array) -> jax.Array:
    # 2 * SE: the gate's expected value at init (0.5) does not halve the
    # signal ([NFNet] sec. 3).
    return 2 * self.se(h) * h

  def __call__(self, x: jax.Array,
               is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (block output, residual branch output), both [N, H', W', out_ch]."""
    shortcut, k, branch = self.residual(x, is_training)
    return k + shortcut, branch

  def residual(self, x: jax.Array, is_training: bool
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The block's parts: (shortcut, k, branch), each [N, H', W', out_ch].

    The block output is shortcut + k with k = alpha * skip_gain *
    stochdepth(branch); a high-order block (`stacking.HighOrderBlock`)
    combines the shortcut and the k of its sub-blocks instead.
    """
    out = self.activation(x) * self.beta
    if self.pool_shortcut and self.stride > 1:
      shortcut = self.conv_shortcut(layers.avg_pool_2x2(out))
    elif self.use_projection:
      shortcut = self.conv_shortcut(out)
    else:
      shortcut = x
    out = self.conv1(self.activation(self.conv0(out)))
    if self.conv1b is not None:
      out = self.conv1b(self.activation(out))
    if self.se_position == 'mid':
      out = self._gate(out)
    branch = self.conv2(self.activation(out))
    if self.se_position == 'out':
      branch = self._gate(branch)
    out = self.stoch_depth(branch, is_training)
    out = out * layers.skip_gain(out.dtype)
    return shortcut, out * self.alpha, branch


class ResidualNet(hk.Module):
  """Stem -> residual blocks -> head features -> mean pool -> dropout -> fc.

  The forward pass shared by every family. A subclass builds, in its
  `__init__` and in the order its parameter names depend on, the modules its
  `stem` and `head_features` use, `self.blocks` (each called as
  block(x, is_training) -> (output, residual branch), or (output, residual
  branch, {name: attention mask}) for `Activations.masks`, or (output,
  (branch per sub-block), (stream after each sub-block)) for a block of
  sub-blocks, `stacking.HighOrderBlock`) and the classifier `self.fc`.
  """

  blocks: list[Block]
  fc: Callable[[jax.Array], jax.Array]
  activation: Callable[[jax.Array], jax.Array]
  final_conv: Optional[Callable[[jax.Array], jax.Array]] = None

  def __init__(self, variants: Mapping[str, Any], variant: str, *,
               depth: Optional[Sequence[int]],
               widths: Optional[Sequence[int]], drop_rate: Optional[float],
               remat: bool, name: str):
    """Resolves the architecture table's row and its overrides.

    Sets `self.depth` and `self.widths` (blocks and output channels per
    stage, see `stage_layout`), `self.drop_rate` (dropout before `fc`) and
    `self.remat` (rematerialize each block in the backward pass).

    Args:
      variants: the family's table, variant -> `ModelSpec`.
      variant: a key of `variants`.
      depth: blocks per stage, any number of stages; None takes the
        variant's.
      widths: output channels per stage before any width multiplier, one per
        stage of `depth`; None takes the variant's.
      drop_rate: dropout before the classifier; None takes the variant's.
      remat: rematerialize each block in the backward pass (less activation
        memory for about one more forward pass of compute).
      name: module name; parameter paths start with it.

    Raises:
      ValueError: an unknown variant (the message lists the known ones) or
        an invalid depth/widths override.
    """
    if variant not in variants:
      raise ValueError(f'Unknown {name} variant {variant!r}; known: '
                       f'{", ".join(variants)}.')
    spec = variants[variant]
    self.depth, self.widths = stage_layout(depth, widths, spec.depth,
                                           spec.widths)
    super().__init__(name=name)
    self.drop_rate = spec.drop_rate if drop_rate is None else drop_rate
    self.remat = remat

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Images [N, H, W, 3] -> the first block's input [N, H', W', C]."""
    raise NotImplementedError

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Last block's output -> the features to pool, [N, H, W, D].

    By default the NF head: the pre-activation blocks leave their sum
    unactivated, so it is activated (`self.activation`), after the widening
    1x1 `self.final_conv` where the family has one.
    """
    del is_training
    if self.final_conv is not None:
      x = self.final_conv(x)
    return self.activation(x)

  def __call__(
      self, x: jax.Array, is_training: bool = True,
      return_activations: bool = False,
  ) -> Union[jax.Array, tuple[jax.Array, Activations]]:
    """Maps NHWC images to logits [N, num_classes] (no softmax).

    With `return_activations`, returns (logits, `Activations`).
    """
    acts = Activations()
    out = self.stem(x, is_training)
    acts.stem = out
    for block in self.blocks:
      out, branch, *extra = layers.maybe_remat(block, self.remat,
                                               is_training=is_training)(out)
      if not return_activations:
        continue
      if isinstance(branch, tuple):
        # A block of sub-blocks: the stream after each, and its branch.
        acts.blocks.extend(extra[0])
        acts.branches.extend(branch)
        continue
      acts.blocks.append(out)
      acts.branches.append(branch)
      for named in extra:
        acts.masks.update(named)
    pooled = jnp.mean(self.head_features(out, is_training), axis=(1, 2))
    acts.pooled = pooled  # [N, D]
    if is_training and self.drop_rate > 0.0:
      pooled = hk.dropout(hk.next_rng_key(), self.drop_rate, pooled)
    logits = self.fc(pooled)
    return (logits, acts) if return_activations else logits


def deep_stem_convs(conv: ConvFactory, out_ch: int,
                    width: float) -> list[hk.Module]:
  """The NFNet stem's four 3x3 convs: 16, 32, 64 (times `width`), `out_ch`.

  A function, not a method: Haiku names modules made inside a method after
  it (`~method/`), and the stem's parameter names are an interface.
  """
  stem_widths = [scaled_channels(c, width) for c in (16, 32, 64)]
  return [
      conv(stem_widths[0], kernel_shape=3, stride=2, name='stem_conv0'),
      conv(stem_widths[1], kernel_shape=3, stride=1, name='stem_conv1'),
      conv(stem_widths[2], kernel_shape=3, stride=1, name='stem_conv2'),
      conv(out_ch, kernel_shape=3, stride=2, name='stem_conv3'),
  ]


class DeepStemNet(ResidualNet):
  """A `ResidualNet` with the NFNet stem (`deep_stem_convs`).

  Its `__init__` sets `self.stem_convs = deep_stem_convs(...)` and
  `self.activation`.
  """

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Four 3x3 convs, two of them strided, activations between them:
    [N, H, W, 3] -> [N, H/4, W/4, C]."""
    del is_training
    out = x
    for i, stem_conv in enumerate(self.stem_convs):
      out = stem_conv(out if i == 0 else self.activation(out))
    return out
