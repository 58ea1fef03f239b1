"""The run config's schema and its validation, before any compute.

`base_config()` defines every field the runner reads, with the [NFNet]
ImageNet recipe's values; the recipes in `nfnets.configs` change only what
differs. `validate_config` checks a full config against it: unknown,
missing or mistyped fields, unknown models, model arguments and data sets,
durations, and a batch that does not divide over the devices.
"""
from __future__ import annotations

import difflib
from typing import Any, Optional

import jax
import ml_collections
from ml_collections import config_dict

from nfnets import data
from nfnets import errors
from nfnets import models
from nfnets.train import optimizer as optimizer_config

COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
# Group path -> fields a config may lack (it was saved before they existed).
_ADDED_FIELDS = {'optimizer.': optimizer_config.ADDED_FIELDS,
                 'training.': ('profile_steps', 'accumulation_steps')}


class ConfigError(errors.UserError, ValueError):
  """A config the runner cannot run; raised before any compute."""


def base_config() -> ml_collections.ConfigDict:
  """Every field the runner reads, with the NFNet ImageNet recipe's values.

  The training length is given either in steps or in epochs (exactly one of
  `training.num_steps` and `training.num_epochs`); `get_steps` turns it into
  steps. The learning rate (0.1 x batch / 256) and its warmup live in
  `config.optimizer` (see `nfnets.train.optimizer.default_config`).
  """
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'nfnet_f0'
  # Constructor overrides passed to `nfnets.models.create` (width, depth,
  # drop_rate, stochdepth_rate, activation, ...); checked against the
  # model's arguments.
  config.model.kwargs = ml_collections.ConfigDict()

  config.data = data.default_config('imagenet2012')
  config.optimizer = optimizer_config.default_config()

  config.training = ml_collections.ConfigDict()
  # Global batch over all devices and processes.
  config.training.batch_size = 4096
  # Micro-batches per update (gradient accumulation): each device runs
  # batch_size / (devices * accumulation_steps) examples at a time, and the
  # update averages their gradients (nfnets.train.step.accumulated).
  config.training.accumulation_steps = 1
  config.training.num_epochs = config_dict.placeholder(float)
  config.training.num_steps = config_dict.placeholder(int)
  config.training.label_smoothing = 0.1
  # EMA decay, warmed up as min(decay, (1 + t) / (10 + t)) ([NFNet]
  # appendix); 0 keeps no average (the EMA weights are the weights).
  config.training.ema_decay = 0.99999
  # 'float32' or 'bfloat16'; parameters and optimizer state stay float32.
  config.training.compute_dtype = 'bfloat16'
  config.training.seed = 0
  config.training.log_every = 100
  # Steps to trace with jax.profiler into WORKDIR/profile, from the second
  # step of a run on (the first compiles); 0: no trace.
  config.training.profile_steps = 0

  config.eval = ml_collections.ConfigDict()
  # Global eval batch; evaluation runs every `every_steps` and at the end
  # (0: only at the end).
  config.eval.batch_size = 1000
  config.eval.every_steps = 10_000

  config.checkpoint = ml_collections.ConfigDict()
  # Saved every `every_steps` (0: only at the end and on SIGTERM).
  config.checkpoint.every_steps = 1000
  config.checkpoint.max_to_keep = 3
  return config


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


def durations(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(total steps, warmup steps) of a config, from steps or epochs."""
  tc = config.training
  num_examples = data.num_examples(config.data)
  total = get_steps(tc, 'num', batch_size=tc.batch_size,
                    num_examples=num_examples)
  warmup = optimizer_config.resolve_warmup_steps(
      config.optimizer, steps_per_epoch=num_examples / tc.batch_size)
  return total, warmup


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
  # A saved config may predate fields added since; they take defaults.
  optional = _ADDED_FIELDS.get(path, ())
  missing = sorted(set(schema.keys()) - set(config.keys()) - set(optional))
  if missing:
    raise ConfigError(
        f'Missing config field(s) {", ".join(path + k for k in missing)}.')
  for key in schema.keys():
    if key not in config:
      continue
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


def check_schema(config: Any) -> None:
  """Raises `ConfigError` unless `config` is a ConfigDict of `base_config`'s
  fields (none unknown or missing, each of its type); `model.kwargs` is
  checked by `validate_config`."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
        f'The config is a {type(config).__name__}, not an '
        'ml_collections.ConfigDict: return ml_collections.ConfigDict(...) '
        'from get_config (see nfnets.train.config.base_config).')
  _check_fields(config, base_config(), '')


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: Optional[int] = None) -> None:
  """Checks everything that can be checked without data or compute.

  Args:
    config: a full run config (see `base_config`).
    num_devices: devices the batch is split over (default: all).

  Raises:
    ConfigError: unknown or missing field, wrong type, unknown model, model
      argument, data set or dtype, bad durations, or a batch size that does
      not divide over devices and processes.
  """
  check_schema(config)
  try:
    models.get_spec(config.model.name)
    allowed = models.accepted_overrides(config.model.name)
    data.validate(config.data)
    optimizer_config.validate_config(config.optimizer)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  unknown = sorted(set(config.model.kwargs.keys()) - set(allowed))
  if unknown:
    close = difflib.get_close_matches(unknown[0], allowed, n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    raise ConfigError(f'Model {config.model.name!r} does not take '
                      f'model.kwargs {unknown}; {hint}it takes: '
                      f'{", ".join(allowed)}.')
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
  accumulation = tc.get('accumulation_steps', 1)
  if accumulation < 1:
    raise ConfigError(f'training.accumulation_steps must be positive, got '
                      f'{accumulation}.')
  if tc.batch_size % (num_devices * accumulation):
    raise ConfigError(
        f'training.batch_size={tc.batch_size} does not split into '
        f'{accumulation} micro-batches on each of {num_devices} devices; use '
        f'a multiple of {num_devices * accumulation}.')
  try:
    data.check_batch(config.data, tc.batch_size // num_processes)
  except ValueError as e:
    raise ConfigError(str(e)) from e
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
  if tc.seed < 0:
    raise ConfigError(f'training.seed must be >= 0, got {tc.seed}.')
  if tc.log_every < 1:
    raise ConfigError(f'training.log_every must be positive, got '
                      f'{tc.log_every}.')
  for name, value in (('eval.every_steps', config.eval.every_steps),
                      ('training.profile_steps', tc.get('profile_steps', 0)),
                      ('checkpoint.every_steps', config.checkpoint.every_steps)):
    if value < 0:
      raise ConfigError(f'{name} must be >= 0, got {value}.')
