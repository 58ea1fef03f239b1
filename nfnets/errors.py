"""The errors a user can cause, as opposed to bugs.

Every exception a user's mistake raises (a config typo, a missing data set, a
busy or unwritable work directory, a checkpoint of another model, bad images)
derives from `UserError`. Its message says what is wrong and what to do, in
one to three lines, so the command lines print it without a traceback
(`--traceback` shows one); any other exception is a bug and keeps its
traceback.
"""
import errno
import os
import pathlib
import tempfile


class UserError(Exception):
  """A mistake in what was asked for; the message says what to do."""


class InputError(UserError, ValueError):
  """Images, batch sizes or splits a function cannot use."""


class PathError(UserError, OSError):
  """A file or directory that cannot be created or written."""


def path_error(what: str, error: OSError) -> PathError:
  """A `PathError` for an `OSError` met while creating or writing `what`.

  The message names the path the system refused and why (a regular file in
  the way, a read-only file system, no permission, no space).
  """
  where = f' ({error.filename})' if error.filename else ''
  reason = error.strerror or str(error)
  return PathError(f'Cannot write {what}: {reason}{where}. Pass a path in a '
                   'directory you can write to.')


def check_writable(path: 'os.PathLike | str', what: str) -> pathlib.Path:
  """Raises `PathError` unless the file `path` could be created, creating
  nothing: its nearest existing ancestor must be a directory that takes a
  new file (a probe file, removed at once), and `path` not a directory.
  """
  path = pathlib.Path(path).absolute()
  try:
    if path.is_dir():
      raise IsADirectoryError(errno.EISDIR, 'Is a directory', str(path))
    ancestor = next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
      raise NotADirectoryError(errno.ENOTDIR, 'Not a directory', str(ancestor))
    # A probe rather than os.access: it sees read-only mounts and full
    # disks as the write itself would, with the system's own reason.
    try:
      with tempfile.TemporaryFile(dir=ancestor):
        pass
    except OSError as e:
      raise type(e)(e.errno, e.strerror, str(ancestor)) from e
  except OSError as e:
    raise path_error(what, e) from e
  return path


def make_parent(path: 'os.PathLike | str', what: str) -> pathlib.Path:
  """Creates the directory that will hold `path` (a file to write).

  Raises:
    PathError: it cannot be created, or is not writable.
  """
  check_writable(path, what)
  path = pathlib.Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise path_error(what, e) from e
  return path
