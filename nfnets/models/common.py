"""Pieces shared by the NF model families: the alpha/beta variance schedule,
group-width rounding, and the output container for per-block activations."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import haiku as hk
import jax

ConvFactory = Callable[..., hk.Module]


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

