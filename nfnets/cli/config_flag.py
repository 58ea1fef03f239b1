r"""The --config flag: a recipe shipped with the package by name, or a file.

  --config=nfnet_f1                   # nfnets/configs/nfnet.py, variant f1
  --config=nfnet_f0:runlocal          # ... with the config string 'runlocal'
  --config=nfnet:f3,runlocal          # a family's file by name, any variant
  --config=experiments/nfnet_f1.py    # a path: anything ending in .py or
  --config=my_configs/sweep.py:arg    #   holding a '/'
  --config.training.batch_size=256    # overrides, after any of these

The names are the modules of `nfnets.configs` (`digits`, `nfnet`,
`efficientnet`, `nf_resnet50`, ...) and, for the family modules that fix a
variant with `variant(word)`, the registered model each variant trains
(`nfnet_f1`, `efficientnet_b3`, `nf_efficientnet_b0`, ...). They resolve
inside the installed package, so they work from any directory.

ml_collections' `config_flags` parses the flag and its `--config.*`
overrides; only how a value becomes a config is ours. Files run through
`importlib`'s `exec_module`: ml_collections' own loader calls the deprecated
`load_module()`.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import os
import pkgutil
import sys
import types
from typing import Iterator, Optional

from absl import flags
import ml_collections
# The module behind `config_flags.DEFINE_config_file`, for its flag class.
from ml_collections.config_flags import config_flags

from nfnets import configs
from nfnets import errors
from nfnets import models

# Flags defined here belong to the command line that calls `define`, so that
# its --help shows them.
flags.disclaim_key_flags()

DEFAULT = 'digits'


class ConfigLoadError(errors.UserError):
  """A --config value that names no config, or a config that fails to load.

  Not a ValueError: absl turns a ValueError raised while it parses a flag
  into its own multi-line usage error, and this one is a single line.
  """


@functools.lru_cache(maxsize=None)
def names() -> dict[str, tuple[str, Optional[str]]]:
  """Config name -> (module of `nfnets.configs`, variant word or None)."""
  found = {}
  for info in pkgutil.iter_modules(configs.__path__):
    module = importlib.import_module(f'{configs.__name__}.{info.name}')
    if not callable(getattr(module, 'get_config', None)):
      continue  # The shared recipes (common.py).
    found[info.name] = (info.name, None)
    if callable(getattr(module, 'variant', None)):
      for model, word in _variants(module, info.name):
        found.setdefault(model, (info.name, word))
  return dict(sorted(found.items()))


def _variants(module: types.ModuleType, family: str
              ) -> Iterator[tuple[str, str]]:
  """(model, variant word) of each registered model `module` trains.

  A family's words are its model names without the family's: 'f1' for
  nfnet_f1, 'nf_b0' for nf_efficientnet_b0; a word counts only when the
  family's `get_config` builds that very model from it.
  """
  for model in models.list_models():
    if model.startswith(f'{family}_'):
      word = model[len(family) + 1:]
    elif f'_{family}_' in model:
      word = model.replace(f'{family}_', '', 1)
    else:
      continue
    try:
      built = module.get_config(word).model.name
    except Exception:  # pylint: disable=broad-except
      # Registered, but no recipe of this family's; a recipe that is broken
      # fails when loaded by its family's name or file instead of failing
      # every command line here.
      continue
    if built == model:
      yield model, word


def listing() -> str:
  """Every name, a family's variants in braces: 'nfnet_{f0, f1, ...}'."""
  groups: dict[str, list[str]] = {}
  for name, (module, word) in names().items():
    if word and name == f'{module}_{word}':
      groups.setdefault(f'{module}_', []).append(word)
    else:
      groups[name] = []
  return ', '.join(f'{key}{{{", ".join(words)}}}' if words else key
                   for key, words in groups.items())


def _is_path(spec: str) -> bool:
  return spec.endswith('.py') or '/' in spec or os.sep in spec


def _load_file(path: str, module_name: str) -> types.ModuleType:
  """Executes the Python file at `path` as a fresh module."""
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None or spec.loader is None:
    raise ConfigLoadError(f'--config={path} is not a Python file.')
  module = importlib.util.module_from_spec(spec)
  # As an import would: dataclasses and pickling look the module up by name.
  sys.modules[module_name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[module_name]
    raise
  return module


def _unknown_name(spec: str) -> ConfigLoadError:
  nearest = difflib.get_close_matches(spec, list(names()), n=1, cutoff=0.5)
  hint = f"; did you mean '{nearest[0]}'?" if nearest else '.'
  return ConfigLoadError(
      f"Unknown config '{spec}'{hint} Built-in configs: {listing()}; or a "
      'path to a config file ending in .py.')


def _missing_file(path: str, error: OSError) -> ConfigLoadError:
  stem = os.path.splitext(os.path.basename(path))[0]
  hint = (f'; the built-in recipe is --config={stem}' if stem in names()
          else '')
  return ConfigLoadError(
      f'Cannot load the config file {path}: {error.strerror or error}'
      f'{hint}.')


def load(value: str, flag_name: str = 'config') -> ml_collections.ConfigDict:
  """The config a --config value names (see the module docstring).

  Args:
    value: NAME[:ARG] or PATH[:ARG]; ARG goes to the config's `get_config`.
    flag_name: the flag's name, for the config file's module name.

  Returns:
    What `get_config` returns.

  Raises:
    ConfigLoadError: no such name or file, or the file or its `get_config`
      fails (the message says why, with the nearest name for a typo).
  """
  spec, colon, arg = value.partition(':')
  args = [arg] if colon else []
  if _is_path(spec):
    try:
      module = _load_file(spec, f'{flag_name}_config')
    except FileNotFoundError as e:
      raise _missing_file(spec, e) from e
    except ConfigLoadError:
      raise
    except Exception as e:  # Whatever the file raises is the user's to fix.
      raise ConfigLoadError(
          f'Cannot load the config file {spec}: {type(e).__name__}: {e}'
      ) from e
    if not callable(getattr(module, 'get_config', None)):
      raise ConfigLoadError(
          f'The config file {spec} defines no get_config() function.')
  else:
    if spec not in names():
      raise _unknown_name(spec)
    module_name, word = names()[spec]
    module = importlib.import_module(f'{configs.__name__}.{module_name}')
    if word:
      args = [','.join(filter(None, [word, arg]))]
  try:
    return module.get_config(*args)
  except Exception as e:  # A bad config string, or a broken user config.
    raise ConfigLoadError(f'Cannot load --{flag_name}={value}: {e}') from e


class _Parser(flags.ArgumentParser):
  """Parses a --config value into its locked config (see `load`)."""

  def __init__(self, name: str):
    self.name = name

  def parse(self, argument):
    if not isinstance(argument, str):
      return argument  # Already a config (a default given as one).
    config = load(argument, self.name)
    if callable(getattr(config, 'lock', None)):
      config.lock()  # An override of a field the config lacks is an error.
    return config

  def flag_type(self) -> str:
    return 'config object'


def help_text() -> str:
  """What --help says about --config, with every built-in name."""
  return (
      'A built-in recipe by name, NAME[:ARG], e.g. nfnet_f1, '
      'nfnet_f0:runlocal (runlocal: a CPU-sized smoke test on digits), '
      'efficientnet_b0:digits; or a config file, PATH.py[:ARG], e.g. '
      'experiments/nfnet_f1.py. Fields are overridden with '
      '--config.training.batch_size=256 etc. Built-in names: '
      f'{listing()}.')


def define(name: str = 'config', default: str = DEFAULT,
           flag_values: flags.FlagValues = flags.FLAGS,
           sys_argv: Optional[list[str]] = None) -> flags.FlagHolder:
  """Defines the config flag `name` (see the module docstring).

  Args:
    name: the flag's name; overrides are `--NAME.field=value`.
    default: the config used without the flag, a name or a path.
    flag_values: where to define it.
    sys_argv: the command line to find the overrides in (default:
      sys.argv when parsing).

  Returns:
    Its holder; `.value` is the locked, overridden config.
  """
  # ml_collections' DEFINE_config_file with our parser: its flag class finds
  # and applies the overrides.
  flag = config_flags._ConfigFlag(  # pylint: disable=protected-access
      parser=_Parser(name),
      serializer=flags.ArgumentSerializer(), name=name, default=default,
      help_string=help_text(), flag_values=flag_values, sys_argv=sys_argv)
  return flags.DEFINE_flag(flag, flag_values)
