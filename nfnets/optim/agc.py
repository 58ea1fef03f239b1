"""Adaptive Gradient Clipping ([NFNet] sec. 4) and the parameter masks of NFNets.

`adaptive_grad_clip` is an `optax.GradientTransformation` that works on any
pytree of arrays (Haiku or Flax parameters, plain dicts, lists). `agc_mask`
and `weight_decay_mask` pick out, by Haiku module path and parameter name,
what the NFNet recipe clips and decays.

Reference:
  [NFNet] Brock, De, Smith, Simonyan. "High-Performance Large-Scale Image
    Recognition Without Normalization", ICML 2021, sec. 4.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Axes = Union[int, Sequence[int]]
# `axis` of `adaptive_grad_clip`: one set of axes for every tensor, or a
# function of the parameter returning axes (None: the default layout).
AxisSpec = Union[None, Axes, Callable[[jax.Array], Optional[Axes]]]
MaskSpec = Union[None, PyTree, Callable[[PyTree], PyTree]]

# Reduction axes per rank for the layouts Haiku and Flax use: dense kernels
# are (in, out), conv kernels (H, W, in, out) and 3-D conv kernels
# (D, H, W, in, out); the output unit is always the last axis. Scalars and
# vectors (gains, biases) form one unit, as in the reference release.
_DEFAULT_AXES: dict[int, tuple[int, ...]] = {
    0: (),
    1: (0,),
    2: (0,),
    4: (0, 1, 2),
    5: (0, 1, 2, 3),
}

# Guards the division in the clipped branch of `jnp.where`. That branch is
# only selected when ||G_i|| > clipping * max(||W_i||, eps) >= 0, so the guard
# never changes a result; it keeps the untaken branch finite for zero
# gradients.
_MIN_GRAD_NORM = 1e-6

# The classifier of the models in this package: the hk.Linear named 'linear'
# directly under the top module ('NFNet/~/linear', 'NF_ResNet/~/linear').
# Squeeze-Excite linears sit deeper ('.../squeeze_excite/~/linear') and do
# not match.
CLASSIFIER_PATTERN = r'[^/]+/~/linear'

# Names of gains and biases, as the reference release partitions them
# (`scale`/`offset` are BatchNorm's, for the normalized baselines).
_GAIN_BIAS_NAMES = frozenset({'b', 'scale', 'offset'})
# The normalization layers' gamma and beta (BatchNorm, GroupNorm, LayerNorm).
_NORM_PARAM_NAMES = frozenset({'scale', 'offset'})


def _reduction_axes(param: jax.Array, axis: AxisSpec, where: str
                    ) -> tuple[int, ...]:
  """The axes one unit of `param` spans (all axes but the output axis)."""
  chosen = axis(param) if callable(axis) else axis
  if chosen is None:
    if param.ndim not in _DEFAULT_AXES:
      raise ValueError(
          f'adaptive_grad_clip: no default unit layout for the rank-'
          f'{param.ndim} parameter {where} of shape {tuple(param.shape)}; '
          'known layouts are scalars/vectors, dense (in, out), conv '
          '(H, W, in, out) and conv3d (D, H, W, in, out). Pass `axis=` '
          '(the axes one unit spans, or a function of the parameter '
          'returning them).')
    return _DEFAULT_AXES[param.ndim]
  axes = (chosen,) if isinstance(chosen, int) else tuple(chosen)
  bad = [a for a in axes if not -param.ndim <= a < param.ndim]
  if bad:
    raise ValueError(
        f'adaptive_grad_clip: axis {bad} out of range for the parameter '
        f'{where} of shape {tuple(param.shape)}.')
  return tuple(sorted({a % param.ndim for a in axes}))


def _safe_norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """L2 norm over `axes` (kept) whose derivative is finite at zero."""
  sq = jnp.sum(jnp.square(x), axis=axes, keepdims=True)
  # sqrt'(0) is infinite; the double where keeps differentiating through the
  # transform (e.g. through an unrolled optimizer) free of NaNs.
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _unit_norms(grad: jax.Array, param: jax.Array, clipping: float,
                eps: float, axis: AxisSpec, where: str
                ) -> tuple[jax.Array, jax.Array]:
  """(||G_i||, clipping * max(||W_i||, eps)) per unit, float32, dims kept."""
  if grad.shape != param.shape:
    raise ValueError(
        f'adaptive_grad_clip: gradient {where} has shape {tuple(grad.shape)} '
        f'but its parameter has shape {tuple(param.shape)}.')
  axes = _reduction_axes(param, axis, where)
  # float32 norms: in bfloat16 every square and the norm itself keep only 8
  # bits of mantissa, and the threshold test compares two such norms.
  g_norm = _safe_norm(jnp.asarray(grad, jnp.float32), axes)
  p_norm = _safe_norm(jnp.asarray(param, jnp.float32), axes)
  return g_norm, clipping * jnp.maximum(p_norm, eps)


def _clip_unitwise(grad: jax.Array, param: jax.Array, clipping: float,
                   eps: float, axis: AxisSpec, where: str) -> jax.Array:
  """AGC for one tensor: [NFNet] eq. (3)."""
  g_norm, max_norm = _unit_norms(grad, param, clipping, eps, axis, where)
  scale = jnp.where(g_norm > max_norm,
                    max_norm / jnp.maximum(g_norm, _MIN_GRAD_NORM), 1.0)
  return (jnp.asarray(grad, jnp.float32) * scale).astype(grad.dtype)


def clip_fraction(grads: PyTree, params: PyTree, clipping: float,
                  eps: float = 1e-3, *, axis: AxisSpec = None,
                  mask: MaskSpec = None) -> jax.Array:
  """The share of units that `adaptive_grad_clip` clips for these gradients.

  The diagnostic of [NFNet] sec. 4.1: how many units' ratio
  ||G_i|| / max(||W_i||, eps) exceeds `clipping`. Units are counted as
  `adaptive_grad_clip` defines them (same `axis`); with `mask`, only the
  parameters it marks True count, so the figure matches what is clipped.

  Returns:
    A float32 scalar in [0, 1] (0 when no unit is counted).
  """
  if callable(mask):
    mask = mask(params)
  if mask is None:
    mask = jax.tree.map(lambda _: True, params)
  clipped, units = [], []

  def count(path, g, p, keep):
    if not keep:
      return
    g_norm, max_norm = _unit_norms(g, p, clipping, eps, axis,
                                   jax.tree_util.keystr(path))
    clipped.append(jnp.sum(g_norm > max_norm))
    units.append(g_norm.size)

  jax.tree_util.tree_map_with_path(count, grads, params, mask)
  if not units:
    return jnp.zeros((), jnp.float32)
  return (sum(clipped) / sum(units)).astype(jnp.float32)


def adaptive_grad_clip(clipping: float, eps: float = 1e-3, *,
                       axis: AxisSpec = None,
                       mask: MaskSpec = None
                       ) -> optax.GradientTransformation:
  """Adaptive Gradient Clipping, unit-wise ([NFNet] sec. 4, eq. 3).

  For every parameter W with gradient G and every unit i:

      G_i <- clipping * max(||W_i||, eps) / ||G_i|| * G_i
             if ||G_i|| / max(||W_i||, eps) > clipping, else G_i.

  A unit is one output unit. Layout assumption: the output axis is the last
  one, as in Haiku and Flax kernels: dense (in, out) units span `in`; conv
  (H, W, in, out) units span H, W, in; conv3d (D, H, W, in, out) units span
  D, H, W, in. Scalars and vectors (gains, biases) are one unit each. Any
  other rank (e.g. a rank-3 conv1d or attention kernel) raises a ValueError
  unless `axis` says which axes a unit spans. PyTorch-style (out, in, ...)
  kernels need `axis` too.

  Norms are computed in float32 whatever the gradient dtype; the clipped
  gradient keeps its dtype. All-zero gradients stay zero. The transform is
  pure jnp, so it runs under `jax.jit` on sharded or replicated arrays
  without host transfers; reductions over a sharded axis become collectives.

  Args:
    clipping: lambda, the largest allowed ratio ||G_i|| / max(||W_i||, eps).
      The best value depends on the optimizer, learning rate and batch size,
      and should be smaller for larger batches (sec. 4.1); NFNets use 0.01
      at batch size 4096.
    eps: floor on the parameter norm, so zero-initialized units (biases,
      zero-init gains) can still move.
    axis: the axes one unit spans, applied to every tensor; or a function
      `param -> axes or None` (None: the default layout for that tensor),
      e.g. `lambda p: (0, 1) if p.ndim == 3 else None` for conv1d kernels.
    mask: optional pytree of bools with the structure of the parameters (or
      a function params -> such a pytree); False leaves pass through
      unclipped. Equivalent to wrapping in `optax.masked(..., mask)`.

  Returns:
    A stateless transformation; its `update` requires `params`.
  """
  if isinstance(clipping, (int, float)) and clipping <= 0:
    raise ValueError(f'clipping must be positive, got {clipping}.')
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(f'eps must be non-negative, got {eps}.')

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('adaptive_grad_clip needs `params` in `update` (the '
                       'threshold is relative to the parameter norms).')
    clip = lambda path, g, p: _clip_unitwise(
        g, p, clipping, eps, axis, jax.tree_util.keystr(path))
    return jax.tree_util.tree_map_with_path(clip, updates, params), state

  transform = optax.GradientTransformation(init_fn, update_fn)
  if mask is not None:
    transform = optax.masked(transform, mask)
  return transform


def _key_name(key: Any) -> str:
  """One entry of a pytree key path as a string."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def module_and_name(path: Sequence[Any]) -> tuple[str, str]:
  """Splits a pytree key path into (module path, parameter name).

  For Haiku params `{'NFNet/~/linear': {'w': ...}}` the leaf at path
  (DictKey('NFNet/~/linear'), DictKey('w')) gives ('NFNet/~/linear', 'w');
  deeper trees (Flax) join the outer keys with '/'.
  """
  names = [_key_name(k) for k in path]
  if not names:
    return '', ''
  return '/'.join(names[:-1]), names[-1]


def path_mask(params: PyTree, predicate: Callable[[str, str], bool]
              ) -> PyTree:
  """A pytree of bools: `predicate(module, name)` for every leaf."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(predicate(*module_and_name(path))), params)


def is_classifier(module: str, name: str,
                  pattern: str = CLASSIFIER_PATTERN) -> bool:
  """Whether a parameter belongs to the final classifier layer.

  Keyed on the module path, not on position in the tree: by default the
  hk.Linear 'linear' directly under the top module ('NFNet/~/linear').
  """
  del name
  return re.fullmatch(pattern, module) is not None


def is_gain_or_bias(module: str, name: str) -> bool:
  """Whether a parameter is a gain or a bias (no weight decay on these).

  Matches 'gain', 'skip_gain', 'bias', 'b' (and BatchNorm's 'scale' and
  'offset'), the partition the reference release uses.
  """
  del module
  return name in _GAIN_BIAS_NAMES or 'gain' in name or 'bias' in name


def agc_mask(params: PyTree, classifier_pattern: str = CLASSIFIER_PATTERN,
             clip_classifier_bias: bool = False) -> PyTree:
  """True for the parameters AGC clips: all but the final classifier.

  Args:
    params: the parameter pytree (Haiku naming).
    classifier_pattern: regex the classifier's module path fully matches.
    clip_classifier_bias: clip the classifier bias (only its weight is then
      exempt), which is what the reference release does.
  """
  def clipped(module, name):
    if not is_classifier(module, name, classifier_pattern):
      return True
    return clip_classifier_bias and is_gain_or_bias(module, name)
  return path_mask(params, clipped)


def weight_decay_mask(params: PyTree,
                      decay_norm_params: bool = False) -> PyTree:
  """True for the parameters that get weight decay: all but gains/biases.

  Args:
    params: the parameter pytree (Haiku naming).
    decay_norm_params: decay the normalization layers' `scale` and `offset`
      (gamma and beta) too, as the GroupNorm paper's ResNets do ([GN] Wu &
      He 2018, sec. 5.1: "all weight layers, including gamma and beta");
      other gains and biases stay exempt.
  """
  def decayed(module, name):
    if decay_norm_params and name in _NORM_PARAM_NAMES:
      return True
    return not is_gain_or_bias(module, name)
  return path_mask(params, decayed)
