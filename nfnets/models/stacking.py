"""High-order residual stacking of the ImageNet ResNets ([HO-ResNet]).

[HO-ResNet] reads a residual stack as forward-Euler steps of dy/dt = F(y)
and regroups s consecutive blocks, with their own parameters, into one step
of an s-stage explicit Runge-Kutta scheme (`layers.high_order`). Here a
family builds its blocks as usual, one per sub-block, and
`high_order_blocks` groups them into `HighOrderBlock`s; stage depths count
sub-blocks (`resolve_stacking` checks them). For NF networks `block_plans`
sets every sub-block's beta from the scheme's variance (derivation and
measurements in docs/high_order_nf.md) or keeps the Euler network's.

Reference:
  [HO-ResNet] Luo, Sun, Zhou, Wu, Kamata. "Rethinking ResNets: Improved
    Stacking Strategies With High Order Schemes", arXiv 2103.15244 (2021).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Optional, Sequence

import jax

from nfnets import errors
from nfnets.layers import high_order
from nfnets.models import common


class StackingError(errors.UserError, ValueError):
  """A high-order stacking option the network cannot use."""


# How an NF network with high-order stacking sets its betas (`block_plans`).
VARIANCE_RULES = ('scheme', 'euler')


def check_variance_rule(variance_rule: str) -> None:
  """Raises `StackingError` unless `variance_rule` is in `VARIANCE_RULES`."""
  if variance_rule not in VARIANCE_RULES:
    close = difflib.get_close_matches(str(variance_rule), VARIANCE_RULES, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise StackingError(
        f'Unknown ho_variance {variance_rule!r}; use one of '
        f'{", ".join(VARIANCE_RULES)}.{hint}')


def check_stacking_depths(depths: Sequence[int],
                          tableau: high_order.ButcherTableau) -> None:
  """Raises `StackingError` unless every stage holds whole high-order blocks.

  With stacking, a stage's depth counts sub-blocks, `tableau.num_stages` per
  block; the message gives the nearest valid depths.
  """
  s = tableau.num_stages
  if all(d % s == 0 for d in depths):
    return
  # Nearest multiple of s, at least one block; halves round up.
  nearest = tuple(max(s, int(d / s + 0.5) * s) for d in depths)
  raise StackingError(
      f'depth {tuple(depths)} counts sub-blocks, and a {tableau.name!r} '
      f'block has {s}: every stage needs a multiple of {s}. Nearest valid '
      f'depth: {nearest}.')


def resolve_stacking(stacking: str,
                     depths: Sequence[int]) -> high_order.ButcherTableau:
  """The tableau called `stacking`, checked against the stage depths.

  Args:
    stacking: a name in `high_order.TABLEAUX` ('euler', 'midpoint', 'rk4',
      'rk8', ...).
    depths: sub-blocks per stage.

  Raises:
    UnknownTableauError: an unknown name (the message names the nearest).
    StackingError: a depth that is not a multiple of the scheme's stages.
  """
  tableau = high_order.get_tableau(stacking)
  check_stacking_depths(depths, tableau)
  return tableau


def block_plans(depths: Sequence[int], alpha: float, stochdepth_rate: float,
                tableau: Optional[high_order.ButcherTableau] = None,
                variance_rule: str = 'scheme') -> list[common.BlockPlan]:
  """`common.block_plans` for a network of high-order blocks.

  Without stacking (`tableau` None or one-stage), `common.block_plans`: the
  stream's variance grows by alpha^2 per block. With a high-order `tableau`
  of s stages, `depths` count sub-blocks, s per block (see
  `resolve_stacking`), and there is one plan per sub-block. Under
  `variance_rule='scheme'` each sub-block's beta is 1 / sqrt of its own
  input's expected variance and the stream's variance follows the scheme
  (`high_order.stage_variances` with Var(k) = alpha^2; derivation in
  docs/high_order_nf.md): Var(y) = Var(s) + alpha^2 sum_i b_i^2 per block,
  Var(s) being 1 after a transition and the block input's otherwise. Under
  `variance_rule='euler'` every sub-block is planned as if it were a plain
  block of an Euler network of the same depth (the betas of the network
  without stacking); its `expected_var` is then that network's, which the
  high-order network does not follow.

  Args:
    depths: blocks (sub-blocks with a high-order tableau) per stage.
    alpha: residual branch scale.
    stochdepth_rate: drop rate of the last (sub-)block; it grows linearly
      with the index over the network.
    tableau: the stacking scheme; None or a one-stage scheme is Euler.
    variance_rule: 'scheme' or 'euler' (see above; ignored for Euler).

  Returns:
    One `common.BlockPlan` per (sub-)block, in network order.

  Raises:
    StackingError: an unknown `variance_rule`, or a stage depth that is not
      a multiple of the tableau's stages.
  """
  check_variance_rule(variance_rule)
  if tableau is None or tableau.num_stages == 1:
    return common.block_plans(depths, alpha, stochdepth_rate)
  check_stacking_depths(depths, tableau)
  s = tableau.num_stages
  if variance_rule == 'euler':
    return [dataclasses.replace(p, sub_block=p.index % s, num_sub_blocks=s)
            for p in common.block_plans(depths, alpha, stochdepth_rate)]
  plans = []
  num_sub_blocks = sum(depths)
  var_in = 1.0  # The stem's output, as for Euler.
  index = 0
  for stage, depth in enumerate(depths):
    for block in range(depth // s):
      transition = block == 0
      # A transition's shortcut is a conv of the normalised input.
      var_shortcut = 1.0 if transition else var_in
      stage_vars, var_out = high_order.stage_variances(
          tableau, var_shortcut, alpha ** 2)
      # The first sub-block sees the block input x, the others
      # s + sum_j a_ij k_j; after sub-block i comes the input of i + 1, or
      # the block output after the last one.
      inputs = (var_in,) + stage_vars[1:]
      after = stage_vars[1:] + (var_out,)
      for i in range(s):
        plans.append(common.BlockPlan(
            stage=stage, index=index, first_in_stage=transition and i == 0,
            beta=1.0 / inputs[i] ** 0.5,
            stochdepth_rate=stochdepth_rate * index / num_sub_blocks,
            expected_var=after[i], sub_block=i, num_sub_blocks=s))
        index += 1
      var_in = var_out
  return plans


class HighOrderBlock:
  """Consecutive residual blocks regrouped into one explicit RK step.

  One step of an s-stage Runge-Kutta scheme (`high_order.stacked`) over s
  consecutive blocks, each with its own parameters:

    k_1 = F_1(x),  k_i = F_i(s + sum_{j<i} a_ij k_j),  y = s + sum_i b_i k_i,

  where F_i is the i-th sub-block's k (for NF blocks alpha * skip_gain *
  stochdepth(branch)) and s the first sub-block's shortcut: x, or at a
  transition its strided projection. The first sub-block is the usual
  block, the others same-width non-transition blocks, so the network has
  the parameters of the Euler network of the same depth.

  A plain Python object, not a Haiku module: the sub-blocks keep the
  parameter paths they have in that Euler network (`nf_res_block_{m}`,
  `res_block_{m}` with m the sub-block's index over the network), so the
  two networks' parameter trees are the same and either's weights load
  into the other.

  Called as block(x, is_training) -> (y, branches, stream), where
  `branches` holds each sub-block's residual branch and `stream` the
  residual stream after each sub-block (the next sub-block's input, the
  block output after the last), s entries each.
  """

  def __init__(self, tableau: high_order.ButcherTableau,
               sub_blocks: Sequence[Any],
               post_activation: Optional[
                   Callable[[jax.Array], jax.Array]] = None):
    """Groups the sub-blocks.

    Args:
      tableau: the scheme; its stage count must be len(sub_blocks).
      sub_blocks: modules with `residual(x, is_training) -> (shortcut, k,
        branch)`, e.g. `common.NFResidualBlock`s.
      post_activation: for post-activation networks (whose blocks output
        act(shortcut + k)), applied to every stage input and to the output,
        so that every sub-block sees an activated stream as in the Euler
        network; None for pre-activation blocks.
    """
    if len(sub_blocks) != tableau.num_stages:
      raise ValueError(f'Tableau {tableau.name!r} has {tableau.num_stages} '
                       f'stages; got {len(sub_blocks)} sub-blocks.')
    self.tableau = tableau
    self.sub_blocks = list(sub_blocks)
    self.post_activation = post_activation

  def __call__(self, x: jax.Array, is_training: bool
               ) -> tuple[jax.Array, tuple[jax.Array, ...],
                          tuple[jax.Array, ...]]:
    """Returns (output, branches, stream), see the class docstring."""
    shortcut, k1, branch1 = self.sub_blocks[0].residual(x, is_training)
    branches, stream = [branch1], []

    def stage(sub_block):
      def f(z):
        if self.post_activation is not None:
          z = self.post_activation(z)
        stream.append(z)
        _, k, branch = sub_block.residual(z, is_training)
        branches.append(branch)
        return k
      return f

    out = high_order.stacked(
        self.tableau, x, shortcut,
        [lambda _: k1] + [stage(b) for b in self.sub_blocks[1:]])
    if self.post_activation is not None:
      out = self.post_activation(out)
    stream.append(out)
    return out, tuple(branches), tuple(stream)


def high_order_blocks(sub_blocks: Sequence[Any],
                      tableau: high_order.ButcherTableau,
                      post_activation: Optional[
                          Callable[[jax.Array], jax.Array]] = None
                      ) -> list[Any]:
  """Groups sub-blocks, in network order, into `HighOrderBlock`s.

  Each run of `tableau.num_stages` consecutive sub-blocks becomes one block
  (stage depths are multiples of it, see `check_stacking_depths`, so no
  block straddles two stages). A one-stage tableau (Euler) returns the
  sub-blocks themselves: the network without stacking.
  """
  s = tableau.num_stages
  if s == 1:
    return list(sub_blocks)
  return [HighOrderBlock(tableau, sub_blocks[i:i + s], post_activation)
          for i in range(0, len(sub_blocks), s)]
