"""Learning-rate schedules of the recipes: warmup, then cosine, exponential or
linear decay."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def _decay_span(warmup_steps: int, total_steps: int) -> int:
  """Steps from the end of the warmup to `total_steps` (at least 1)."""
  if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
    raise ValueError('Need 0 <= warmup_steps <= total_steps and '
                     f'total_steps > 0; got warmup_steps={warmup_steps}, '
                     f'total_steps={total_steps}.')
  return max(total_steps - warmup_steps, 1)


def _after_warmup(peak_value: float, warmup_steps: int,
                  decayed: Callable[[jax.Array], jax.Array]
                  ) -> optax.Schedule:
  """peak * s / warmup for s < warmup, then `decayed(s)` (s as float32)."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = peak_value * step / max(warmup_steps, 1)
    return jnp.where(step < warmup_steps, warmup, decayed(step))

  return schedule


def warmup_cosine_schedule(peak_value: float, warmup_steps: int,
                           total_steps: int, end_value: float = 0.0
                           ) -> optax.Schedule:
  """Linear warmup from 0 to `peak_value`, then cosine decay to `end_value`.

  lr(s) = peak * s / warmup                              for s < warmup,
  lr(s) = end + (peak - end) / 2 * (1 + cos(pi * f))     otherwise,
  with f = (s - warmup) / (total - warmup), clamped to [0, 1].

  Args:
    peak_value: learning rate reached at step `warmup_steps`.
    warmup_steps: length of the warmup, in optimizer steps (0: none).
    total_steps: the step at which the decay reaches `end_value`; later
      steps stay there.
    end_value: final learning rate.

  Returns:
    A schedule step -> float32 learning rate, traceable under jit.
  """
  decay_steps = _decay_span(warmup_steps, total_steps)

  def cosine(step):
    frac = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    return end_value + 0.5 * (peak_value - end_value) * (
        1.0 + jnp.cos(jnp.pi * frac))

  return _after_warmup(peak_value, warmup_steps, cosine)


def warmup_exponential_schedule(peak_value: float, warmup_steps: int,
                                decay_steps: float, decay_rate: float,
                                staircase: bool = True) -> optax.Schedule:
  """Linear warmup from 0 to `peak_value`, then exponential decay.

  lr(s) = peak * s / warmup                        for s < warmup,
  lr(s) = peak * decay_rate ** (s / decay_steps)   otherwise,
  with the exponent floored when `staircase`. As in the [EfficientNet] TF
  reference (decay 0.97 every 2.4 epochs), the decay counts from step 0, not
  from the end of the warmup.

  Args:
    peak_value: learning rate before any decay.
    warmup_steps: length of the warmup, in optimizer steps (0: none).
    decay_steps: steps per factor of `decay_rate` (positive).
    decay_rate: factor per `decay_steps`, in (0, 1].
    staircase: decay in whole steps of `decay_steps`.

  Returns:
    A schedule step -> float32 learning rate, traceable under jit.
  """
  if warmup_steps < 0 or decay_steps <= 0 or not 0 < decay_rate <= 1:
    raise ValueError('Need warmup_steps >= 0, decay_steps > 0 and 0 < '
                     f'decay_rate <= 1; got warmup_steps={warmup_steps}, '
                     f'decay_steps={decay_steps}, decay_rate={decay_rate}.')

  def exponential(step):
    exponent = step / decay_steps
    if staircase:
      exponent = jnp.floor(exponent)
    return peak_value * jnp.power(decay_rate, exponent)

  return _after_warmup(peak_value, warmup_steps, exponential)


def warmup_linear_schedule(peak_value: float, warmup_steps: int,
                           total_steps: int, end_value: float = 0.0
                           ) -> optax.Schedule:
  """Linear warmup from 0 to `peak_value`, then linear decay to `end_value`.

  lr(s) = peak * s / warmup                 for s < warmup,
  lr(s) = end + (peak - end) * r            otherwise,
  with r = (total - s) / (total - warmup), clamped to [0, 1]. Without a
  warmup this is the [ShuffleNet] / [ShuffleNetV2] recipe's
  lr(s) = peak * (1 - s / total).

  Args:
    peak_value: learning rate reached at step `warmup_steps`.
    warmup_steps: length of the warmup, in optimizer steps (0: none).
    total_steps: the step at which the decay reaches `end_value`; later
      steps stay there.
    end_value: final learning rate.

  Returns:
    A schedule step -> float32 learning rate, traceable under jit.
  """
  decay_steps = _decay_span(warmup_steps, total_steps)

  def linear(step):
    # The steps left rather than 1 - the fraction done: exact in float32
    # to the last step of a long run.
    left = jnp.clip((total_steps - step) / decay_steps, 0.0, 1.0)
    return end_value + (peak_value - end_value) * left

  return _after_warmup(peak_value, warmup_steps, linear)
