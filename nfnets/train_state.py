"""The training state, its device layout, and checkpoints in a work directory.

Work directory layout (everything a later tool needs to rebuild the model):

```
WORKDIR/
  config.json              the run's full config, written before training
  metrics.jsonl            one JSON object per logged train/eval step
  tensorboard/             TensorBoard event files
  checkpoints/
    <step>/                one orbax checkpoint per saved step
      state/               `TrainState` (orbax StandardSave): step, params,
                           model_state, opt_state, ema_params, ema_state, rng
      config/              the same config as JSON, as it was at that step
```

The input pipelines are a pure function of (seed, step), so `TrainState.step`
is all they need to continue exactly where they were.

`restore_latest(workdir)` returns `(config, state)` from the newest
checkpoint; `load_config(workdir)` reads only the config.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, NamedTuple, Optional, Union

import haiku as hk
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

PathLike = Union[str, os.PathLike]

DATA_AXIS = 'data'
CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
_ITEMS = ('state', 'config')


class CheckpointError(RuntimeError):
  """A checkpoint that is missing or cannot be read."""


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


# Config files -----------------------------------------------------------------


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-serializable plain dict of `config` (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def write_config(config: ml_collections.ConfigDict, workdir: PathLike) -> None:
  """Writes WORKDIR/config.json (only process 0 writes)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True))
  # Atomic replace: a crash while writing never leaves a truncated file.
  tmp.replace(path)


def load_config(workdir: PathLike) -> ml_collections.ConfigDict:
  """Reads WORKDIR/config.json back into a ConfigDict.

  Raises:
    CheckpointError: the file is missing or is not valid JSON (the message
      names the file).
  """
  path = pathlib.Path(workdir) / CONFIG_FILE
  try:
    values = json.loads(path.read_text())
  except FileNotFoundError as e:
    raise CheckpointError(f'No config file {path}: is {workdir} the work '
                          'directory of a training run?') from e
  except json.JSONDecodeError as e:
    raise CheckpointError(f'Corrupt config file {path}: {e}') from e
  return ml_collections.ConfigDict(values)


# Checkpoints ------------------------------------------------------------------


def checkpoint_manager(workdir: PathLike, *, max_to_keep: Optional[int] = 3,
                       read_only: bool = False) -> ocp.CheckpointManager:
  """The orbax manager of WORKDIR/checkpoints (async saves)."""
  directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
  if read_only and not directory.is_dir():
    raise CheckpointError(f'No checkpoint directory {directory}.')
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(directory, options=options, item_names=_ITEMS)


def save(manager: ocp.CheckpointManager, state: TrainState,
         config: ml_collections.ConfigDict) -> None:
  """Starts saving `state` and `config` at `state.step` (asynchronously).

  All processes must call this. Call `manager.wait_until_finished()` before
  the process exits.
  """
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config_to_dict(config))), force=True)


def _step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
  return pathlib.Path(str(manager.directory)) / str(step)


def restore(manager: ocp.CheckpointManager, step: int,
            abstract_state: TrainState) -> TrainState:
  """Restores the `TrainState` saved at `step`.

  Args:
    manager: from `checkpoint_manager`.
    step: a saved step (see `manager.all_steps()`).
    abstract_state: a `TrainState` of `jax.ShapeDtypeStruct`s with shardings
      (e.g. `abstract(jax.eval_shape(init), replicated(mesh))`); restored
      arrays take these shapes, dtypes and layouts.

  Raises:
    CheckpointError: the checkpoint is missing, corrupt or does not match
      `abstract_state`; the message names its directory.
  """
  path = _step_dir(manager, step)
  if step not in manager.all_steps():
    raise CheckpointError(f'No checkpoint at step {step} ({path}); saved '
                          f'steps: {list(manager.all_steps())}.')
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
  except Exception as e:  # orbax raises many types; all mean the same here.
    raise CheckpointError(
        f'Cannot restore the checkpoint {path / "state"}: '
        f'{type(e).__name__}: {e}') from e
  return restored.state


def restore_config(manager: ocp.CheckpointManager,
                   step: int) -> ml_collections.ConfigDict:
  """The config saved with the checkpoint at `step`."""
  path = _step_dir(manager, step) / 'config'
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types; all mean the same here.
    raise CheckpointError(f'Cannot read the config of checkpoint {path}: '
                          f'{type(e).__name__}: {e}') from e
  return ml_collections.ConfigDict(restored.config)


def restore_latest(
    workdir: PathLike, abstract_state: Optional[TrainState] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
) -> tuple[ml_collections.ConfigDict, TrainState]:
  """(config, state) of the newest checkpoint in a work directory.

  Args:
    workdir: a training run's work directory.
    abstract_state: shapes/dtypes/shardings to restore into; by default they
      are rebuilt from the checkpoint's own config (model, data set and
      optimizer), replicated over `mesh`.
    mesh: mesh for the default `abstract_state` (default: all devices).

  Raises:
    CheckpointError: no checkpoint, or the newest one cannot be read (the
      message names it).
  """
  manager = checkpoint_manager(workdir, read_only=True)
  try:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f'No checkpoint in {manager.directory}.')
    config = restore_config(manager, step)
    if abstract_state is None:
      # Deferred import: the runner imports this module, and only this
      # default needs the runner's model and optimizer builders.
      from nfnets import experiment  # pylint: disable=g-import-not-at-top
      mesh = make_mesh() if mesh is None else mesh
      abstract_state = experiment.abstract_train_state(config, mesh)
    return config, restore(manager, step, abstract_state)
  finally:
    manager.close()
