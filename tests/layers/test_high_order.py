"""Tests for nfnets.layers.high_order: tableaux, the block executor, variances.

The order checks are independent of the tableaux' sources: the block on a
linear map must match the matrix exponential to its order, and the tableaux
must satisfy every Butcher order condition (one per rooted tree) up to it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from nfnets import errors
from nfnets.layers import high_order

TEXTBOOK = ('euler', 'midpoint', 'rk4', 'rk8')


def _step(tableau, h, a, x):
  """The block with every F_i(v) = h A v and shortcut = x, in float64."""
  f = lambda v: h * (a @ v)
  return high_order.stacked(tableau, x, x, [f] * tableau.num_stages)


def _linear_errors(tableau, hs):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 4))
  a /= np.linalg.norm(a, 2)
  x = rng.normal(size=4)
  return [np.linalg.norm(_step(tableau, h, a, x) - scipy.linalg.expm(h * a) @ x)
          for h in hs]


@pytest.mark.parametrize('name', TEXTBOOK)
def test_linear_error_shrinks_as_h_to_the_order_plus_one(name):
  tableau = high_order.get_tableau(name)
  hs = np.array([0.8, 0.4, 0.2])
  errs = _linear_errors(tableau, hs)
  slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
  assert abs(slope - (tableau.order + 1)) < 0.3, (name, slope, errs)


def test_authors_rk8_is_not_eighth_order():
  hs = np.array([0.8, 0.4, 0.2])
  errs = _linear_errors(high_order.get_tableau('rk8_authors'), hs)
  slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
  # Its weights sum to 97/70: the local error is O(h) (slope 1.2 here),
  # where rk8's is O(h^9).
  assert slope < 1.5, slope
  assert high_order.RK8_AUTHORS.order == 0


@functools.lru_cache(maxsize=None)
def _rooted_trees(n):
  """Rooted trees with n nodes, each a sorted tuple of its child subtrees."""
  if n == 1:
    return ((),)

  def forests(m, smallest):
    # Multisets of trees with m nodes in all, in non-decreasing order.
    if m == 0:
      yield ()
      return
    for size in range(1, m + 1):
      for tree in _rooted_trees(size):
        if (size, tree) >= smallest:
          for rest in forests(m - size, (size, tree)):
            yield (tree,) + rest

  return tuple(sorted(set(forests(n - 1, (0, ())))))


def _size(tree):
  return 1 + sum(_size(child) for child in tree)


def _density(tree):
  """gamma(t): the exact solution's Taylor coefficient is 1 / gamma(t)."""
  return _size(tree) * np.prod([_density(child) for child in tree])


def _stage_weights(a, tree):
  """Phi_i(t) for every stage: prod over children of (A Phi(child))_i."""
  out = np.ones(a.shape[0])
  for child in tree:
    out = out * (a @ _stage_weights(a, child))
  return out


def test_rooted_tree_counts():
  # OEIS A000081; 200 order conditions up to order 8.
  assert [len(_rooted_trees(n)) for n in range(1, 9)] == [
      1, 1, 2, 4, 9, 20, 48, 115]


def _satisfied_order(tableau, up_to):
  a, b = np.array(tableau.a), np.array(tableau.b)
  for n in range(1, up_to + 1):
    for tree in _rooted_trees(n):
      gamma = _density(tree)
      if abs(gamma * (b @ _stage_weights(a, tree)) - 1) > 1e-10:
        return n - 1
  return up_to


@pytest.mark.parametrize('name', TEXTBOOK)
def test_butcher_order_conditions_hold_exactly_to_the_order(name):
  tableau = high_order.get_tableau(name)
  # Every tree up to the order holds; some tree one higher fails.
  assert _satisfied_order(tableau, tableau.order + 1) == tableau.order


def test_authors_rk8_is_not_even_first_order():
  assert _satisfied_order(high_order.RK8_AUTHORS, 8) == 0
  np.testing.assert_allclose(sum(high_order.RK8_AUTHORS.b), 97 / 70)


@pytest.mark.parametrize('name', list(high_order.TABLEAUX))
def test_tableau_shape_nodes_and_weights(name):
  tableau = high_order.get_tableau(name)
  a = np.array(tableau.a)
  s = tableau.num_stages
  assert a.shape == (s, s) and len(tableau.b) == len(tableau.c) == s
  assert np.all(np.triu(a) == 0)
  np.testing.assert_allclose(tableau.c, a.sum(1), atol=1e-12)
  if name != 'rk8_authors':
    np.testing.assert_allclose(sum(tableau.b), 1.0, rtol=1e-14)


def test_stage_counts():
  assert {n: t.num_stages for n, t in high_order.TABLEAUX.items()} == {
      'euler': 1, 'midpoint': 2, 'rk4': 4, 'rk8': 14, 'rk8_authors': 14}


def test_rk8_authors_differs_from_rk8_in_four_entries():
  diff_a = np.argwhere(~np.isclose(high_order.RK8.a, high_order.RK8_AUTHORS.a,
                                   rtol=1e-12, atol=0))
  assert sorted(map(tuple, diff_a + 1)) == [(6, 1), (12, 7), (12, 10)]
  diff_b = np.flatnonzero(high_order.RK8.b != np.array(high_order.RK8_AUTHORS.b))
  assert list(diff_b + 1) == [8]


def test_stacked_midpoint_by_hand_and_first_stage_sees_x():
  rng = np.random.default_rng(1)
  x, shortcut = rng.normal(size=3), rng.normal(size=3)
  f1 = lambda v: np.sin(v) + 2.0
  f2 = lambda v: v ** 2
  out = high_order.stacked(high_order.MIDPOINT, x, shortcut, [f1, f2])
  k1 = f1(x)
  np.testing.assert_allclose(out, shortcut + f2(shortcut + 0.5 * k1))


def test_stacked_euler_is_the_plain_residual_block():
  x = jnp.arange(4.0)
  out = high_order.stacked(high_order.EULER, x, x + 1, [jnp.cos])
  np.testing.assert_array_equal(out, x + 1 + jnp.cos(x))


def test_stacked_skips_zero_and_unit_coefficients():
  # Classical rk4 has 16 entries in A and b: 6 neither 0 nor 1.
  fn = lambda x: high_order.stacked(high_order.RK4, x, x, [jnp.sin] * 4)
  jaxpr = jax.make_jaxpr(fn)(jnp.ones(3))
  muls = [e for e in jaxpr.eqns if e.primitive.name == 'mul']
  assert len(muls) == 6  # a21, a32, b1..b4; a43 = 1 needs none


def test_stacked_wrong_number_of_sub_blocks():
  with pytest.raises(ValueError, match='4 stages'):
    high_order.stacked(high_order.RK4, 0.0, 0.0, [lambda v: v] * 3)


@pytest.mark.parametrize('name', ['midpoint', 'rk4', 'rk8'])
def test_stage_variances_match_monte_carlo(name):
  tableau = high_order.get_tableau(name)
  s = tableau.num_stages
  rng = np.random.default_rng(2)
  n = 200_000
  var_s = 0.7
  var_k = rng.uniform(0.1, 1.0, size=s)
  shortcut = rng.normal(scale=np.sqrt(var_s), size=n)
  ks = rng.normal(size=(s, n)) * np.sqrt(var_k)[:, None]
  a, b = np.array(tableau.a), np.array(tableau.b)
  inputs_mc = (shortcut + a @ ks).var(axis=1)
  output_mc = (shortcut + b @ ks).var()
  inputs, output = high_order.stage_variances(tableau, var_s, var_k)
  # A Gaussian sample variance has relative standard error sqrt(2 / n),
  # about 0.3%: 5 of them.
  np.testing.assert_allclose(inputs, inputs_mc, rtol=5 * np.sqrt(2 / n))
  np.testing.assert_allclose(output, output_mc, rtol=5 * np.sqrt(2 / n))
  assert inputs[0] == var_s


def test_stage_variances_of_euler_and_a_scalar_var_k():
  inputs, output = high_order.stage_variances(high_order.EULER, 1.0, 0.25)
  assert inputs == (1.0,) and output == 1.25
  _, out_rk4 = high_order.stage_variances(high_order.RK4, 1.0, 1.0)
  np.testing.assert_allclose(out_rk4, 1 + 2 / 36 + 2 / 9)
  with pytest.raises(ValueError, match='4 stages'):
    high_order.stage_variances(high_order.RK4, 1.0, (1.0, 1.0))


def test_unknown_tableau_names_the_nearest():
  with pytest.raises(high_order.UnknownTableauError, match="'rk4'") as info:
    high_order.get_tableau('rk_4')
  assert isinstance(info.value, errors.UserError)
  assert len(str(info.value).splitlines()) == 1
