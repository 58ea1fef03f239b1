"""Sharpness-Aware Minimization ([SAM] Foret et al. 2021), as [NFNet] uses it.

SAM minimizes max_{||e|| <= rho} L(w + e). To first order the maximizer is
e = rho * g / ||g|| with g = grad L(w) ([SAM] eq. 2), so one SAM step costs
a second forward/backward pass: the ascent gradient g at w, then the descent
gradient grad L(w + e), which goes to any optax optimizer unchanged (AGC,
weight decay and Nesterov SGD in the recipes, which clip and decay relative
to w, not w + e).

[NFNet] cuts the ascent's cost in two ways, both expressed here through what
the caller passes: the ascent gradient from a fraction of the batch (20% in
the paper), and an ascent left unsynchronized across devices, each device
ascending on its own shard (m-sharpness, [SAM] sec. 4.1): `sam_gradient`
with `axis_name` inside a `jax.shard_map`.

Why not `optax.contrib.sam`: its one-call ("opaque") mode runs the descent
pass inside `update` through a `grad_fn` that returns gradients only, so the
step's loss, accuracy and Haiku state (BatchNorm statistics) of that pass
cannot come back out; its optimizer state wraps the chain's
(`SAMState.opt_state`), so switching SAM on would change the checkpointed
tree; a per-device ascent would have to run the whole optimizer inside the
`shard_map`; and its other ("transparent") mode spends every other call on an
ascent, which the runner would count as a training step (schedule, EMA,
checkpoints). SAM itself needs no state: two functions suffice.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Optional

import jax
import optax

PyTree = Any
# grad_fn(params, inputs) -> (gradients like params, auxiliary outputs).
GradFn = Callable[[PyTree, Any], tuple[PyTree, Any]]


def ascent_point(params: PyTree, grads: PyTree, rho: float,
                 eps: float = 1e-12) -> PyTree:
  """w + rho * g / ||g||, SAM's first-order worst case within radius rho.

  Args:
    params: the weights w (any pytree of float arrays).
    grads: the ascent gradient g, a tree like `params`.
    rho: the radius, an L2 norm over the whole tree.
    eps: added to ||g|| so that a zero gradient gives w, not NaN.

  Returns:
    A tree like `params`, in the dtypes of `params`.
  """
  scale = rho / (optax.tree.norm(grads) + eps)
  return jax.tree.map(lambda w, g: w + (scale * g).astype(w.dtype), params,
                      grads)


def sam_gradient(grad_fn: GradFn, params: PyTree, rho: float,
                 ascent_inputs: Any, descent_inputs: Any, *,
                 axis_name: Optional[Hashable] = None
                 ) -> tuple[PyTree, Any, Any]:
  """SAM's descent gradient: `grad_fn` at the ascent point of `params`.

  Runs `grad_fn(params, ascent_inputs)` for the ascent gradient g, then
  `grad_fn(w + e, descent_inputs)` with e = rho * g / ||g||. For the NFNet
  variant, `ascent_inputs` holds a fraction of the batch.

  Args:
    grad_fn: `(params, inputs) -> (grads, aux)`, e.g. a
      `jax.value_and_grad(..., has_aux=True)` rearranged.
    params: the weights w.
    rho: the ascent radius (> 0; 0 makes this plain gradient descent at twice
      the cost).
    ascent_inputs: what `grad_fn` takes for the ascent gradient.
    descent_inputs: what `grad_fn` takes for the descent gradient.
    axis_name: set inside a `jax.shard_map` over this mesh axis for a
      per-device ascent: each device's g, and so its e, come from its own
      `ascent_inputs` without an all-reduce; the descent gradients, each at
      its device's own point, are then averaged over the axis. None: a single
      ascent point from whatever `ascent_inputs` holds (under `jax.jit` on a
      sharded batch XLA all-reduces both gradients).

  Returns:
    (descent gradient, aux of the descent pass, aux of the ascent pass); the
    aux values are each device's own when `axis_name` is set.
  """
  if axis_name is not None:
    # Inside shard_map replicated weights are device-invariant, and the
    # gradient with respect to an invariant value is summed over the devices
    # (the transpose of its implicit broadcast); marked device-varying, each
    # device's gradient stays its own.
    params = jax.lax.pcast(params, axis_name, to='varying')
  ascent_grads, ascent_aux = grad_fn(params, ascent_inputs)
  point = ascent_point(params, ascent_grads, rho)
  grads, aux = grad_fn(point, descent_inputs)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  return grads, aux, ascent_aux
