"""High-order residual stacking: a residual block as one explicit RK step.

A residual block y = s + F(x) is one forward-Euler step of dy/dt = F(y)
with step 1 ([HO-ResNet] sec. 3). An s-stage explicit Runge-Kutta scheme
with Butcher tableau (A, b, c) spends s sub-blocks F_1..F_s (each with its
own parameters) on one step:

  k_1 = F_1(x)
  k_i = F_i(s + sum_{j<i} a_ij k_j),   i = 2..s
  y   = s + sum_i b_i k_i

where s is the block's shortcut (x itself, or x subsampled and padded /
projected in a transition block). The first stage sees the block input x,
not the shortcut, so that F_1 can do a transition block's striding and
channel change, as in a plain ResNet block.

`TABLEAUX` holds the schemes as data: 'euler' (a plain residual block),
'midpoint', 'rk4' (classical), 'rk8' (Verner's 14-stage eighth-order
scheme, the eighth-order member of his 8(9) pair) and 'rk8_authors' (the
coefficients of the paper's released code, which differ; see
`RK8_AUTHORS`). `stacked` runs any of them on any callables, Haiku modules
or plain NumPy functions alike; `stage_variances` gives the signal variance
each stage sees, for normalizer-free scaling.

Reference:
  [HO-ResNet] Luo, Sun, Zhou, Wu, Kamata. "Rethinking ResNets: Improved
    Stacking Strategies With High Order Schemes", arXiv 2103.15244 (2021).
  [Verner 1978] Verner, J. H. "Explicit Runge-Kutta Methods with Estimates
    of the Local Truncation Error", SIAM J. Numer. Anal. 15(4), 772-790.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence, Union

from nfnets import errors

_SQRT6 = math.sqrt(6.0)


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
  """An explicit Runge-Kutta scheme.

  Attributes:
    name: the name in `TABLEAUX`.
    a: [s, s] stage coefficients, strictly lower triangular (explicit).
    b: [s] output weights.
    c: [s] nodes; for a consistent scheme c_i = sum_j a_ij. The block
      executor does not use them (a residual network's F has no time
      argument); they document the scheme and check its coefficients.
    order: classical order p of the scheme (0 when not even consistent).
  """
  name: str
  a: tuple[tuple[float, ...], ...]
  b: tuple[float, ...]
  c: tuple[float, ...]
  order: int

  def __post_init__(self):
    s = len(self.b)
    if len(self.c) != s or len(self.a) != s or any(
        len(row) != s for row in self.a):
      raise ValueError(f'Tableau {self.name!r}: a must be [{s}, {s}] and c '
                       f'[{s}] for {s} weights b.')
    if any(self.a[i][j] != 0 for i in range(s) for j in range(i, s)):
      raise ValueError(f'Tableau {self.name!r} is not explicit: a must be '
                       'strictly lower triangular.')

  @property
  def num_stages(self) -> int:
    """Number of stages s, i.e. of sub-blocks F_i one step evaluates."""
    return len(self.b)


def _tableau(name: str, order: int, s: int,
             a: Mapping[tuple[int, int], Any], b: Mapping[int, Any],
             c: Sequence[Any]) -> ButcherTableau:
  """A tableau from its nonzero entries, 1-based as printed in the papers."""
  dense = [[0.0] * s for _ in range(s)]
  for (i, j), value in a.items():
    dense[i - 1][j - 1] = float(value)
  weights = [0.0] * s
  for i, value in b.items():
    weights[i - 1] = float(value)
  return ButcherTableau(
      name=name, a=tuple(tuple(row) for row in dense), b=tuple(weights),
      c=tuple(float(v) for v in c), order=order)


_R = Fraction

EULER = _tableau('euler', 1, 1, a={}, b={1: 1}, c=(0,))

# y = s + F_2(s + k_1 / 2): the explicit midpoint rule.
MIDPOINT = _tableau('midpoint', 2, 2, a={(2, 1): _R(1, 2)}, b={2: 1},
                    c=(0, _R(1, 2)))

RK4 = _tableau(
    'rk4', 4, 4,
    a={(2, 1): _R(1, 2), (3, 2): _R(1, 2), (4, 3): 1},
    b={1: _R(1, 6), 2: _R(1, 3), 3: _R(1, 3), 4: _R(1, 6)},
    c=(0, _R(1, 2), _R(1, 2), 1))


def _r6(p: int, q: int, d: int) -> float:
  """(p + q sqrt(6)) / d."""
  return (p + q * _SQRT6) / d


# Verner's eighth-order scheme: stages 1-14 of his 16-stage 8(9) pair
# [Verner 1978], the eighth-order weights (stages 15-16 serve only the
# ninth-order estimate). [HO-ResNet] calls it "Verner 8-9".
_RK8_A = {
    (2, 1): _R(1, 12),
    (3, 1): _R(1, 27), (3, 2): _R(2, 27),
    (4, 1): _R(1, 24), (4, 3): _R(1, 8),
    (5, 1): _r6(4, 94, 375), (5, 3): _r6(-94, -84, 125),
    (5, 4): _r6(328, 208, 375),
    (6, 1): _r6(9, -1, 150), (6, 4): _r6(312, 32, 1425),
    (6, 5): _r6(69, 29, 570),
    (7, 1): _r6(927, -347, 1250), (7, 4): _r6(-16248, 7328, 9375),
    (7, 5): _r6(-489, 179, 3750), (7, 6): _r6(14268, -5798, 9375),
    (8, 1): _R(2, 27), (8, 6): _r6(16, -1, 54), (8, 7): _r6(16, 1, 54),
    (9, 1): _R(19, 256), (9, 6): _r6(118, -23, 512),
    (9, 7): _r6(118, 23, 512), (9, 8): _R(-9, 256),
    (10, 1): _R(11, 144), (10, 6): _r6(266, -1, 864),
    (10, 7): _r6(266, 1, 864), (10, 8): _R(-1, 16), (10, 9): _R(-8, 27),
    (11, 1): _r6(5034, -271, 61440), (11, 7): _r6(7859, -1626, 10240),
    (11, 8): _r6(-2232, 813, 20480), (11, 9): _r6(-594, 271, 960),
    (11, 10): _r6(657, -813, 5120),
    (12, 1): _r6(5996, -3794, 405), (12, 6): _r6(-4342, -338, 9),
    (12, 7): _r6(154922, -40458, 135), (12, 8): _r6(-4176, 3794, 45),
    (12, 9): _r6(-340864, 242816, 405), (12, 10): _r6(26304, -15176, 45),
    (12, 11): _R(-26624, 81),
    (13, 1): _r6(3793, 2168, 103680), (13, 6): _r6(4042, 2263, 13824),
    (13, 7): _r6(-231278, 40717, 69120), (13, 8): _r6(7947, -2168, 11520),
    (13, 9): _r6(1048, -542, 405), (13, 10): _r6(-1383, 542, 720),
    (13, 11): _R(2624, 1053), (13, 12): _R(3, 1664),
    (14, 1): _R(-137, 1296), (14, 6): _r6(5642, -337, 864),
    (14, 7): _r6(5642, 337, 864), (14, 8): _R(-299, 48),
    (14, 9): _R(184, 81), (14, 10): _R(-44, 9), (14, 11): _R(-5120, 1053),
    (14, 12): _R(-11, 468), (14, 13): _R(16, 9),
}
_RK8_B = {1: _R(103, 1680), 8: _R(-27, 140), 9: _R(76, 105),
          10: _R(-201, 280), 11: _R(1024, 1365), 12: _R(3, 7280),
          13: _R(12, 35), 14: _R(9, 280)}
_RK8_C = (0, _R(1, 12), _R(1, 9), _R(1, 6), _r6(2, 2, 15), _r6(6, 1, 15),
          _r6(6, -1, 15), _R(2, 3), _R(1, 2), _R(1, 3), _R(1, 4), _R(4, 3),
          _R(5, 6), 1)

RK8 = _tableau('rk8', 8, 14, a=_RK8_A, b=_RK8_B, c=_RK8_C)

# The released code's "Verner 8-9" block (repository zlannnn/HO-ResNet,
# `Verner89Block`) agrees with `RK8` in every entry to the 11-16 digits it
# prints except four, each a transcription slip of the textbook value:
#   a_{6,1}   = 4/75          (9 - sqrt6)/150 with sqrt6 read as 1;
#                             textbook 0.04367, code 0.05333
#   a_{12,7}  = 114464/135    (154922 - 40458 sqrt6)/135 with sqrt6 read
#                             as 1; textbook 413.49, code 847.88
#   a_{12,10} = 11128 sqrt6/45  (26304 - 15176) sqrt6 / 45 instead of
#                             (26304 - 15176 sqrt6)/45; textbook -241.54,
#                             code 605.73
#   b_8       = +27/140       the code subtracts -27/140 k_8; textbook
#                             -27/140
# With b_8 = +27/140 the weights sum to 1 + 54/140 = 97/70, so the step is
# not consistent (order 0: its output is y + (97/70) h F(y) + O(h^2)); with
# b_8 corrected it would be first order only, the three a entries breaking
# the order-2 condition sum_i b_i c_i = 1/2.
# Nodes c here are the row sums of its a. Offered to reproduce the paper's
# numbers.
_RK8_AUTHORS_A = {**_RK8_A, (6, 1): _R(4, 75), (12, 7): _R(114464, 135),
                  (12, 10): 11128 * _SQRT6 / 45}
_RK8_AUTHORS_B = {**_RK8_B, 8: _R(27, 140)}
RK8_AUTHORS = _tableau(
    'rk8_authors', 0, 14, a=_RK8_AUTHORS_A, b=_RK8_AUTHORS_B,
    c=tuple(sum(float(v) for (i, _), v in _RK8_AUTHORS_A.items() if i == row)
            for row in range(1, 15)))

TABLEAUX: dict[str, ButcherTableau] = {
    t.name: t for t in (EULER, MIDPOINT, RK4, RK8, RK8_AUTHORS)}


class UnknownTableauError(errors.UserError, ValueError):
  """A stacking scheme that is not in `TABLEAUX`."""


def get_tableau(name: str) -> ButcherTableau:
  """The tableau called `name`; an unknown name names the nearest one.

  Raises:
    UnknownTableauError: `name` is not in `TABLEAUX`.
  """
  if name not in TABLEAUX:
    close = difflib.get_close_matches(str(name), list(TABLEAUX), n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise UnknownTableauError(
        f'Unknown stacking scheme {name!r}; use one of '
        f'{", ".join(TABLEAUX)}.{hint}')
  return TABLEAUX[name]


def _axpy(acc: Any, coef: float, k: Any) -> Any:
  """acc + coef * k, without multiplying by one."""
  return acc + (k if coef == 1 else coef * k)


def stacked(tableau: ButcherTableau, x: Any, shortcut: Any,
            sub_blocks: Sequence[Callable[[Any], Any]]) -> Any:
  """One explicit RK step of the sub-blocks: the high-order residual block.

  k_1 = F_1(x); k_i = F_i(shortcut + sum_{j<i} a_ij k_j) for i >= 2;
  returns shortcut + sum_i b_i k_i. Zero coefficients cost nothing and unit
  ones no multiply, so 'euler' is exactly shortcut + F_1(x). Works on JAX
  and NumPy arrays alike (the coefficients are Python floats).

  Args:
    tableau: the scheme.
    x: block input, e.g. [N, H, W, C_in]; only F_1 sees it.
    shortcut: the block's shortcut, shaped like every k_i, e.g.
      [N, H', W', C_out] (x itself in an identity block).
    sub_blocks: F_1..F_s, one callable per stage.

  Returns:
    The block output, shaped like `shortcut`.

  Raises:
    ValueError: the number of sub-blocks is not the tableau's stage count.
  """
  s = tableau.num_stages
  if len(sub_blocks) != s:
    raise ValueError(f'Tableau {tableau.name!r} has {s} stages; got '
                     f'{len(sub_blocks)} sub-blocks.')
  ks = []
  for i, sub_block in enumerate(sub_blocks):
    if i == 0:
      ks.append(sub_block(x))
      continue
    stage_input = shortcut
    for j in range(i):
      if tableau.a[i][j] != 0:
        stage_input = _axpy(stage_input, tableau.a[i][j], ks[j])
    ks.append(sub_block(stage_input))
  out = shortcut
  for b_i, k in zip(tableau.b, ks):
    if b_i != 0:
      out = _axpy(out, b_i, k)
  return out


def stage_variances(
    tableau: ButcherTableau, var_shortcut: float,
    var_k: Union[float, Sequence[float]],
) -> tuple[tuple[float, ...], float]:
  """Expected variances of each stage's input and of the block output.

  Assumes the shortcut and the k_j are uncorrelated (the assumption behind
  normalizer-free networks' variance bookkeeping), so
  Var(s + sum_j a_ij k_j) = Var(s) + sum_j a_ij^2 Var(k_j) and
  Var(out) = Var(s) + sum_i b_i^2 Var(k_i).

  Entry 0 of the stage variances is that same formula for row 1 (all
  a_1j = 0), i.e. `var_shortcut`. It is the first stage's input variance
  only when x is the shortcut (identity blocks); in a transition block the
  first stage sees x, whose variance the caller already tracks, and entry 0
  should be ignored.

  Args:
    tableau: the scheme.
    var_shortcut: Var(s) per element.
    var_k: Var(k_i) of each stage's output: one float for all stages or
      s floats.

  Returns:
    (stage input variances [s], output variance).

  Raises:
    ValueError: `var_k` has neither 1 nor s entries.
  """
  s = tableau.num_stages
  if isinstance(var_k, numbers.Real):
    var_k = (float(var_k),) * s
  var_k = tuple(float(v) for v in var_k)
  if len(var_k) != s:
    raise ValueError(f'Tableau {tableau.name!r} has {s} stages; got '
                     f'{len(var_k)} stage variances.')
  inputs = tuple(
      var_shortcut + sum(a_ij ** 2 * v for a_ij, v in zip(row, var_k))
      for row in tableau.a)
  output = var_shortcut + sum(b_i ** 2 * v for b_i, v in zip(tableau.b, var_k))
  return inputs, output
