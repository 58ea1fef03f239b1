"""Model size and cost without allocating the model: parameter and state
shapes and counts from `jax.eval_shape`, multiply-adds from a counting pass
over the forward jaxpr."""
from __future__ import annotations

from typing import Any, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets.models import registry


def abstract_init(model: hk.TransformedWithState,
                  image_size: int) -> tuple[hk.Params, hk.State]:
  """The (params, state) `model.init` would make, as `jax.ShapeDtypeStruct`s.

  Nothing is allocated or computed: `model` is initialized abstractly in
  evaluation mode on one [1, image_size, image_size, 3] float32 image.
  """
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, is_training=False),
      images)


def _abstract_init(name: str, image_size: int, **overrides: Any):
  fwd = registry.transform(name, **overrides)
  params, state = abstract_init(fwd, image_size)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return fwd, params, state, images


def count_params(name: str, **overrides: Any) -> int:
  """Number of trainable parameters of a registered model (no allocation)."""
  # Resolution does not change the parameter count; keep tracing cheap.
  _, params, _, _ = _abstract_init(name, 64, **overrides)
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def _jaxpr_macs(jaxpr: jax.extend.core.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      out = eqn.outvars[0].aval.shape
      rhs = eqn.invars[1].aval.shape
      out_feature_dim = eqn.params['dimension_numbers'].rhs_spec[0]
      # Each output element sums over kh * kw * (I / groups) products.
      total += int(np.prod(out)) * int(np.prod(rhs)) // rhs[out_feature_dim]
    elif eqn.primitive.name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += int(np.prod(out)) * int(np.prod([lhs[d] for d in lhs_contract]))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += _jaxpr_macs(sub)
  return total


def count_macs(name: str, image_size: Optional[int] = None,
               **overrides: Any) -> int:
  """Multiply-adds of one inference forward pass on one image.

  Counts convolutions and matrix products (which is how the papers count
  FLOPs), at `image_size` or the model's published test resolution.
  """
  if image_size is None:
    image_size = registry.get_spec(name).test_imsize
  fwd, params, state, images = _abstract_init(name, image_size, **overrides)
  closed = jax.make_jaxpr(
      lambda p, s, x: fwd.apply(p, s, None, x, is_training=False))(
          params, state, images)
  return _jaxpr_macs(closed.jaxpr)
