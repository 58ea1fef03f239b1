"""What every command line shares: one way to report a user's mistake.

`run(main)` runs an absl `main`; a `UserError` prints `error: <message>` to
stderr (a few lines at most) and exits with status 1. `--traceback` shows the
full traceback instead; any other exception is a bug and keeps its traceback.
`load_config(holder)` turns a config file that cannot be loaded or a bad
`--config.*` override into a `ConfigError`.
"""
from __future__ import annotations

import functools
import logging as pylogging
import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from nfnets import errors
from nfnets.train import config as config_lib

_TRACEBACK = flags.DEFINE_bool(
    'traceback', False, 'On a user error (bad config, busy work directory, '
    'missing data, ...) show the full traceback instead of one message.')

# Longest error message printed; the rest is behind --traceback.
_MAX_MESSAGE_CHARS = 600

Main = Callable[[Sequence[str]], Any]


def one_paragraph(text: Any) -> str:
  """`text` on one line (a long message is cut, pointing at --traceback)."""
  text = ' '.join(line.strip() for line in str(text).splitlines()
                  if line.strip())
  if len(text) > _MAX_MESSAGE_CHARS:
    text = text[:_MAX_MESSAGE_CHARS] + ' ... (--traceback shows all)'
  return text


def _config_message(error: BaseException) -> str:
  """A config loading error's own words, without ml_collections' wrapping."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]  # AttributeError(KeyError(message)).
  if isinstance(error, KeyError) and error.args:
    # ml_collections' message for an unknown field: the field name quoted,
    # then 'Did you mean ...'.
    return 'no field ' + one_paragraph(error.args[0])
  return one_paragraph(error).replace(
      'Configuration is not available because of an earlier failure to '
      'load: ', '')


def load_config(holder: flags.FlagHolder) -> ml_collections.ConfigDict:
  """The config of a `config_flags` flag, or a `ConfigError` saying why not.

  ml_collections loads the file and applies the `--config.*` overrides when
  the value is first read; a missing file, a syntax error, a missing
  `get_config`, an exception inside it, or an override of an unknown field
  (with its "Did you mean" suggestion) all surface here.
  """
  try:
    config = holder.value
    # A file that failed to load comes back as a stand-in that raises on
    # first use.
    config.keys()
  except Exception as e:  # Any failure here is in the user's config.
    raise config_lib.ConfigError(
        f'Cannot use --{holder.name}: {_config_message(e)}') from e
  return config


def _report(error: errors.UserError, show_traceback: bool) -> None:
  if show_traceback:
    raise error
  print(f'error: {error}', file=sys.stderr)
  if getattr(error, 'exit_now', False):
    # Threads of a failed library call (orbax's writers) would otherwise
    # keep the process alive, and print their own tracebacks at shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
  sys.exit(1)


class _Started:
  """Whether `main` was reached: what fails before it is flag parsing."""
  value = False


class QuietLibraries(pylogging.Filter):
  """Drops library chatter a user cannot act on, unless --verbosity is raised.

  orbax's per-save INFO lines drown the progress lines and its read-only
  warnings say nothing useful (a failed save is reported as one `SaveError`
  instead of its writer threads' tracebacks); JAX's probe for a TPU logs an
  INFO line on every machine without one.
  """

  def filter(self, record: pylogging.LogRecord) -> bool:
    if logging.get_verbosity() > logging.INFO:
      return True
    if f'{os.sep}orbax{os.sep}' in record.pathname:
      return False
    return not (record.levelno <= pylogging.INFO and
                record.getMessage().startswith('Unable to initialize backend'))


def _guarded(main: Main, argv: Sequence[str]) -> Any:
  _Started.value = True
  logging.get_absl_handler().addFilter(QuietLibraries())
  try:
    main(argv)  # What it returns is for callers in Python, not an exit code.
  except errors.UserError as e:
    _report(e, _TRACEBACK.value)


def _config_error(error: Exception, prefix: str) -> config_lib.ConfigError:
  config_error = config_lib.ConfigError(f'{prefix}{_config_message(error)}')
  config_error.__cause__ = error
  return config_error


def _traceback_asked() -> bool:
  # For errors before absl has parsed the flags.
  return any(a in ('--traceback', '--traceback=true', '--traceback=True')
             for a in sys.argv[1:])


def run(main: Main, define_flags: Optional[Callable[[], Any]] = None,
        argv: Optional[Sequence[str]] = None) -> None:
  """`app.run(main)` with user errors reported as one message (see above).

  Args:
    main: the absl main; with `define_flags`, called as
      `main(argv, defined)` with what `define_flags` returned.
    define_flags: defines the command's own flags. `config_flags` loads a
      config file and applies its overrides while the flag is defined, so
      defining it here turns a bad config into one message too.
    argv: the arguments after the program name (default: sys.argv's).
  """
  if define_flags is not None:
    try:
      defined = define_flags()
    except Exception as e:  # Any failure here is in the user's config.
      _report(_config_error(e, 'Cannot load the config: '),
              _traceback_asked())
    main = functools.partial(main, defined=defined)
  try:
    app.run(functools.partial(_guarded, main),
            argv=None if argv is None else [sys.argv[0], *argv])
  except Exception as e:  # pylint: disable=broad-except
    if _Started.value or define_flags is None:
      raise
    # config_flags executes the config file while absl parses --config: a
    # syntax error in it, a missing get_config or one that raises ends here.
    _report(_config_error(e, 'Cannot load the config file: '),
            _traceback_asked())
