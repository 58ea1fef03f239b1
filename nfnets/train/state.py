"""The training state, its device layout, and the builders that make it.

`TrainState` is everything that changes during training. The mesh is 1-D
over every device: the batch is split on its leading axis, and parameters
and optimizer state are replicated (XLA inserts the gradient all-reduce).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nfnets import data
from nfnets import models
from nfnets.train import config as config_lib
from nfnets.train import optimizer as optimizer_config

DATA_AXIS = 'data'


class TrainState(NamedTuple):
  """Everything that changes during training (a pytree).

  Attributes:
    step: int32 scalar, number of optimizer updates applied so far.
    params: model parameters (float32).
    model_state: Haiku state (e.g. BatchNorm statistics; empty for NF models).
    opt_state: optax optimizer state.
    ema_params: exponential moving average of `params`.
    ema_state: exponential moving average of `model_state`.
    rng: uint32 [2] PRNG key for the next step's dropout/stochastic depth.
  """
  step: jax.Array
  params: hk.Params
  model_state: hk.State
  opt_state: optax.OptState
  ema_params: hk.Params
  ema_state: hk.State
  rng: jax.Array


# Sharding ---------------------------------------------------------------------


def make_mesh(devices: Optional[list[jax.Device]] = None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all, every process)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Every device holds the whole array (parameters, optimizer state)."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """The leading (batch) axis is split over the mesh's data axis."""
  return jax.sharding.NamedSharding(mesh,
                                    jax.sharding.PartitionSpec(DATA_AXIS))


def abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` (arrays or shapes) with `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# Builders ---------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict,
                **overrides: Any) -> hk.TransformedWithState:
  """The transformed model of `config.model` with the data set's classes.

  `overrides` replace or add constructor arguments of `config.model.kwargs`
  (e.g. `conv=layers.PrestandardizedConv2D` for inference).
  """
  kwargs = {**config.model.kwargs.to_dict(), **overrides}
  return models.transform(config.model.name,
                          num_classes=data.num_classes(config.data), **kwargs)


def build_optimizer(config: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of `config.optimizer` and its learning-rate schedule.

  Returns:
    (optimizer, schedule: step -> learning rate), with the run's durations
    and global batch size.
  """
  total, warmup = config_lib.durations(config)
  batch_size = config.training.batch_size
  # An exponential decay may be given in epochs.
  steps_per_epoch = data.num_examples(config.data) / batch_size
  optimizer = optimizer_config.from_config(
      config.optimizer, batch_size=batch_size, total_steps=total,
      warmup_steps=warmup, steps_per_epoch=steps_per_epoch)
  schedule = optimizer_config.learning_rate_schedule(
      config.optimizer, batch_size=batch_size, total_steps=total,
      warmup_steps=warmup, steps_per_epoch=steps_per_epoch)
  return optimizer, schedule


def init_train_state(config: ml_collections.ConfigDict,
                     model: hk.TransformedWithState,
                     optimizer: optax.GradientTransformation,
                     rng: jax.Array) -> TrainState:
  """A fresh `TrainState` (pure; jit it with replicated output shardings)."""
  init_rng, train_rng = jax.random.split(rng)
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  params, model_state = model.init(init_rng, images, is_training=True)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=optimizer.init(params), ema_params=params,
      ema_state=model_state, rng=train_rng)


def abstract_train_state(config: ml_collections.ConfigDict,
                         mesh: jax.sharding.Mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the `TrainState` of `config`.

  Computed with `jax.eval_shape`, so nothing is allocated; used to restore
  checkpoints directly into their sharded layout.
  """
  model = build_model(config)
  optimizer, _ = build_optimizer(config)
  shapes = jax.eval_shape(
      functools.partial(init_train_state, config, model, optimizer),
      jax.random.PRNGKey(0))
  return abstract(shapes, replicated(mesh))
