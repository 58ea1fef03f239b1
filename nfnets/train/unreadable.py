"""Checkpoints that cannot be read: what went wrong, and moving them aside.

A truncated data file, a missing `_METADATA` or a garbled saved config make
a checkpoint unreadable. The runner resumes from the newest one that reads
(`checkpoint.restore_newest`) and renames the newer ones aside
(`set_aside`), so that training past their steps can save them again;
nothing is deleted. A failed read is reported in one line (`reason`), and
the echoes it leaves on TensorStore's threads are kept off stderr
(`quiet_abandoned_reads`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import sys
import time
import warnings
from typing import Any, Optional, Union

from nfnets import errors

PathLike = Union[str, os.PathLike]


def reason(error: BaseException) -> str:
  """What went wrong, in one short line (the detail is in the traceback).

  TensorStore's messages carry the whole JSON spec of the array it failed
  to read: its first sentence is what a user can act on.
  """
  text = ' '.join(str(error).split())
  text = text.split(' See full TensorStore details')[0]
  if len(text) > 160:
    text = text[:160] + ' ...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


_READERS = (f'{os.sep}orbax{os.sep}', f'{os.sep}tensorstore{os.sep}')
_TENSORSTORE_WORDS = ('OCDBT', '"zarr" driver', 'TensorStore')


def _is_abandoned_read(error: Optional[BaseException], where: Any,
                       by_message: bool = False) -> bool:
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return True
  code = getattr(where, 'cr_code', None)
  if code is not None and any(r in code.co_filename for r in _READERS):
    return True
  # A read that failed in a task nobody awaits any more: its traceback goes
  # through orbax's or TensorStore's code, or (asyncio's report of a task)
  # only through asyncio's, in TensorStore's words.
  if by_message and any(word in str(error) for word in _TENSORSTORE_WORDS):
    return True
  trace = getattr(error, '__traceback__', None)
  while trace is not None:
    if any(r in trace.tb_frame.f_code.co_filename for r in _READERS):
      return True
    trace = trace.tb_next
  return False


class _QuietAsyncio(logging.Filter):
  """asyncio's 'Task exception was never retrieved' for abandoned reads."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ('never retrieved' in str(record.msg) and
                _is_abandoned_read(error, None, by_message=True))


def quiet_abandoned_reads() -> None:
  """Drops the echoes of a failed restore's other reads from stderr.

  When one array of a checkpoint cannot be read, orbax raises at once and
  closes its event loop while TensorStore's reads of the other arrays are
  still running. Each of them then fails on TensorStore's own threads
  ('Event loop is closed', or the same read error in a coroutine or task
  nobody awaits), and Python and asyncio print every one as a traceback:
  thousands of lines after the one error that was already raised. Only
  those are dropped.
  """
  if getattr(sys.excepthook, 'drops_abandoned_reads', False):
    return
  logging.getLogger('asyncio').addFilter(_QuietAsyncio())
  # The reads orbax had not started yet are coroutines it never awaits.
  warnings.filterwarnings('ignore', category=RuntimeWarning,
                          message="coroutine '.*' was never awaited")
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

  def quiet_excepthook(kind, error, trace):
    # Narrowly: any other exception here may be a bug, and must show.
    if not (kind is RuntimeError and str(error) == 'Event loop is closed'):
      excepthook(kind, error, trace)

  def quiet_unraisablehook(unraisable):
    if not _is_abandoned_read(unraisable.exc_value, unraisable.object):
      unraisablehook(unraisable)

  quiet_excepthook.drops_abandoned_reads = True
  sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


@dataclasses.dataclass
class Skipped:
  """A checkpoint that could not be read, and why."""
  step: int
  path: pathlib.Path
  reason: str


def set_aside(path: PathLike) -> pathlib.Path:
  """Renames an unreadable step directory out of the checkpoints' way.

  `checkpoints/40` becomes `checkpoints/40.unreadable-<UTC time>`: orbax no
  longer counts it as a step, so a run that resumed from an older step can
  save step 40 again, and nothing is deleted.

  Raises:
    errors.PathError: the directory cannot be renamed (read-only,
      permissions).
  """
  path = pathlib.Path(path)
  stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
  target = path.with_name(f'{path.name}.unreadable-{stamp}')
  number = 1
  while target.exists():
    number += 1
    target = path.with_name(f'{path.name}.unreadable-{stamp}-{number}')
  try:
    path.rename(target)
  except OSError as e:
    raise errors.PathError(
        f'Cannot move the unreadable checkpoint {path} aside: {e.strerror} '
        f'({e.filename}). Move or delete it yourself, then run the same '
        'command again.') from e
  return target
