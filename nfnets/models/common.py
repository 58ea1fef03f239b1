"""Pieces shared by the model families: the stem -> blocks -> pooled head
network (`ResidualNet`), the per-stage layout and its checks, the NF
alpha/beta variance schedule, group-width rounding, and the output container
for per-block activations."""
from __future__ import annotations

import dataclasses
import operator
from typing import Callable, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers

ConvFactory = Callable[..., hk.Module]
Block = Callable[..., tuple[jax.Array, jax.Array]]


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
      output (at initialization, with skip gains set to one).
  """
  stage: int
  index: int
  first_in_stage: bool
  beta: float
  stochdepth_rate: float
  expected_var: float


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
    branches: every block's residual-branch output before stochastic depth,
      the skip gain and alpha (what signal propagation plots call the
      residual branch), same shapes as `blocks`.
    pooled: globally pooled features before dropout and the classifier [N, D].
  """
  stem: Optional[jax.Array] = None
  blocks: list[jax.Array] = dataclasses.field(default_factory=list)
  branches: list[jax.Array] = dataclasses.field(default_factory=list)
  pooled: Optional[jax.Array] = None


jax.tree_util.register_dataclass(
    Activations, data_fields=['stem', 'blocks', 'branches', 'pooled'],
    meta_fields=[])


class ResidualNet(hk.Module):
  """Stem -> residual blocks -> head features -> mean pool -> dropout -> fc.

  The forward pass shared by every family. A subclass builds, in its
  `__init__` and in the order its parameter names depend on, the modules its
  `stem` and `head_features` use, `self.blocks` (each called as
  block(x, is_training) -> (output, residual branch)) and the classifier
  `self.fc`.
  """

  blocks: list[Block]
  fc: Callable[[jax.Array], jax.Array]

  def __init__(self, *, drop_rate: float, remat: bool, name: str):
    """Sets the dropout rate before `fc` and whether to remat the blocks."""
    super().__init__(name=name)
    self.drop_rate = drop_rate
    self.remat = remat

  def stem(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Images [N, H, W, 3] -> the first block's input [N, H', W', C]."""
    raise NotImplementedError

  def head_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Last block's output -> the features to pool, [N, H, W, D]."""
    raise NotImplementedError

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
      out, branch = layers.maybe_remat(block, self.remat,
                                       is_training=is_training)(out)
      if return_activations:
        acts.blocks.append(out)
        acts.branches.append(branch)
    pooled = jnp.mean(self.head_features(out, is_training), axis=(1, 2))
    acts.pooled = pooled  # [N, D]
    if is_training and self.drop_rate > 0.0:
      pooled = hk.dropout(hk.next_rng_key(), self.drop_rate, pooled)
    logits = self.fc(pooled)
    return (logits, acts) if return_activations else logits
