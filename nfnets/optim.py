"""Adaptive Gradient Clipping (AGC) and the NFNet optimizer.

`adaptive_grad_clip` is an `optax.GradientTransformation` that works on any
pytree of arrays (Haiku or Flax parameters, plain dicts, lists). The remaining
pieces (`default_config`, `nfnet_optimizer`, `warmup_cosine_schedule`, the
parameter masks) assemble the optimizer NFNets are trained with.

Reference:
  [NFNet] Brock, De, Smith, Simonyan. "High-Performance Large-Scale Image
    Recognition Without Normalization", ICML 2021, sec. 4.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
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


def unitwise_norm(x: jax.Array, axis: Optional[Axes] = None) -> jax.Array:
  """The L2 norm of each unit of `x`, computed in float32.

  Args:
    x: a parameter or gradient. Without `axis` the layout is inferred from
      the rank: rank 0/1 -> one unit; rank 2 (in, out), rank 4 (H, W, in, out)
      and rank 5 (D, H, W, in, out) -> one unit per output channel (last
      axis). Other ranks need `axis`.
    axis: the axes one unit spans (reduced over).

  Returns:
    float32 norms with the reduced axes kept as size 1, so they broadcast
    against `x`: e.g. [1, 1, 1, O] for an HWIO kernel, [] for a scalar.
  """
  axes = _reduction_axes(x, axis, 'x')
  x = jnp.asarray(x, jnp.float32)
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def _safe_norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """L2 norm over `axes` (kept) whose derivative is finite at zero."""
  sq = jnp.sum(jnp.square(x), axis=axes, keepdims=True)
  # sqrt'(0) is infinite; the double where keeps differentiating through the
  # transform (e.g. through an unrolled optimizer) free of NaNs.
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _clip_unitwise(grad: jax.Array, param: jax.Array, clipping: float,
                   eps: float, axis: AxisSpec, where: str) -> jax.Array:
  """AGC for one tensor: [NFNet] eq. (3)."""
  if grad.shape != param.shape:
    raise ValueError(
        f'adaptive_grad_clip: gradient {where} has shape {tuple(grad.shape)} '
        f'but its parameter has shape {tuple(param.shape)}.')
  axes = _reduction_axes(param, axis, where)
  # float32 norms: in bfloat16 every square and the norm itself keep only 8
  # bits of mantissa, and the threshold test compares two such norms.
  g32 = jnp.asarray(grad, jnp.float32)
  p32 = jnp.asarray(param, jnp.float32)
  g_norm = _safe_norm(g32, axes)
  p_norm = _safe_norm(p32, axes)
  max_norm = clipping * jnp.maximum(p_norm, eps)
  scale = jnp.where(g_norm > max_norm,
                    max_norm / jnp.maximum(g_norm, _MIN_GRAD_NORM), 1.0)
  return (g32 * scale).astype(grad.dtype)


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


def weight_decay_mask(params: PyTree) -> PyTree:
  """True for the parameters that get weight decay: all but gains/biases."""
  return path_mask(params, lambda m, n: not is_gain_or_bias(m, n))


def warmup_cosine_schedule(peak_value: float, warmup_steps: int,
                           total_steps: int, end_value: float = 0.0
                           ) -> optax.Schedule:
  """Linear warmup from 0 to `peak_value`, then cosine decay to `end_value`.

  lr(s) = peak * s / warmup                              for s < warmup,
  lr(s) = end + (peak - end) / 2 * (1 + cos(pi * f))     otherwise,
  with f = (s - warmup) / (total - warmup), clamped to [0, 1].

  Args:
    peak_value: learning rate reached at step `warmup_steps`.
    warmup_steps: length of the warmup, in optimizer steps (0: none).
    total_steps: the step at which the decay reaches `end_value`; later
      steps stay there.
    end_value: final learning rate.

  Returns:
    A schedule step -> float32 learning rate, traceable under jit.
  """
  if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
    raise ValueError('Need 0 <= warmup_steps <= total_steps and '
                     f'total_steps > 0; got warmup_steps={warmup_steps}, '
                     f'total_steps={total_steps}.')
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = peak_value * step / max(warmup_steps, 1)
    frac = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    cosine = end_value + 0.5 * (peak_value - end_value) * (
        1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warmup_steps, warmup, cosine)

  return schedule


def default_config() -> ml_collections.ConfigDict:
  """The `config.optimizer` group, with the paper's NFNet defaults."""
  return ml_collections.ConfigDict(dict(
      # Peak lr = base_lr * batch_size / lr_batch_reference (linear scaling,
      # [NFNet] sec. 4 and appendix): 1.6 at batch 4096.
      base_lr=0.1,
      lr_batch_reference=256,
      end_lr=0.0,
      momentum=0.9,
      nesterov=True,
      # Added to the clipped gradient, before momentum; gains and biases
      # are exempt.
      weight_decay=2e-5,
      # AGC threshold lambda; 0 turns AGC off. 0.01 is the paper's value
      # at batch 4096; smaller batches tolerate larger values.
      clipping=0.01,
      agc_eps=1e-3,
      # The final classifier is not clipped (sec. 4.1). The reference
      # release still clips the classifier bias; True reproduces that.
      agc_exclude_classifier=True,
      agc_clip_classifier_bias=False,
      classifier_pattern=CLASSIFIER_PATTERN,
      # Warmup length: warmup_steps when set, else warmup_epochs epochs.
      warmup_epochs=5.0,
      warmup_steps=config_dict.placeholder(int),
  ))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError on out-of-range optimizer settings or unknown fields."""
  known = set(default_config().keys())
  unknown = sorted(set(config.keys()) - known)
  if unknown:
    raise ValueError(f'Unknown optimizer config fields {unknown}; known: '
                     f'{sorted(known)}.')
  missing = sorted(known - set(config.keys()))
  if missing:
    raise ValueError(f'Missing optimizer config fields {missing}.')
  checks = [
      (config.base_lr > 0, 'base_lr must be positive'),
      (config.lr_batch_reference > 0, 'lr_batch_reference must be positive'),
      (config.end_lr >= 0, 'end_lr must be non-negative'),
      (0 <= config.momentum < 1, 'momentum must be in [0, 1)'),
      (config.weight_decay >= 0, 'weight_decay must be non-negative'),
      (config.clipping >= 0, 'clipping must be non-negative (0: no AGC)'),
      (config.agc_eps >= 0, 'agc_eps must be non-negative'),
      (config.warmup_epochs >= 0, 'warmup_epochs must be non-negative'),
      (config.warmup_steps is None or config.warmup_steps >= 0,
       'warmup_steps must be non-negative'),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f'Optimizer config: {message}.')
  re.compile(config.classifier_pattern)


def peak_learning_rate(config: ml_collections.ConfigDict,
                       batch_size: int) -> float:
  """base_lr * batch_size / lr_batch_reference (0.1 * B / 256 by default)."""
  return config.base_lr * batch_size / config.lr_batch_reference


def resolve_warmup_steps(config: ml_collections.ConfigDict,
                         steps_per_epoch: Optional[float] = None) -> int:
  """`config.warmup_steps` if set, else round(warmup_epochs * steps/epoch)."""
  if config.warmup_steps is not None:
    return int(config.warmup_steps)
  if config.warmup_epochs == 0:
    return 0
  if steps_per_epoch is None:
    raise ValueError('Warmup is given in epochs (config.warmup_epochs='
                     f'{config.warmup_epochs}); pass steps_per_epoch or '
                     'warmup_steps.')
  return int(round(config.warmup_epochs * steps_per_epoch))


def learning_rate_schedule(config: ml_collections.ConfigDict, *,
                           batch_size: int, total_steps: int,
                           warmup_steps: int) -> optax.Schedule:
  """Warmup + cosine schedule peaking at `peak_learning_rate`."""
  return warmup_cosine_schedule(peak_learning_rate(config, batch_size),
                                warmup_steps, total_steps, config.end_lr)


def nfnet_optimizer(config: ml_collections.ConfigDict, *, batch_size: int,
                    total_steps: int, warmup_steps: Optional[int] = None,
                    steps_per_epoch: Optional[float] = None
                    ) -> optax.GradientTransformation:
  """AGC, then weight decay, then SGD with Nesterov momentum ([NFNet] sec. 4).

  The chain, per parameter:
    1. AGC with `config.clipping` (skipped when 0), except the classifier
       found by `config.classifier_pattern` on the Haiku module path.
    2. + weight_decay * param, except gains and biases (`is_gain_or_bias`);
       added to the clipped gradient, as the reference release does.
    3. SGD, momentum 0.9 with Nesterov, learning rate
       `learning_rate_schedule` (0.1 * batch_size / 256, linear warmup,
       cosine decay to `end_lr`).

  Clipping threshold guidance (sec. 4.1): the best lambda depends on the
  optimizer, learning rate and batch size, and larger batches need smaller
  (stronger) thresholds; NFNets use 0.01 at batch size 4096. The paper also
  finds it beneficial not to clip the final linear layer.

  Args:
    config: the optimizer group (`default_config()`).
    batch_size: global batch size (scales the learning rate).
    total_steps: number of optimizer steps of the run (end of the decay).
    warmup_steps: warmup length in steps; None derives it from the config
      (`resolve_warmup_steps`).
    steps_per_epoch: needed only when the warmup is given in epochs.

  Returns:
    The transformation; `update(grads, state, params)` needs `params`.
  """
  validate_config(config)
  if warmup_steps is None:
    warmup_steps = resolve_warmup_steps(config, steps_per_epoch)
  schedule = learning_rate_schedule(config, batch_size=batch_size,
                                    total_steps=total_steps,
                                    warmup_steps=warmup_steps)
  parts = []
  if config.clipping > 0:
    if config.agc_exclude_classifier:
      mask = lambda params: agc_mask(params, config.classifier_pattern,
                                     config.agc_clip_classifier_bias)
    else:
      mask = None
    parts.append(adaptive_grad_clip(config.clipping, config.agc_eps,
                                    mask=mask))
  if config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(config.weight_decay,
                                           mask=weight_decay_mask))
  parts.append(optax.sgd(schedule, momentum=config.momentum or None,
                         nesterov=config.nesterov))
  return optax.chain(*parts)

