"""SIGTERM as a request to save and stop, agreed on by every process."""
from __future__ import annotations

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class PreemptionWatcher:
  """Turns SIGTERM into a request to save and stop at the next step.

  With several processes, a request on any of them stops all of them, at the
  same step: the flags are all-gathered at log steps only (a collective every
  step would cost time). The handler is installed on `__enter__` (main
  thread only) and the previous one restored on `__exit__`.
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
