"""The `config.optimizer` group: its schema, and the optimizer it describes.

`default_config()` holds the [NFNet] recipe's values; `from_config` turns a
group into `nfnets.optim.nfnet_optimizer` with the run's batch size and
durations (peak learning rate 0.1 x batch / 256, linear warmup, cosine
decay).
"""
from __future__ import annotations

import re
from typing import Optional

import ml_collections
from ml_collections import config_dict
import optax

from nfnets import optim


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
      classifier_pattern=optim.CLASSIFIER_PATTERN,
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
  return optim.warmup_cosine_schedule(peak_learning_rate(config, batch_size),
                                warmup_steps, total_steps, config.end_lr)


def from_config(config: ml_collections.ConfigDict, *, batch_size: int,
                total_steps: int, warmup_steps: Optional[int] = None,
                steps_per_epoch: Optional[float] = None
                ) -> optax.GradientTransformation:
  """`optim.nfnet_optimizer` with the settings and schedule of `config`.

  Args:
    config: the optimizer group (`default_config()`).
    batch_size: global batch size (scales the learning rate).
    total_steps: number of optimizer steps of the run (end of the decay).
    warmup_steps: warmup length in steps; None derives it from the config
      (`resolve_warmup_steps`).
    steps_per_epoch: needed only when the warmup is given in epochs.

  Raises:
    ValueError: an invalid group (see `validate_config`).
  """
  validate_config(config)
  if warmup_steps is None:
    warmup_steps = resolve_warmup_steps(config, steps_per_epoch)
  schedule = learning_rate_schedule(config, batch_size=batch_size,
                                    total_steps=total_steps,
                                    warmup_steps=warmup_steps)
  return optim.nfnet_optimizer(
      schedule, clipping=config.clipping, agc_eps=config.agc_eps,
      weight_decay=config.weight_decay, momentum=config.momentum,
      nesterov=config.nesterov,
      exclude_classifier=config.agc_exclude_classifier,
      clip_classifier_bias=config.agc_clip_classifier_bias,
      classifier_pattern=config.classifier_pattern)
