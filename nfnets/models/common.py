"""Pieces shared by the model families: the stem -> blocks -> pooled head
network (`ResidualNet`), the per-stage layout and its checks, the NF
alpha/beta variance schedule, group-width rounding, the output container
for per-block activations, and high-order residual stacking
(`HighOrderBlock`: consecutive blocks regrouped into one Runge-Kutta step)."""
from __future__ import annotations

import dataclasses
import difflib
import operator
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import errors
from nfnets import layers
from nfnets.layers import high_order

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


def block_plans(depths: Sequence[int], alpha: float, stochdepth_rate: float,
                tableau: Optional[high_order.ButcherTableau] = None,
                variance_rule: str = 'scheme') -> list[BlockPlan]:
  """Lays out the NF variance schedule ([NF-ResNet] sec. 4.1).

  The residual stream is x_{l+1} = x_l + alpha * f(x_l / beta_l) with
  beta_l = sqrt(Var(x_l)), so Var(x_{l+1}) = Var(x_l) + alpha^2. At a stage's
  transition block the shortcut sees the (downscaled) normalised input, so the
  variance resets to 1 + alpha^2 after it.

  With a high-order `tableau` of s stages, `depths` count sub-blocks, s per
  block (see `resolve_stacking`), and there is one plan per sub-block. Under
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
    One `BlockPlan` per (sub-)block, in network order.

  Raises:
    StackingError: an unknown `variance_rule`, or a stage depth that is not
      a multiple of the tableau's stages.
  """
  check_variance_rule(variance_rule)
  if tableau is None or tableau.num_stages == 1:
    return _euler_plans(depths, alpha, stochdepth_rate)
  check_stacking_depths(depths, tableau)
  s = tableau.num_stages
  if variance_rule == 'euler':
    return [dataclasses.replace(p, sub_block=p.index % s, num_sub_blocks=s)
            for p in _euler_plans(depths, alpha, stochdepth_rate)]
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
        plans.append(BlockPlan(
            stage=stage, index=index, first_in_stage=transition and i == 0,
            beta=1.0 / inputs[i] ** 0.5,
            stochdepth_rate=stochdepth_rate * index / num_sub_blocks,
            expected_var=after[i], sub_block=i, num_sub_blocks=s))
        index += 1
      var_in = var_out
  return plans


def _euler_plans(depths: Sequence[int], alpha: float,
                 stochdepth_rate: float) -> list[BlockPlan]:
  """`block_plans` without stacking: the NF-ResNet schedule."""
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
      With high-order stacking one entry per sub-block (`HighOrderBlock`):
      the stream after it, i.e. the next sub-block's input, or the block's
      output after its last sub-block.
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
    stochdepth(branch); a high-order block (`HighOrderBlock`) combines the
    shortcut and the k of its sub-blocks instead.
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


class HighOrderBlock:
  """Consecutive residual blocks regrouped into one explicit RK step.

  [HO-ResNet] (Luo et al. 2021) reads a residual stack as forward-Euler
  steps of dy/dt = F(y) and regroups s consecutive blocks, with their own
  parameters, into one step of an s-stage Runge-Kutta scheme
  (`high_order.stacked`):

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
        branch)`, e.g. `NFResidualBlock`s.
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


class ResidualNet(hk.Module):
  """Stem -> residual blocks -> head features -> mean pool -> dropout -> fc.

  The forward pass shared by every family. A subclass builds, in its
  `__init__` and in the order its parameter names depend on, the modules its
  `stem` and `head_features` use, `self.blocks` (each called as
  block(x, is_training) -> (output, residual branch), or (output, residual
  branch, {name: attention mask}) for `Activations.masks`, or a
  `HighOrderBlock`) and the classifier `self.fc`.
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
      if isinstance(block, HighOrderBlock):
        # One entry per sub-block: the stream after it, and its branch.
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
