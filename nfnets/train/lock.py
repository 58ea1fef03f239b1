"""One run per work directory: an OS lock held for the whole run.

`fcntl.flock` on WORKDIR/runner.lock: the kernel releases it when the
process ends however it ends (kill -9 included), so a lock is never stale.
The file records who holds it (pid, host, start time) for the message a
second runner prints. In a multi-process run process 0, which writes the
config, the metrics and the checkpoints' metadata, takes the lock, and every
process learns the outcome, so a run whose process 0 finds the directory busy
stops on every host.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
from typing import Optional, Union

from nfnets import errors

LOCK_FILE = 'runner.lock'


class WorkdirBusyError(errors.UserError, RuntimeError):
  """Another run holds the work directory's lock."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds WORKDIR/runner.lock, non-blocking.

  Entering creates the work directory if needed; if another process holds
  the lock it raises `WorkdirBusyError` naming it. `release(undo=True)` also
  removes what entering created (the lock file, an empty new work directory),
  for a start that fails before it has written anything else.
  """

  def __init__(self, workdir: Union[str, os.PathLike]):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd: Optional[int] = None
    self._created: list[pathlib.Path] = []
    self._previous = b''

  def acquire(self) -> None:
    """Takes the lock or raises `WorkdirBusyError`.

    Raises:
      WorkdirBusyError: another process holds it.
      errors.PathError: the directory or the lock file cannot be created
        (a regular file in the way, a read-only file system, no permission).
    """
    if self.workdir.exists() and not self.workdir.is_dir():
      raise WorkdirBusyError(
          f'--workdir {self.workdir} is a file; pass a directory.')
    try:
      fd = self._open()
    except OSError as e:
      self._undo()
      raise errors.path_error(f'the work directory {self.workdir}', e) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe(self.path)
      os.close(fd)
      raise WorkdirBusyError(
          f'{self.workdir} is in use by another run ({holder}). Wait for it '
          'to finish or stop it, or pass another --workdir.') from None
    self._previous = os.pread(fd, 1 << 16, 0)
    self._write(fd, json.dumps({
        'pid': os.getpid(), 'host': socket.gethostname(),
        'started': datetime.datetime.now().isoformat(timespec='seconds'),
    }).encode())
    self._fd = fd

  def _open(self) -> int:
    if not self.workdir.exists():
      missing = [self.workdir, *(p for p in self.workdir.parents
                                 if not p.exists())]
      self.workdir.mkdir(parents=True)
      self._created.extend(missing)  # Innermost first, as undo removes them.
    if not self.path.exists():
      self._created.insert(0, self.path)
    return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

  @staticmethod
  def _write(fd: int, content: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, content, 0)

  def _undo(self) -> None:
    for path in self._created:
      try:
        if path.is_dir():
          if not any(path.iterdir()):
            path.rmdir()
        else:
          path.unlink(missing_ok=True)
      except OSError:
        pass  # Could not be created in the first place.
    self._created = []

  def release(self, undo: bool = False) -> None:
    """Releases the lock.

    With `undo`, for a start that fails before it has written anything else,
    removes what `acquire` created (the lock file, new empty directories)
    and gives an existing lock file back its old content.
    """
    if self._fd is None:
      return
    if undo:
      if self.path not in self._created:
        self._write(self._fd, self._previous)
      self._undo()
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _describe(path: pathlib.Path) -> str:
  """'pid P on host H since T' from a lock file, as far as it says."""
  try:
    info = json.loads(path.read_text())
    return (f'pid {info["pid"]} on host {info["host"]} since '
            f'{info["started"]}')
  except (OSError, ValueError, KeyError, TypeError):
    return f'see {path}'
