"""Checkpoints and config files in a work directory.

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
checkpoint; `load_config(workdir)` reads only the config; `read_saved(path)`
returns a checkpoint's arrays as saved, without building a model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Optional, Union

import jax
import ml_collections
import orbax.checkpoint as ocp

from nfnets import errors
from nfnets.train import state as state_lib
from nfnets.train import unreadable

PathLike = Union[str, os.PathLike]

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
_ITEMS = ('state', 'config')


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint that is missing or cannot be read.

  A read that failed can leave orbax's and tensorstore's callbacks pending,
  which print tracebacks while the interpreter shuts down; a command line
  exits at once after the message (`exit_now`).
  """
  exit_now = True


class SaveError(errors.UserError, RuntimeError):
  """A checkpoint that could not be written (full disk, read-only, ...).

  orbax's writer threads may still be waiting on the failed save; a command
  line exits at once rather than wait for them (`exit_now`).
  """
  exit_now = True


class IncompatibleCheckpointError(CheckpointError):
  """A work directory's checkpoints hold another model than the config's."""


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
  # Named handlers let `item_metadata` read shapes without a restore.
  return ocp.CheckpointManager(
      directory, options=options, item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'config': ocp.JsonCheckpointHandler()})


def _save_error(directory: Any, error: BaseException) -> SaveError:
  reason = getattr(error, 'strerror', None) or str(error).split(': {')[0]
  if len(reason) > 300:
    reason = reason[:300] + ' ...'
  where = getattr(error, 'filename', None) or directory
  return SaveError(
      f'Cannot save a checkpoint in {directory}: {reason} ({where}). The '
      'checkpoints saved before are intact; fix the disk or permissions and '
      'run the same command again to resume from the newest one.')


def _check_writable(directory: pathlib.Path, nbytes: int) -> None:
  """Fails here, before orbax starts, where a save of `nbytes` cannot succeed.

  orbax reports a step directory it could not create only after its other
  threads have waited minutes for it, and a full disk as one traceback per
  writer thread. So: a probe file must be writable, and the free space must
  hold the state uncompressed (a conservative bound: orbax compresses).
  """
  probe = directory / f'.write_probe_{os.getpid()}'
  try:
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise _save_error(directory, e) from e
  free = shutil.disk_usage(directory).free
  if free < nbytes:
    raise SaveError(
        f'Cannot save a checkpoint in {directory}: it needs about '
        f'{nbytes / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. The '
        'checkpoints saved before are intact; free some space and run the '
        'same command again to resume from the newest one.')


def check_saves(manager: ocp.CheckpointManager) -> None:
  """Raises `SaveError` if an asynchronous save has failed."""
  try:
    manager.check_for_errors()
  except Exception as e:  # orbax re-raises the writer's error as is.
    raise _save_error(manager.directory, e) from e


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
  """Waits for the pending saves; a failed one is a `SaveError`."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # orbax re-raises the writer's error as is.
    raise _save_error(manager.directory, e) from e


def save(manager: ocp.CheckpointManager, state: state_lib.TrainState,
         config: ml_collections.ConfigDict) -> None:
  """Starts saving `state` and `config` at `state.step` (asynchronously).

  All processes must call this. Call `manager.wait_until_finished()` before
  the process exits.
  """
  step = int(jax.device_get(state.step))
  directory = pathlib.Path(str(manager.directory))
  if jax.process_index() == 0:
    _check_writable(directory, sum(
        x.nbytes for x in jax.tree_util.tree_leaves(state)))
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config_to_dict(config))), force=True)
  except Exception as e:  # orbax re-raises a writer's error (OSError,
    # tensorstore's ValueError, ...) from the previous save here.
    raise _save_error(directory, e) from e


def _step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
  return pathlib.Path(str(manager.directory)) / str(step)


def _restore_item(manager: ocp.CheckpointManager, step: int, what: str,
                  **items: Any) -> Any:
  """`manager.restore` of `items` at `step`, failures as CheckpointError."""
  # Before the read: the echoes of a failed one start before it raises.
  unreadable.quiet_abandoned_reads()
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax raises many types; all mean the same here.
    raise CheckpointError(
        f'Cannot read {what} {_step_dir(manager, step) / next(iter(items))} '
        f'(corrupt or incomplete; --traceback shows the detail): '
        f'{unreadable.reason(e)}') from e


def _check_step(manager: ocp.CheckpointManager, step: int) -> None:
  if step not in manager.all_steps():
    raise CheckpointError(
        f'No checkpoint at step {step} ({_step_dir(manager, step)}); saved '
        f'steps: {list(manager.all_steps())}.')


def restore(manager: ocp.CheckpointManager, step: int,
            abstract_state: state_lib.TrainState) -> state_lib.TrainState:
  """Restores the `TrainState` saved at `step`.

  Args:
    manager: from `checkpoint_manager`.
    step: a saved step (see `manager.all_steps()`).
    abstract_state: a `TrainState` of `jax.ShapeDtypeStruct`s with shardings
      (e.g. `state.abstract_train_state(config, mesh)`); restored arrays take
      these shapes, dtypes and layouts.

  Raises:
    CheckpointError: the checkpoint is missing, corrupt or does not match
      `abstract_state`; the message names its directory.
  """
  _check_step(manager, step)
  return _restore_item(manager, step, 'the checkpoint', state=(
      ocp.args.StandardRestore(abstract_state))).state


def restore_config(manager: ocp.CheckpointManager,
                   step: int) -> ml_collections.ConfigDict:
  """The config saved with the checkpoint at `step`.

  Raises:
    CheckpointError: it cannot be read, or is not a config of this project.
  """
  restored = _restore_item(manager, step, 'the config of checkpoint',
                           config=ocp.args.JsonRestore())
  values = restored.config
  if not (isinstance(values, dict) and isinstance(values.get('model'), dict)
          and isinstance(values['model'].get('name'), str)):
    raise CheckpointError(
        f'Cannot read the config of checkpoint '
        f'{_step_dir(manager, step) / "config"}: it is not a run config '
        '(no model.name).')
  return ml_collections.ConfigDict(values)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_compatible(manager: ocp.CheckpointManager, step: int,
                     config: ml_collections.ConfigDict,
                     abstract_state: state_lib.TrainState,
                     saved: Optional[ml_collections.ConfigDict] = None) -> None:
  """Raises `IncompatibleCheckpointError` if `step` holds another model.

  Compares the model name saved with the checkpoint (`saved`, read from it
  when not given), then the parameter shapes in its metadata, with those of
  `config`; the message names both models or the first parameter that
  differs.
  """
  if saved is None:
    saved = restore_config(manager, step)
  fresh = ('Pass a fresh --workdir to train this config, or the config the '
           'checkpoints were trained with to resume them.')
  where = _step_dir(manager, step)
  if saved.model.name != config.model.name:
    raise IncompatibleCheckpointError(
        f'{where} holds {saved.model.name!r}, but the config trains '
        f'{config.model.name!r}. {fresh}')
  try:
    metadata = manager.item_metadata(step)['state']
    stored = _flat_shapes(metadata['params'])
  except Exception:  # pylint: disable=broad-except
    return  # No readable metadata: the restore itself will tell.
  wanted = _flat_shapes(abstract_state.params)
  for name in sorted(wanted.keys() | stored.keys()):
    if wanted.get(name) != stored.get(name):
      raise IncompatibleCheckpointError(
          f'{where} does not fit {config.model.name!r} with these '
          f'model.kwargs: {name} is {stored.get(name, "absent")} there and '
          f'{wanted.get(name, "absent")} here. {fresh}')


def restore_newest(
    manager: ocp.CheckpointManager, abstract_state: state_lib.TrainState,
    config: Optional[ml_collections.ConfigDict] = None,
) -> tuple[Optional[state_lib.TrainState],
           Optional[ml_collections.ConfigDict], list[unreadable.Skipped]]:
  """The newest checkpoint that restores, and the newer ones that did not.

  A checkpoint whose config or state cannot be read (truncated, garbled,
  missing metadata) is skipped and left where it is (see
  `unreadable.set_aside`). With `config`, each readable checkpoint is first
  checked to hold the same model (`check_compatible`): another model is an
  error, not a skip.

  Returns:
    (state, its saved config, the skipped checkpoints newest first); state
    and config are None when there are no checkpoints.

  Raises:
    CheckpointError: there are checkpoints and none of them restores.
    IncompatibleCheckpointError: a readable checkpoint holds another model.
  """
  skipped = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved = restore_config(manager, step)
      if config is not None:
        check_compatible(manager, step, config, abstract_state, saved)
      return restore(manager, step, abstract_state), saved, skipped
    except IncompatibleCheckpointError:
      raise
    except CheckpointError as e:
      skipped.append(unreadable.Skipped(step, _step_dir(manager, step),
                                        str(e)))
  if skipped:
    raise CheckpointError(
        f'No checkpoint in {manager.directory} can be read (steps '
        f'{", ".join(str(s.step) for s in skipped)}); the newest: '
        f'{skipped[0].reason} Pass a fresh --workdir to start over.')
  return None, None, skipped


def restore_latest(
    workdir: PathLike,
    abstract_state: Optional[state_lib.TrainState] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
) -> tuple[ml_collections.ConfigDict, state_lib.TrainState]:
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
      mesh = state_lib.make_mesh() if mesh is None else mesh
      abstract_state = state_lib.abstract_train_state(config, mesh)
    return config, restore(manager, step, abstract_state)
  finally:
    manager.close()


@dataclasses.dataclass
class Saved:
  """One checkpoint as it was saved, read without building its model.

  Attributes:
    config: the run's config, as saved with the checkpoint.
    step: the checkpoint's training step.
    path: the checkpoint's step directory (WORKDIR/checkpoints/<step>).
    state: the `TrainState` fields as a dict of host arrays ('params',
      'ema_params', 'model_state', 'ema_state', ...).
  """
  config: ml_collections.ConfigDict
  step: int
  path: pathlib.Path
  state: dict[str, Any]

  def weights(self, use_ema: bool = True) -> tuple[Any, Any]:
    """(params, model state): the EMA ones, or the raw ones."""
    prefix = 'ema_' if use_ema else ''
    try:
      return (self.state[f'{prefix}params'],
              self.state['ema_state' if use_ema else 'model_state'])
    except (KeyError, TypeError) as e:
      raise CheckpointError(f'{self.path / "state"} is not a TrainState '
                            f'checkpoint (no {e}).') from e


def resolve_path(path: PathLike) -> tuple[pathlib.Path, Optional[int]]:
  """(work directory, step or None) of a work or step directory."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f'No work directory or checkpoint at {path}.')
  if path.parent.name == CHECKPOINT_DIR and path.name.isdigit():
    return path.parent.parent, int(path.name)
  if (path / CHECKPOINT_DIR).is_dir():
    return path, None
  raise CheckpointError(
      f'{path} is neither a work directory (with {CHECKPOINT_DIR}/) nor a '
      f'checkpoint step directory ({CHECKPOINT_DIR}/<step>).')


def read_saved(path: PathLike, step: Optional[int] = None) -> Saved:
  """Reads one checkpoint of a run as saved, read-only.

  Args:
    path: a work directory, or one of its checkpoints
      (WORKDIR/checkpoints/<step>).
    step: which saved step of a work directory (default: the newest).

  Raises:
    CheckpointError: no such directory or step, or an unreadable (corrupt)
      checkpoint; the message names the directory.
  """
  workdir, path_step = resolve_path(path)
  if step is None:
    step = path_step
  elif path_step is not None and path_step != step:
    raise CheckpointError(f'{path} is step {path_step}, not step {step}.')
  manager = checkpoint_manager(workdir, read_only=True)
  try:
    if step is None:
      step = manager.latest_step()
      if step is None:
        raise CheckpointError(f'No checkpoint in {workdir / CHECKPOINT_DIR}.')
    _check_step(manager, step)
    config = restore_config(manager, step)
    # Restored from the checkpoint's own metadata: reading needs no model or
    # optimizer, and callers check the arrays against theirs.
    restored = _restore_item(manager, step, 'the checkpoint',
                             state=ocp.args.StandardRestore())
  finally:
    manager.close()
  return Saved(config=config, step=int(step), path=_step_dir(manager, step),
               state=restored.state)
