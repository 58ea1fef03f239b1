"""What every command line shares: flags, quiet logs, one-line user errors.

`run(main)` runs an absl `main`:
- every command line takes JAX's own flags (`--jax_log_compiles`,
  `--jax_platforms=cpu`, `--jax_enable_x64`, ...; `--helpfull` lists them);
- a `UserError` prints `error: <message>` to stderr (a few lines at most) and
  exits with status 1. `--traceback` shows the full traceback instead; any
  other exception is a bug and keeps its traceback;
- at the default verbosity, library chatter a user cannot act on is dropped
  (see `QuietLibraries` and `QuietImport`); `--verbosity=1` shows it.
`load_config(holder)` turns a config that cannot be loaded or a bad
`--config.*` override into a `ConfigError`.
"""
from __future__ import annotations

import functools
import importlib.util
import logging as pylogging
import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
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
  message = str(error).strip()
  if len(message.splitlines()) > 3:
    message = one_paragraph(message)
  print(f'error: {message}', file=sys.stderr)
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


# Libraries whose INFO lines are dropped at the default verbosity: orbax's
# per-save lines drown the progress lines, tfds describes every data set it
# opens, and matplotlib announces its font cache the first time it runs.
_CHATTY = ('orbax', 'tensorflow_datasets', 'matplotlib')


class QuietLibraries(pylogging.Filter):
  """Drops library chatter a user cannot act on, unless --verbosity is raised.

  INFO lines of the `_CHATTY` libraries go, and orbax's warnings too: its
  read-only warnings say nothing useful (a failed save is reported as one
  `SaveError` instead of its writer threads' tracebacks). JAX's probe for a
  TPU logs an INFO line on every machine without one.
  """

  def filter(self, record: pylogging.LogRecord) -> bool:
    if logging.get_verbosity() > logging.INFO:
      return True
    if f'{os.sep}orbax{os.sep}' in record.pathname:
      return False
    if record.levelno > pylogging.INFO:
      return True
    if any(f'{os.sep}{name}{os.sep}' in record.pathname for name in _CHATTY):
      return False
    return not record.getMessage().startswith('Unable to initialize backend')


class QuietImport:
  """Silences file descriptor 2 while a module is first imported.

  TensorFlow's C++ code logs a oneDNN notice twice, each after absl's "All
  log messages before absl::InitializeLog() is called" warning, while its
  module loads: straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL
  says (TensorFlow 2.21). The libraries import TensorFlow only when a data
  pipeline or a metric writer needs it, so the command lines put this finder
  first on `sys.meta_path` rather than import TensorFlow themselves.
  Anything else written to stderr during that import is lost too; an
  exception still propagates, after stderr is back.
  """

  def __init__(self, module: str):
    self.module = module
    self.searching = False

  def find_spec(self, fullname: str, path: Any = None,
                target: Any = None) -> Any:
    """The module's own spec, its loading muted."""
    del path, target
    if fullname != self.module or self.searching:
      return None
    # Libraries ask for the spec without importing (to see whether
    # TensorFlow is installed), so every search until the import gets a
    # muted loader; the module's own finder is asked below.
    self.searching = True
    try:
      spec = importlib.util.find_spec(fullname)
    finally:
      self.searching = False
    if spec is not None and spec.loader is not None:
      spec.loader.exec_module = _muted(spec.loader.exec_module)
    return spec


def _muted(exec_module: Callable[[Any], None]) -> Callable[[Any], None]:
  @functools.wraps(exec_module)
  def wrapped(module: Any) -> None:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
      with open(os.devnull, 'wb') as null:
        os.dup2(null.fileno(), 2)
      exec_module(module)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
  return wrapped


def quiet_native_logs(verbosity: int) -> None:
  """Keeps TensorFlow's C++ start-up lines off stderr at `verbosity` <= 0.

  Call before TensorFlow is imported (a command line's `main` is: no library
  imports it at import time). TF_CPP_MIN_LOG_LEVEL does not reach these
  lines; JAX already sets it to 1 when it is unset, which drops the INFO
  lines TensorFlow's runtime logs later.
  """
  if verbosity > logging.INFO or 'tensorflow' in sys.modules:
    return
  if not any(isinstance(f, QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, QuietImport('tensorflow'))


def _guarded(main: Main, argv: Sequence[str]) -> Any:
  _Started.value = True
  logging.get_absl_handler().addFilter(QuietLibraries())
  quiet_native_logs(logging.get_verbosity())
  try:
    main(argv)  # What it returns is for callers in Python, not an exit code.
  except errors.UserError as e:
    _report(e, _TRACEBACK.value)
  except app.UsageError as e:
    # absl would print the whole --help above it.
    _report(errors.UserError(f'{e} (--helpshort lists the flags)'),
            _TRACEBACK.value)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad value as one `error:` line (exit status 1).

  absl's own parser prints 'FATAL Flags parsing error' and a help hint;
  every command line here reports a user's mistake the same way instead.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if _traceback_asked():
      raise
    print(f'error: {one_paragraph(e)} (--helpshort lists the flags)',
          file=sys.stderr)
    sys.exit(1)


def _config_error(error: Exception, prefix: str) -> errors.UserError:
  if isinstance(error, errors.UserError):
    return error  # Its message says what is wrong already.
  config_error = config_lib.ConfigError(f'{prefix}{_config_message(error)}')
  config_error.__cause__ = error
  return config_error


def _traceback_asked() -> bool:
  # For errors before absl has parsed the flags.
  return any(a in ('--traceback', '--traceback=true', '--traceback=True')
             for a in sys.argv[1:])


def use_jax_flags() -> None:
  """Defines JAX's configuration options as absl flags (`--jax_*`), once.

  absl sets the options from the command line once it has parsed it, before
  `main` runs; an option not given keeps its value from the environment
  ($JAX_PLATFORMS etc.).
  """
  if 'jax_platforms' not in flags.FLAGS:
    jax.config.config_with_absl()


def run(main: Main, define_flags: Optional[Callable[[], Any]] = None,
        argv: Optional[Sequence[str]] = None) -> None:
  """`app.run(main)` with JAX's flags, quiet logs and one-line user errors.

  See the module docstring.

  Args:
    main: the absl main; with `define_flags`, called as
      `main(argv, defined)` with what `define_flags` returned.
    define_flags: defines the command's own flags. `config_flags` loads a
      config file and applies its overrides while the flag is defined, so
      defining it here turns a bad config into one message too.
    argv: the arguments after the program name (default: sys.argv's).
  """
  use_jax_flags()
  if define_flags is not None:
    try:
      defined = define_flags()
    except Exception as e:  # Any failure here is in the user's config.
      _report(_config_error(e, 'Cannot load the config: '),
              _traceback_asked())
    main = functools.partial(main, defined=defined)
  try:
    app.run(functools.partial(_guarded, main),
            argv=None if argv is None else [sys.argv[0], *argv],
            flags_parser=_parse_flags)
  except Exception as e:  # pylint: disable=broad-except
    if _Started.value or define_flags is None:
      raise
    # config_flags loads the config while absl parses --config, and applies
    # the --config.* overrides: an unknown name or field, a file that does
    # not load or a get_config that raises ends here.
    _report(_config_error(e, 'Cannot load the config file: '),
            _traceback_asked())
