"""`train_and_evaluate(config, workdir)`: the loop around the one train step.

The step is jitted once with explicit shardings over a 1-D mesh of every
device. The Python loop around it only moves data, writes logs and
checkpoints, and reads device values only at log steps.

On start the loop resumes from the work directory's newest checkpoint; it
saves every `config.checkpoint.every_steps`, at the end, and on SIGTERM. The
layout of the work directory is described in `nfnets.train.checkpoint`.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Callable, Iterator, Mapping, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from nfnets import data
from nfnets.data import host_prefetch
from nfnets.train import checkpoint
from nfnets.train import config as config_lib
from nfnets.train import lock as lock_lib
from nfnets.train import metrics as metrics_lib
from nfnets.train import preemption
from nfnets.train import progress as progress_lib
from nfnets.train import state as state_lib
from nfnets.train import step as step_lib
from nfnets.train import unreadable

Metrics = metrics_lib.Metrics


def _evaluate(eval_step: step_lib.EvalStep, state: state_lib.TrainState,
              config: ml_collections.ConfigDict,
              sharding: jax.sharding.Sharding) -> Metrics:
  """Top-1/top-5 and loss over the eval split, raw and EMA weights."""
  batches = data.build_eval(
      config.data, batch_size=config.eval.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count())
  totals = {}
  for batch in data.prefetch_to_devices(
      host_prefetch.prefetch_on_host(batches), sharding):
    for prefix, params, model_state in (
        ('', state.params, state.model_state),
        ('ema_', state.ema_params, state.ema_state)):
      for key, value in eval_step(params, model_state, batch).items():
        key = prefix + key
        totals[key] = value if key not in totals else totals[key] + value
  totals = jax.device_get(totals)
  count = max(int(totals.pop('count')), 1)
  totals.pop('ema_count')
  return {f'eval/{k}': float(v) / count for k, v in totals.items()}


def train_batches(config: ml_collections.ConfigDict, start_step: int,
                  sharding: jax.sharding.Sharding
                  ) -> Iterator[dict[str, jax.Array]]:
  """The training batches from `start_step` on, as global sharded arrays.

  This process's host batches are made by a background thread
  (`host_prefetch`, 2 ahead) and placed on the devices 2 batches ahead of
  use (`data.prefetch_to_devices`), so neither the host work nor the
  transfer of the next batch waits for the running step to finish.
  """
  tc = config.training
  host_batches = data.build_train(
      config.data, batch_size=tc.batch_size // jax.process_count(),
      seed=tc.seed, start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  return data.prefetch_to_devices(
      host_prefetch.prefetch_on_host(host_batches), sharding)


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _warn_config_changes(saved: ml_collections.ConfigDict,
                         config: ml_collections.ConfigDict) -> None:
  """Logs the fields that differ from the config saved with the checkpoint."""
  old = _flatten(checkpoint.config_to_dict(saved))
  new = _flatten(checkpoint.config_to_dict(config))
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  if changed:
    logging.warning('Resuming with a config that differs from the '
                    "checkpoint's: %s.", ', '.join(
                        f'{k}: {old.get(k)!r} -> {new.get(k)!r}'
                        for k in changed))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: os.PathLike | str) -> Metrics:
  """Trains and evaluates `config` in `workdir`, resuming if it has checkpoints.

  Args:
    config: a full config (see `nfnets.train.config.base_config`); validated
      before anything is built.
    workdir: where config, logs and checkpoints go (see
      `nfnets.train.checkpoint`).

  Returns:
    The final metrics: 'step', the last logged 'train/...' means and the final
    'eval/{top1,top5,loss}' and 'eval/ema_{top1,top5,loss}' (fractions), and
    'preempted' (1.0 if stopped early by SIGTERM, else 0.0).

  Raises:
    ConfigError: an invalid config (before any compute).
    checkpoint.CheckpointError: the newest checkpoint cannot be read; it is
      left as it is.
    FloatingPointError: a non-finite loss; the message names the step, and
      the newest checkpoint (from before it) is kept.
  """
  config_lib.validate_config(config)
  workdir = pathlib.Path(workdir)
  mesh = state_lib.make_mesh()
  total_steps, _ = config_lib.durations(config)
  model = state_lib.build_model(config)
  try:
    abstract_state = state_lib.abstract_train_state(config, mesh)
  except (ValueError, TypeError) as e:
    raise config_lib.ConfigError(
        f'Model {config.model.name!r} cannot be built with model.kwargs '
        f'{config.model.kwargs.to_dict()}: {e}') from e
  optimizer, schedule = state_lib.build_optimizer(config)
  data.check_available(config.data)

  # Nothing is written before the lock is held and the work directory's
  # checkpoints are known to fit this config.
  lock = _lock(workdir)
  try:
    init = functools.partial(state_lib.init_train_state, config, model,
                             optimizer)
    state = _initial_state(config, workdir, abstract_state, init)
  except BaseException:
    if lock is not None:
      lock.release(undo=True)
    raise
  try:
    return _run(config, workdir, state, model, optimizer, schedule, mesh,
                total_steps)
  finally:
    if lock is not None:
      lock.release()


def _lock(workdir: pathlib.Path) -> Optional[lock_lib.WorkdirLock]:
  """Process 0 locks the work directory; every process learns the outcome."""
  lock, busy = None, ''
  if jax.process_index() == 0:
    lock = lock_lib.WorkdirLock(workdir)
    try:
      lock.acquire()
    except lock_lib.WorkdirBusyError as e:
      busy = str(e)
  if jax.process_count() > 1:
    failed = multihost_utils.broadcast_one_to_all(np.asarray(bool(busy)))
    if bool(failed) and not busy:
      busy = (f'{workdir} is in use by another run (process 0 could not '
              'lock it).')
  if busy:
    raise lock_lib.WorkdirBusyError(busy)
  return lock


def _initial_state(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                   abstract_state: state_lib.TrainState,
                   init: Callable[[jax.Array], state_lib.TrainState]
                   ) -> state_lib.TrainState:
  """The newest restorable checkpoint that fits `config`, else a fresh state.

  Raises before anything is written when the work directory's checkpoints
  hold another model or none of them restores. Newer checkpoints that could
  not be read are renamed aside (`unreadable.set_aside`) once an older one
  has restored.
  """
  if (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
    manager = checkpoint.checkpoint_manager(workdir, read_only=True)
    try:
      state, saved, skipped = checkpoint.restore_newest(
          manager, abstract_state, config)
    finally:
      manager.close()
    if state is not None:
      step = int(jax.device_get(state.step))
      _set_aside(skipped, step)
      logging.info('Resumed from step %d in %s.', step, workdir)
      _warn_config_changes(saved, config)
      return state
  init = jax.jit(init, out_shardings=abstract_state.step.sharding)
  # The initial state is replicated, so the sharding-invariant threefry
  # buys nothing here, and the classic one halves XLA's CPU compile time
  # of the many initializers.
  with jax.threefry_partitionable(False):
    state = init(jax.random.PRNGKey(config.training.seed))
  logging.info('Starting %s from scratch in %s.', config.model.name, workdir)
  return state


def _set_aside(skipped: list[unreadable.Skipped], step: int) -> None:
  """Moves the unreadable checkpoints newer than `step` out of the way.

  Training past them must save their steps again, which orbax refuses while
  the old directories are there. Process 0 renames them (nothing is
  deleted); every process waits for it before going on.
  """
  if not skipped:
    return
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('nfnets: restored, before set-aside')
  for item in skipped:
    where = item.path
    if jax.process_index() == 0:
      where = unreadable.set_aside(item.path)
    logging.warning('Checkpoint %s cannot be read; moved it to %s and resumed '
                    'from step %d. %s', item.path, where, step, item.reason)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('nfnets: set aside')


def _log_startup(config: ml_collections.ConfigDict,
                 state: state_lib.TrainState, mesh: jax.sharding.Mesh,
                 step: int, total_steps: int) -> None:
  """One line saying where and what this process runs."""
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  batch = config.training.batch_size
  logging.info(
      'Process %d of %d on %s: %d device%s (%d local), mesh %s; batch %d '
      '(%d per device); %s with %s parameters; steps %d to %d.',
      jax.process_index(), jax.process_count(), jax.default_backend(),
      jax.device_count(), 's' if jax.device_count() != 1 else '',
      jax.local_device_count(), dict(mesh.shape), batch,
      batch // jax.device_count(), config.model.name, f'{num_params:,}',
      step, total_steps)


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path,
         state: state_lib.TrainState, model: Any, optimizer: Any,
         schedule: Any, mesh: jax.sharding.Mesh, total_steps: int) -> Metrics:
  """The loop proper, from `state` on; see `train_and_evaluate`."""
  tc = config.training
  batch_sharded = state_lib.batch_sharded(mesh)
  checkpoint.write_config(config, workdir)
  manager = checkpoint.checkpoint_manager(
      workdir, max_to_keep=config.checkpoint.max_to_keep)
  step = int(jax.device_get(state.step))

  train_step = step_lib.compile_train_step(
      step_lib.make_train_step(config, model, optimizer, mesh), mesh)
  eval_step = step_lib.compile_eval_step(
      step_lib.make_eval_step(config, model), mesh)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                    start_step=step)
  writer.write_hparams(_flatten(checkpoint.config_to_dict(config)))
  _log_startup(config, state, mesh, step, total_steps)
  batches = train_batches(config, step, batch_sharded)

  final: Metrics = {}
  pending = metrics_lib.Pending()
  progress = progress_lib.Progress(total_steps=total_steps,
                                   batch_size=tc.batch_size,
                                   enabled=jax.process_index() == 0)
  # From the second step of this run on: the first one compiles.
  profiler = progress_lib.StepProfiler(
      str(workdir / 'profile'), first_step=step + 2,
      num_steps=tc.get('profile_steps', 0))
  first_step = step + 1

  def every(n: int) -> bool:
    return n > 0 and step % n == 0

  try:
    with preemption.PreemptionWatcher() as watcher:
      stopped = False
      while step < total_steps:
        profiler.before_step(step + 1)
        state, metrics = train_step(state, next(batches))
        step += 1
        profiler.after_step(step, metrics)
        if step == first_step:
          # The speed excludes the compilation of the first step.
          jax.block_until_ready(metrics)
          progress.start(step)
        # Cheap: a save that failed in the background stops the run now.
        checkpoint.check_saves(manager)
        pending.add(step, metrics)
        is_last = step == total_steps
        do_log = is_last or every(tc.log_every)
        stopped = watcher.should_stop(at_log_step=do_log)
        do_eval = is_last or every(config.eval.every_steps)
        do_save = is_last or stopped or every(config.checkpoint.every_steps)
        if do_log or do_eval or do_save:
          # Reading the metrics waits for the step; a NaN found here stops the
          # run before its parameters can reach a checkpoint.
          means = pending.fetch()
          speed = progress.lap(step)
          final = {f'train/{k}': v for k, v in means.items()}
          final['train/learning_rate'] = float(
              jax.device_get(schedule(step - 1)))
          if speed is not None:
            final['train/images_per_sec'] = speed.images_per_sec
            final['train/step_time'] = speed.step_time
          progress.show(step, means, speed)
        if do_eval:
          with progress.paused():
            final.update(_evaluate(eval_step, state, config, batch_sharded))
          logging.info('step %d eval: %s', step, ', '.join(
              f'{k[5:]} {v:.4f}' for k, v in final.items()
              if k.startswith('eval/')))
        if do_log or do_eval or do_save:
          # One record per step: its train means and, at an eval step, its
          # evaluation.
          writer.write(step, final)
        if do_save:
          # After the evaluation: tfds' mock file system (used in tests) is
          # process-wide while a pipeline is built, and would swallow the
          # files of an asynchronous save still being written.
          with progress.paused():
            checkpoint.save(manager, state, config)
        if stopped:
          logging.warning('Stopped at step %d after SIGTERM; checkpoint saved.',
                          step)
          break
    checkpoint.wait_for_saves(manager)
  except metrics_lib.NonFiniteLossError as e:
    checkpoint.wait_for_saves(manager)
    kept = manager.latest_step()
    where = (f'the newest checkpoint, {manager.directory}/{kept}, is from '
             'before it and is kept' if kept is not None else
             'no checkpoint had been saved yet')
    raise metrics_lib.NonFiniteLossError(
        f'{e} Training stopped; {where}. Lower the learning rate or the '
        'AGC threshold, or resume from it.') from None
  finally:
    # Stops the host batch thread now rather than when garbage collected.
    batches.close()
    try:
      manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass  # Already reported as a SaveError, or hidden behind the error.
    manager.close()
    writer.close()
    progress.close()
    profiler.stop()

  if step == total_steps and not any(k.startswith('eval/') for k in final):
    # Resumed a finished run: report its evaluation.
    final.update(_evaluate(eval_step, state, config, batch_sharded))
  final['step'] = float(step)
  final['preempted'] = float(stopped if step < total_steps else False)
  return final
