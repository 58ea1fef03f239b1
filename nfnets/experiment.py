r"""The runner: a config in, a trained and evaluated model in a work directory.

  python -m nfnets.experiment --config=experiments/nfnet_f1.py --workdir=DIR
  python -m nfnets.experiment --workdir=runs/digits      # experiments/digits.py

One pure `train_step(state, batch) -> (state, metrics)` is jitted once with
explicit shardings over a 1-D mesh of every device: the batch is split on its
leading axis, parameters and optimizer state are replicated, and XLA inserts
the gradient all-reduce. The Python loop around it only moves data, writes
logs and checkpoints, and never reads a device value between log steps.

On start the runner resumes from the work directory's newest checkpoint; it
saves every `config.checkpoint.every_steps`, at the end, and on SIGTERM. The
layout of the work directory is described in `nfnets.train_state`.
"""
from __future__ import annotations

if __name__ == '__main__':
  # Before the imports below, which a re-executed process would redo.
  from nfnets import host  # pylint: disable=g-import-not-at-top
  host.reexec_with_huge_pages()

# pylint: disable=g-import-not-at-top,g-bad-import-order
import functools
import json
import logging as pylogging
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import haiku as hk
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import jmp
from ml_collections import config_flags
import ml_collections
import numpy as np
import optax

from nfnets import configs
from nfnets import data
from nfnets import models
from nfnets import optim
from nfnets import train_state as ts

TrainState = ts.TrainState
Metrics = dict[str, float]

COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
_DEFAULT_CONFIG = (pathlib.Path(__file__).resolve().parent.parent /
                   'experiments' / 'digits.py')


# Config -----------------------------------------------------------------------


class ConfigError(ValueError):
  """A config the runner cannot run; raised before any compute."""


def get_steps(group: ml_collections.ConfigDict, name: str, *,
              batch_size: int, num_examples: int,
              default: Optional[int] = None) -> int:
  """Resolves a duration given as `{name}_steps` or `{name}_epochs`.

  Args:
    group: the config group holding the fields (e.g. `config.training`).
    name: the duration's prefix, e.g. 'num' or 'warmup'.
    batch_size: global batch size (examples per step).
    num_examples: examples per epoch.
    default: steps when neither field is set; None makes that an error.

  Returns:
    A number of optimizer steps (epochs are rounded to the nearest step).

  Raises:
    ConfigError: both fields set, or neither and no default.
  """
  steps = group.get(f'{name}_steps')
  epochs = group.get(f'{name}_epochs')
  if steps is not None and epochs is not None:
    raise ConfigError(f'Set only one of {name}_steps ({steps}) and '
                      f'{name}_epochs ({epochs}).')
  if steps is not None:
    return int(steps)
  if epochs is not None:
    return int(round(epochs * num_examples / batch_size))
  if default is None:
    raise ConfigError(f'Set {name}_steps or {name}_epochs.')
  return default


def _type_ok(value: Any, expected: type) -> bool:
  if value is None:
    return True
  if expected is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if expected is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if expected in (tuple, list):
    return isinstance(value, (tuple, list))
  return isinstance(value, expected)


def _check_fields(config: ml_collections.ConfigDict,
                  schema: ml_collections.ConfigDict, path: str) -> None:
  """Unknown, missing or mistyped fields of `config` against `schema`."""
  unknown = sorted(set(config.keys()) - set(schema.keys()))
  if unknown:
    raise ConfigError(
        f'Unknown config field(s) {", ".join(path + k for k in unknown)}; '
        f'fields of {path.rstrip(".") or "the config"}: '
        f'{", ".join(sorted(schema.keys()))}.')
  missing = sorted(set(schema.keys()) - set(config.keys()))
  if missing:
    raise ConfigError(
        f'Missing config field(s) {", ".join(path + k for k in missing)}.')
  for key in schema.keys():
    expected = schema[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ConfigError(f'{path}{key} must be a group of fields, got '
                          f'{config[key]!r}.')
      if f'{path}{key}' != 'model.kwargs':
        _check_fields(config[key], expected, f'{path}{key}.')
      continue
    expected_type = schema.get_type(key)
    if expected_type is type(None):
      continue
    if not _type_ok(config[key], expected_type):
      raise ConfigError(
          f'{path}{key} must be {expected_type.__name__}, got '
          f'{config[key]!r} ({type(config[key]).__name__}).')


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: Optional[int] = None) -> None:
  """Checks everything that can be checked without data or compute.

  Args:
    config: a full run config (see `nfnets.configs.base_config`).
    num_devices: devices the batch is split over (default: all).

  Raises:
    ConfigError: unknown or missing field, wrong type, unknown model, model
      argument, data set or dtype, bad durations, or a batch size that does
      not divide over devices and processes.
  """
  _check_fields(config, configs.base_config(), '')
  try:
    models.get_spec(config.model.name)
    allowed = models.accepted_overrides(config.model.name)
    data.validate(config.data)
    optim.validate_config(config.optimizer)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  unknown = sorted(set(config.model.kwargs.keys()) - set(allowed))
  if unknown:
    raise ConfigError(f'Model {config.model.name!r} does not take '
                      f'model.kwargs {unknown}; it takes: {", ".join(allowed)}.')
  tc = config.training
  if tc.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f'training.compute_dtype must be one of '
                      f'{COMPUTE_DTYPES}, got {tc.compute_dtype!r}.')
  num_devices = num_devices or jax.device_count()
  num_processes = jax.process_count()
  for name, batch in (('training.batch_size', tc.batch_size),
                      ('eval.batch_size', config.eval.batch_size)):
    if batch < 1:
      raise ConfigError(f'{name} must be positive, got {batch}.')
    if batch % num_devices or batch % num_processes:
      raise ConfigError(
          f'{name}={batch} does not divide over {num_devices} devices '
          f'({num_processes} processes); use a multiple of {num_devices}.')
  total, warmup = durations(config)
  if total < 1:
    raise ConfigError(f'The run must be at least one step long; '
                      f'training.num_steps/num_epochs give {total}.')
  if warmup > total:
    raise ConfigError(f'The warmup ({warmup} steps) is longer than the run '
                      f'({total} steps).')
  if not 0.0 <= tc.label_smoothing < 1.0:
    raise ConfigError(f'training.label_smoothing must be in [0, 1), got '
                      f'{tc.label_smoothing}.')
  if not 0.0 <= tc.ema_decay < 1.0:
    raise ConfigError(f'training.ema_decay must be in [0, 1), got '
                      f'{tc.ema_decay}.')
  for name, value in (('training.log_every', tc.log_every),):
    if value < 1:
      raise ConfigError(f'{name} must be positive, got {value}.')
  for name, value in (('eval.every_steps', config.eval.every_steps),
                      ('checkpoint.every_steps', config.checkpoint.every_steps)):
    if value < 0:
      raise ConfigError(f'{name} must be >= 0, got {value}.')


# Model, optimizer and state ---------------------------------------------------


def build_model(config: ml_collections.ConfigDict,
                **overrides: Any) -> hk.TransformedWithState:
  """The transformed model of `config.model` with the data set's classes.

  `overrides` replace or add constructor arguments of `config.model.kwargs`
  (e.g. `conv=layers.PrestandardizedConv2D` for inference).
  """
  kwargs = {**config.model.kwargs.to_dict(), **overrides}
  return hk.transform_with_state(models.create(
      config.model.name, num_classes=data.num_classes(config.data), **kwargs))


def durations(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(total steps, warmup steps) of a config, from steps or epochs."""
  tc = config.training
  num_examples = data.num_examples(config.data)
  total = get_steps(tc, 'num', batch_size=tc.batch_size,
                    num_examples=num_examples)
  warmup = optim.resolve_warmup_steps(
      config.optimizer, steps_per_epoch=num_examples / tc.batch_size)
  return total, warmup


def build_optimizer(config: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The NFNet optimizer of `config.optimizer` and its learning-rate schedule.

  Returns:
    (optimizer, schedule: step -> learning rate), with the run's durations
    and global batch size.
  """
  total, warmup = durations(config)
  batch_size = config.training.batch_size
  optimizer = optim.nfnet_optimizer(config.optimizer, batch_size=batch_size,
                                    total_steps=total, warmup_steps=warmup)
  schedule = optim.learning_rate_schedule(
      config.optimizer, batch_size=batch_size, total_steps=total,
      warmup_steps=warmup)
  return optimizer, schedule


def _sample_images(config: ml_collections.ConfigDict) -> jax.ShapeDtypeStruct:
  size = config.data.image_size
  return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def init_train_state(config: ml_collections.ConfigDict,
                     model: hk.TransformedWithState,
                     optimizer: optax.GradientTransformation,
                     rng: jax.Array) -> TrainState:
  """A fresh `TrainState` (pure; jit it with replicated output shardings)."""
  init_rng, train_rng = jax.random.split(rng)
  images = jnp.zeros(_sample_images(config).shape, jnp.float32)
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
  return ts.abstract(shapes, ts.replicated(mesh))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay warmed up as min(decay, (1 + t) / (10 + t)) ([NFNet] appendix).

  Early on the average follows the weights closely, so the EMA weights are
  useful long before 1 / (1 - decay) steps have passed.
  """
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def _ema(decay: jax.Array, average: Any, value: Any) -> Any:
  def update(a, v):
    if not jnp.issubdtype(v.dtype, jnp.floating):
      return v  # Counters and other integer state are copied, not averaged.
    return (decay * a + (1.0 - decay) * v).astype(v.dtype)
  return jax.tree.map(update, average, value)


def targets_of(batch: Mapping[str, jax.Array], num_classes: int,
               label_smoothing: float) -> jax.Array:
  """Smoothed one-hot targets [B, num_classes] of a (possibly mixed) batch.

  With MixUp/CutMix the target is r * onehot(labels) + (1 - r) *
  onehot(mix_labels); label smoothing then maps t to
  (1 - eps) * t + eps / num_classes.
  """
  targets = jax.nn.one_hot(batch['labels'], num_classes)
  if 'mix_labels' in batch:
    ratio = batch['mix_ratio'][:, None]
    targets = (ratio * targets +
               (1.0 - ratio) * jax.nn.one_hot(batch['mix_labels'], num_classes))
  return optax.smooth_labels(targets, label_smoothing)


def make_train_step(config: ml_collections.ConfigDict,
                    model: hk.TransformedWithState,
                    optimizer: optax.GradientTransformation,
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """The pure training step of `config`: forward, loss, AGC + SGD, EMA.

  The returned `train_step(state, batch) -> (state, metrics)` takes a global
  batch {'images': [B, H, W, 3], 'labels': [B] (, 'mix_labels', 'mix_ratio')}
  and returns scalar metrics: 'loss' (smoothed cross-entropy), 'top1'
  (against `labels`), 'grad_norm' (global L2 norm before clipping).
  """
  tc = config.training
  num_classes = data.num_classes(config.data)
  policy = jmp.get_policy(
      f'params=float32,compute={tc.compute_dtype},output=float32')

  def loss_fn(params, model_state, rng, batch):
    # Parameters are cast per step, so the float32 master copy gets the
    # gradients; model state (e.g. BN averages) stays float32.
    logits, model_state = model.apply(
        policy.cast_to_compute(params), model_state, rng,
        policy.cast_to_compute(batch['images']), is_training=True)
    logits = policy.cast_to_output(logits)  # [B, num_classes]
    targets = targets_of(batch, num_classes, tc.label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    top1 = jnp.mean(jnp.argmax(logits, -1) == batch['labels'])
    return loss, (model_state, top1)

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    rng, step_rng = jax.random.split(state.rng)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (model_state, top1)), grads = grad_fn(
        state.params, state.model_state, step_rng, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, tc.ema_decay)
    new_state = TrainState(
        step=state.step + 1, params=params, model_state=model_state,
        opt_state=opt_state, ema_params=_ema(decay, state.ema_params, params),
        ema_state=_ema(decay, state.ema_state, model_state), rng=rng)
    metrics = {'loss': loss, 'top1': top1,
               'grad_norm': optax.tree.norm(grads)}
    return new_state, metrics

  return train_step


def make_eval_step(config: ml_collections.ConfigDict,
                   model: hk.TransformedWithState
                   ) -> Callable[[hk.Params, hk.State, Mapping[str, jax.Array]],
                                 dict[str, jax.Array]]:
  """`eval_step(params, model_state, batch) -> sums over the batch`.

  The batch is {'images', 'labels', 'mask'}; padded rows (mask False) count
  nowhere. Returns the sums of 'loss' (cross-entropy), 'top1' and 'top5'
  (correct predictions) and 'count' (valid rows). The same compiled step
  serves the raw and the EMA weights.
  """
  num_classes = data.num_classes(config.data)
  k = min(5, num_classes)
  policy = jmp.get_policy(
      f'params=float32,compute={config.training.compute_dtype},output=float32')

  def eval_step(params, model_state, batch):
    logits, _ = model.apply(
        policy.cast_to_compute(params), model_state, None,
        policy.cast_to_compute(batch['images']), is_training=False)
    logits = policy.cast_to_output(logits)  # [B, num_classes]
    labels, mask = batch['labels'], batch['mask']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top1 = jnp.argmax(logits, -1) == labels
    topk = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
    return {'loss': jnp.sum(jnp.where(mask, loss, 0.0)),
            'top1': jnp.sum(top1 & mask), 'top5': jnp.sum(topk & mask),
            'count': jnp.sum(mask)}

  return eval_step


# Logging and preemption -------------------------------------------------------


class MetricWriter:
  """TensorBoard events and a JSON-lines file in the work directory.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    # Deferred: TensorFlow takes seconds to import and only logging needs it.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._tb = tf.summary.create_file_writer(str(workdir / 'tensorboard'))
    # What tensorboard's scalar summary writes, spelled out: tensorflow-cpu
    # does not ship the tensorboard package that tf.summary.scalar needs.
    self._scalar = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name='scalars'))
    self._jsonl = open(workdir / 'metrics.jsonl', 'a')

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Writes scalars at `step`; keys are TensorBoard tags ('train/loss')."""
    if not self._enabled:
      return
    with self._tb.as_default(step=step):
      for key, value in metrics.items():
        self._tf.summary.write(key, self._tf.constant(value, self._tf.float32),
                               metadata=self._scalar)
    record = {'step': step, 'time': time.time(),
              **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._tb.close()
      self._jsonl.close()


class PreemptionWatcher:
  """Turns SIGTERM into a request to save and stop at the next step.

  With several processes, a request on any of them stops all of them, at the
  same step: the flags are all-gathered at log steps only (a collective every
  step would cost time).
  """

  def __init__(self):
    self._requested = False
    self._previous = None

  def __enter__(self) -> 'PreemptionWatcher':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint and stopping.')
    self._requested = True

  def should_stop(self, at_log_step: bool) -> bool:
    """Whether every process should save and stop now."""
    if jax.process_count() == 1:
      return self._requested
    if not at_log_step:
      return False
    flags_ = multihost_utils.process_allgather(np.asarray(self._requested))
    return bool(np.any(flags_))


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  h, rem = divmod(int(seconds), 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}'


# The loop ---------------------------------------------------------------------


def _evaluate(eval_step, state: TrainState, config: ml_collections.ConfigDict,
              sharding: jax.sharding.Sharding) -> Metrics:
  """Top-1/top-5 and loss over the eval split, raw and EMA weights."""
  batches = data.build_eval(
      config.data, batch_size=config.eval.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count())
  totals = {}
  for batch in data.prefetch_to_devices(batches, sharding):
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
  old = _flatten(ts.config_to_dict(saved))
  new = _flatten(ts.config_to_dict(config))
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  if changed:
    logging.warning('Resuming with a config that differs from the '
                    "checkpoint's: %s.", ', '.join(
                        f'{k}: {old.get(k)!r} -> {new.get(k)!r}'
                        for k in changed))


class _Pending:
  """Per-step device metrics kept until the next log step, then fetched."""

  def __init__(self):
    self.items: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.items.append((step, metrics))

  def fetch(self) -> Metrics:
    """Mean metrics since the last fetch; raises on a non-finite loss."""
    items, self.items = self.items, []
    steps = [s for s, _ in items]
    values = jax.device_get([m for _, m in items])
    for step, m in zip(steps, values):
      if not np.isfinite(m['loss']):
        raise FloatingPointError(f'Non-finite loss ({m["loss"]}) at step '
                                 f'{step}.')
    return {k: float(np.mean([m[k] for m in values])) for k in values[0]}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: os.PathLike | str) -> Metrics:
  """Trains and evaluates `config` in `workdir`, resuming if it has checkpoints.

  Args:
    config: a full config (see `nfnets.configs`); validated before anything
      is built.
    workdir: where config, logs and checkpoints go (see `nfnets.train_state`).

  Returns:
    The final metrics: 'step', the last logged 'train/...' means and the final
    'eval/{top1,top5,loss}' and 'eval/ema_{top1,top5,loss}' (fractions), and
    'preempted' (1.0 if stopped early by SIGTERM, else 0.0).

  Raises:
    ConfigError: an invalid config (before any compute).
    train_state.CheckpointError: the newest checkpoint cannot be read; it is
      left as it is.
    FloatingPointError: a non-finite loss; the message names the step, and
      the newest checkpoint (from before it) is kept.
  """
  validate_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tc = config.training
  mesh = ts.make_mesh()
  replicated, batch_sharded = ts.replicated(mesh), ts.batch_sharded(mesh)
  total_steps, _ = durations(config)

  model = build_model(config)
  abstract_state = abstract_train_state(config, mesh)
  optimizer, schedule = build_optimizer(config)
  ts.write_config(config, workdir)
  manager = ts.checkpoint_manager(workdir,
                                  max_to_keep=config.checkpoint.max_to_keep)
  latest = manager.latest_step()
  if latest is None:
    init = jax.jit(functools.partial(init_train_state, config, model,
                                     optimizer), out_shardings=replicated)
    # The initial state is replicated, so the sharding-invariant threefry
    # buys nothing here, and the classic one halves XLA's CPU compile time
    # of the many initializers.
    with jax.threefry_partitionable(False):
      state = init(jax.random.PRNGKey(tc.seed))
    logging.info('Starting %s from scratch in %s.', config.model.name, workdir)
  else:
    state = ts.restore(manager, latest, abstract_state)
    logging.info('Resumed from step %d in %s.', latest, workdir)
    _warn_config_changes(ts.restore_config(manager, latest), config)
  step = int(jax.device_get(state.step))

  train_step = jax.jit(
      make_train_step(config, model, optimizer),
      in_shardings=(replicated, batch_sharded),
      out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(config, model),
                      in_shardings=(replicated, replicated, batch_sharded),
                      out_shardings=replicated)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  batches = data.prefetch_to_devices(data.build_train(
      config.data, batch_size=tc.batch_size // jax.process_count(),
      seed=tc.seed, start_step=step, process_index=jax.process_index(),
      process_count=jax.process_count()), batch_sharded)

  final: Metrics = {}
  pending = _Pending()

  def every(n: int) -> bool:
    return n > 0 and step % n == 0

  last_time, last_step = time.time(), step
  try:
    with PreemptionWatcher() as preemption:
      stopped = False
      while step < total_steps:
        state, metrics = train_step(state, next(batches))
        step += 1
        pending.add(step, metrics)
        is_last = step == total_steps
        do_log = is_last or every(tc.log_every)
        stopped = preemption.should_stop(at_log_step=do_log)
        do_eval = is_last or every(config.eval.every_steps)
        do_save = is_last or stopped or every(config.checkpoint.every_steps)
        if do_log or do_eval or do_save:
          # Reading the metrics waits for the step; a NaN found here stops the
          # run before its parameters can reach a checkpoint.
          means = pending.fetch()
          now = time.time()
          rate = (step - last_step) / max(now - last_time, 1e-9)
          last_time, last_step = now, step
          final = {f'train/{k}': v for k, v in means.items()}
          final['train/learning_rate'] = float(
              jax.device_get(schedule(step - 1)))
          final['train/images_per_sec'] = rate * tc.batch_size
          writer.write(step, final)
          logging.info(
              'step %d/%d  loss %.4f  top1 %.3f  %.0f img/s  ETA %s', step,
              total_steps, means['loss'], means['top1'],
              rate * tc.batch_size, _format_eta((total_steps - step) / rate))
        if do_eval:
          final.update(_evaluate(eval_step, state, config, batch_sharded))
          writer.write(step, {k: v for k, v in final.items()
                              if k.startswith('eval/')})
          logging.info('step %d eval: %s', step, ', '.join(
              f'{k[5:]} {v:.4f}' for k, v in final.items()
              if k.startswith('eval/')))
        if do_save:
          # After the evaluation: tfds' mock file system (used in tests) is
          # process-wide while a pipeline is built, and would swallow the
          # files of an asynchronous save still being written.
          ts.save(manager, state, config)
        if stopped:
          logging.warning('Stopped at step %d after SIGTERM; checkpoint saved.',
                          step)
          break
  except FloatingPointError as e:
    manager.wait_until_finished()
    kept = manager.latest_step()
    where = (f'the newest checkpoint, {manager.directory}/{kept}, is from '
             'before it and is kept' if kept is not None else
             'no checkpoint had been saved yet')
    raise FloatingPointError(f'{e} Training stopped; {where}.') from None
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()

  if step == total_steps and not any(k.startswith('eval/') for k in final):
    # Resumed a finished run: report its evaluation.
    final.update(_evaluate(eval_step, state, config, batch_sharded))
  final['step'] = float(step)
  final['preempted'] = float(stopped if step < total_steps else False)
  return final


# Command line -----------------------------------------------------------------

_CONFIG = config_flags.DEFINE_config_file(
    'config', default=str(_DEFAULT_CONFIG),
    help_string='Config file, e.g. experiments/nfnet_f1.py (add :runlocal to '
    'shrink it to a CPU smoke test); fields are overridden with '
    '--config.training.batch_size=256 etc.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Work directory: config, logs and checkpoints. A run '
    'resumes from the newest checkpoint found here.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', int(os.environ.get('JAX_NUM_PROCESSES', '1')),
    'Number of processes (hosts) of a multi-host run; default from '
    '$JAX_NUM_PROCESSES.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', int(os.environ.get('JAX_PROCESS_ID', '0')),
    'Index of this process in a multi-host run; default from $JAX_PROCESS_ID.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
    'host:port of process 0 in a multi-host run; default from '
    '$JAX_COORDINATOR_ADDRESS.')


def initialize_distributed(num_processes: int, process_id: int,
                           coordinator_address: Optional[str]) -> None:
  """Joins a multi-process run; must precede any use of the JAX backend."""
  if num_processes <= 1:
    return
  if not coordinator_address:
    raise app.UsageError('A multi-process run needs --coordinator_address '
                         '(or $JAX_COORDINATOR_ADDRESS).')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


class _QuietOrbax(pylogging.Filter):
  """Drops orbax's per-save INFO lines, which drown the progress lines."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return (record.levelno > pylogging.INFO or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required.')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  initialize_distributed(_NUM_PROCESSES.value, _PROCESS_ID.value,
                         _COORDINATOR.value)
  try:
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    raise app.UsageError(str(e)) from e
  logging.info('Final metrics: %s', json.dumps(metrics, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
