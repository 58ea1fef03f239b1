"""Training speed, ETA and the progress display of a run.

Speed is measured over training steps only: the clock starts once the first
step of a run (which compiles it) has finished, and the time spent in
evaluations and checkpoint saves is taken out. Images per second, step time
and the ETA therefore describe the steady-state training loop, not the
start-up or the evaluations in between.

On a terminal, process 0 shows a tqdm bar; otherwise (a log file, a batch
job) it logs one line per log step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from typing import Iterator, Mapping, Optional, TextIO

from absl import logging
import jax
import tqdm


def format_eta(seconds: float) -> str:
  """H:MM:SS, or '?' when not finite."""
  if not math.isfinite(seconds):
    return '?'
  h, rem = divmod(int(seconds), 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}'


@dataclasses.dataclass(frozen=True)
class Speed:
  """Training speed over the steps since the previous measurement."""
  step_time: float  # Seconds per step.
  images_per_sec: float
  eta_seconds: float  # Remaining steps at this speed.


class Progress:
  """Measures training speed between log steps and shows it.

  Call `start(step)` once the run's first step has finished, wrap
  evaluations and saves in `paused()`, and call `lap(step)` at each log
  step, after the device has caught up (the loop's metrics fetch waits for
  it); `show` then displays the line.
  """

  def __init__(self, *, total_steps: int, batch_size: int, enabled: bool,
               stream: Optional[TextIO] = None,
               bar: Optional[bool] = None):
    self._total = total_steps
    self._batch_size = batch_size
    self._enabled = enabled
    self._clock: Optional[float] = None
    self._clock_step = 0
    self._paused = 0.0
    stream = stream or sys.stderr
    if bar is None:
      bar = stream.isatty()
    self._bar = None
    if enabled and bar:
      self._bar = tqdm.tqdm(
          total=total_steps, file=stream, dynamic_ncols=True,
          bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} {postfix}')

  def start(self, step: int) -> None:
    """Starts the clock at `step`, a finished (compiled) step."""
    self._clock, self._clock_step, self._paused = time.monotonic(), step, 0.0
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time inside this block (evaluation, checkpointing) is not counted."""
    began = time.monotonic()
    try:
      yield
    finally:
      self._paused += time.monotonic() - began

  def lap(self, step: int) -> Optional[Speed]:
    """Speed over the steps since the last lap (None before the clock runs).
    """
    if self._clock is None or step <= self._clock_step:
      return None
    now = time.monotonic()
    seconds = max(now - self._clock - self._paused, 1e-9)
    step_time = seconds / (step - self._clock_step)
    self._clock, self._clock_step, self._paused = now, step, 0.0
    return Speed(step_time=step_time,
                 images_per_sec=self._batch_size / step_time,
                 eta_seconds=(self._total - step) * step_time)

  def show(self, step: int, means: Mapping[str, float],
           speed: Optional[Speed]) -> None:
    """The progress line (or bar) at a log step."""
    if not self._enabled:
      return
    rate = f'{speed.images_per_sec:.0f} img/s' if speed else '? img/s'
    eta = format_eta(speed.eta_seconds) if speed else '?'
    if self._bar is not None:
      self._bar.set_postfix_str(
          f'loss {means["loss"]:.4f} top1 {means["top1"]:.3f} {rate} '
          f'ETA {eta}', refresh=False)
      self._bar.update(step - self._bar.n)
      return
    logging.info('step %d/%d  loss %.4f  top1 %.3f  %s  ETA %s', step,
                 self._total, means['loss'], means['top1'], rate, eta)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class StepProfiler:
  """A `jax.profiler` trace of `num_steps` training steps into `logdir`.

  The trace starts before step `first_step` runs (a step after the run's
  compiling first step, so it shows the steady state) and stops once step
  `first_step + num_steps - 1` has finished; TensorBoard's profile plugin or
  Perfetto (`*.trace.json.gz`) open it.
  """

  def __init__(self, logdir: str, first_step: int, num_steps: int):
    self._logdir = logdir
    self._first = first_step
    self._last = first_step + num_steps - 1
    self._tracing = False
    self._enabled = num_steps > 0

  def before_step(self, step: int) -> None:
    """Called before running step `step` (1-based: the step being made)."""
    if self._enabled and step == self._first and not self._tracing:
      jax.profiler.start_trace(self._logdir)
      self._tracing = True

  def after_step(self, step: int, outputs: object) -> None:
    """Called after step `step` was dispatched, with its outputs."""
    if self._tracing and step >= self._last:
      self.stop(outputs)

  def stop(self, outputs: object = None) -> None:
    """Ends the trace (waiting for `outputs`), if one is running."""
    if not self._tracing:
      return
    jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self._tracing = False
    logging.info('Profiled steps %d-%d into %s.', self._first, self._last,
                 self._logdir)
