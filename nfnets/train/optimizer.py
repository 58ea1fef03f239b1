"""The `config.optimizer` group: its schema, and the optimizer it describes.

`default_config()` holds the [NFNet] recipe's values; `from_config` turns a
group into `nfnets.optim.nfnet_optimizer` (`name='sgd'`) or
`nfnets.optim.rmsprop_optimizer` (`name='rmsprop'`, the EfficientNet recipe)
with the run's batch size and durations (peak learning rate base_lr x batch /
256, linear warmup, then cosine decay or, with `schedule='exponential'`,
decay by `decay_rate` every `decay_steps` or `decay_epochs`, or with
`schedule='linear'` linear decay to `end_lr`).

The `sam_*` fields switch on SAM, which the train step
(`nfnets.train.step`) applies to the gradient the optimizer receives.

Configs saved before a field of `ADDED_FIELDS` existed lack it; such a group
means that field's default (SGD, cosine, no SAM), so it still loads and
resumes.
"""
from __future__ import annotations

import re
from typing import Optional

import ml_collections
from ml_collections import config_dict
import optax

from nfnets import optim

NAMES = ('sgd', 'rmsprop')
SCHEDULES = ('cosine', 'exponential', 'linear')
# Fields added after configs were first saved: a saved group without them
# takes their defaults, which reproduce what it ran with.
ADDED_FIELDS = ('name', 'rmsprop_decay', 'rmsprop_eps', 'schedule',
                'decay_rate', 'decay_epochs', 'decay_steps',
                'weight_decay_norm_params', 'sam_rho', 'sam_batch_fraction',
                'sam_per_device')


def default_config() -> ml_collections.ConfigDict:
  """The `config.optimizer` group, with the paper's NFNet defaults."""
  return ml_collections.ConfigDict(dict(
      # The update rule: 'sgd' (momentum, Nesterov) or 'rmsprop'
      # (TensorFlow's RMSProp with `momentum`; `nesterov` is not used).
      name='sgd',
      rmsprop_decay=0.9,
      rmsprop_eps=1e-3,
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
      # Decay normalization gammas and betas too (the GroupNorm paper's
      # ResNets); other gains and biases stay exempt.
      weight_decay_norm_params=False,
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
      # After the warmup: 'cosine' or 'linear' decay to end_lr at the end of
      # the run, or 'exponential': lr x decay_rate every decay_steps (when
      # set) or decay_epochs epochs, counted from step 0, in whole steps.
      schedule='cosine',
      decay_rate=0.97,
      decay_epochs=2.4,
      decay_steps=config_dict.placeholder(int),
      # SAM (read by the train step, before the optimizer): the ascent radius
      # rho, 0 for off ([NFNet] uses 0.05); the fraction of each device's
      # shard the ascent gradient comes from ([NFNet]: 0.2); each device
      # ascending on its own shard, unsynchronized, as [NFNet] did.
      sam_rho=0.0,
      sam_batch_fraction=1.0,
      sam_per_device=False,
  ))


def with_defaults(config: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """`config`, or a copy with the `ADDED_FIELDS` it lacks at their defaults."""
  missing = [k for k in ADDED_FIELDS if k not in config]
  if not missing:
    return config
  values = config.to_dict()
  defaults = default_config()
  values.update({k: defaults[k] for k in missing})
  return ml_collections.ConfigDict(values)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError on out-of-range optimizer settings or unknown fields."""
  known = set(default_config().keys())
  unknown = sorted(set(config.keys()) - known)
  if unknown:
    raise ValueError(f'Unknown optimizer config fields {unknown}; known: '
                     f'{sorted(known)}.')
  missing = sorted(known - set(config.keys()) - set(ADDED_FIELDS))
  if missing:
    raise ValueError(f'Missing optimizer config fields {missing}.')
  config = with_defaults(config)
  checks = [
      (config.name in NAMES, f'name must be one of {NAMES}'),
      (config.schedule in SCHEDULES, f'schedule must be one of {SCHEDULES}'),
      (0 <= config.rmsprop_decay < 1, 'rmsprop_decay must be in [0, 1)'),
      (config.rmsprop_eps >= 0, 'rmsprop_eps must be non-negative'),
      (0 < config.decay_rate <= 1, 'decay_rate must be in (0, 1]'),
      (config.decay_epochs > 0, 'decay_epochs must be positive'),
      (config.decay_steps is None or config.decay_steps > 0,
       'decay_steps must be positive'),
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
      (config.sam_rho >= 0, 'sam_rho must be non-negative (0: no SAM)'),
      (0 < config.sam_batch_fraction <= 1,
       'sam_batch_fraction must be in (0, 1]'),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f'Optimizer config: {message}.')
  try:
    re.compile(config.classifier_pattern)
  except re.error as e:
    raise ValueError(f'Optimizer config: classifier_pattern '
                     f'{config.classifier_pattern!r} is not a regular '
                     f'expression ({e}).') from e


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
                           warmup_steps: int,
                           steps_per_epoch: Optional[float] = None
                           ) -> optax.Schedule:
  """Warmup, then cosine, linear or exponential decay, from
  `peak_learning_rate`.

  An exponential decay given in epochs (`decay_steps` unset) needs
  `steps_per_epoch`.
  """
  config = with_defaults(config)
  peak = peak_learning_rate(config, batch_size)
  if config.schedule == 'cosine':
    return optim.warmup_cosine_schedule(peak, warmup_steps, total_steps,
                                        config.end_lr)
  if config.schedule == 'linear':
    return optim.warmup_linear_schedule(peak, warmup_steps, total_steps,
                                        config.end_lr)
  decay_steps = config.decay_steps
  if decay_steps is None:
    if steps_per_epoch is None:
      raise ValueError('The decay is given in epochs (config.decay_epochs='
                       f'{config.decay_epochs}); pass steps_per_epoch or '
                       'set decay_steps.')
    # The TF reference truncates the decay period to whole steps.
    decay_steps = max(int(config.decay_epochs * steps_per_epoch), 1)
  return optim.warmup_exponential_schedule(peak, warmup_steps, decay_steps,
                                           config.decay_rate)


def from_config(config: ml_collections.ConfigDict, *, batch_size: int,
                total_steps: int, warmup_steps: Optional[int] = None,
                steps_per_epoch: Optional[float] = None
                ) -> optax.GradientTransformation:
  """The optimizer of `config.name` with the settings and schedule of `config`.

  Args:
    config: the optimizer group (`default_config()`).
    batch_size: global batch size (scales the learning rate).
    total_steps: number of optimizer steps of the run (end of the decay).
    warmup_steps: warmup length in steps; None derives it from the config
      (`resolve_warmup_steps`).
    steps_per_epoch: needed only when the warmup or an exponential decay is
      given in epochs.

  Raises:
    ValueError: an invalid group (see `validate_config`).
  """
  validate_config(config)
  config = with_defaults(config)
  if warmup_steps is None:
    warmup_steps = resolve_warmup_steps(config, steps_per_epoch)
  schedule = learning_rate_schedule(config, batch_size=batch_size,
                                    total_steps=total_steps,
                                    warmup_steps=warmup_steps,
                                    steps_per_epoch=steps_per_epoch)
  regularization = dict(
      clipping=config.clipping, agc_eps=config.agc_eps,
      weight_decay=config.weight_decay, momentum=config.momentum,
      exclude_classifier=config.agc_exclude_classifier,
      clip_classifier_bias=config.agc_clip_classifier_bias,
      classifier_pattern=config.classifier_pattern,
      decay_norm_params=config.weight_decay_norm_params)
  if config.name == 'rmsprop':
    return optim.rmsprop_optimizer(schedule, decay=config.rmsprop_decay,
                                   eps=config.rmsprop_eps, **regularization)
  return optim.nfnet_optimizer(schedule, nesterov=config.nesterov,
                               **regularization)
