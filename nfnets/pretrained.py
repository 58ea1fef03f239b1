"""Load and export weights in the format of the released NFNet checkpoints.

DeepMind released ImageNet weights for NFNet-F0 ... F6 (F6 trained with SAM)
as `F0_haiku.npz` ... `F6_haiku.npz`, linked from the README of
github.com/deepmind/deepmind-research/tree/master/nfnets (files under
https://storage.googleapis.com/dm-nfnets/). Despite the extension they are
pickles, written with `dill`, of a nested dict
`{module path: {parameter name: numpy array}}` in Haiku naming, e.g.
`params['NFNet/~/nf_block_1/~/conv0']['w']`. Nothing here downloads: users
fetch the files themselves and pass a local path.

Pickles can run arbitrary code when loaded, so they are read with
`SafeUnpickler`, which admits only what a dict of numpy arrays needs and
refuses any other global with an error naming it. Plain `.npz` archives (keys
'module/path/param', written by `export_npz`) and the runner's checkpoints
are accepted too.

>>> p = load_pretrained('nfnet_f0', 'F0_haiku.npz')
>>> logits, _ = p.model.apply(p.params, p.state, None, images, is_training=False)
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import os
import pathlib
import pickle
from typing import Any, Callable, Mapping, Optional, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets import errors
from nfnets import models
from nfnets import optim
from nfnets.train import checkpoint

PathLike = Union[str, os.PathLike]
# {module path: {parameter name: array}}, Haiku's own params layout.
Params = dict[str, dict[str, np.ndarray]]


class UnsafePickleError(errors.UserError, pickle.UnpicklingError):
  """A pickle asked for a global outside the admitted set."""


class WeightsMismatchError(errors.UserError, ValueError):
  """Loaded weights do not fit the model (missing, unexpected or mis-shaped)."""


def _numpy_attr(submodule: str, name: str) -> Any:
  """numpy's private `_core.X.name` (numpy 2) or `core.X.name` (numpy 1)."""
  for module in (f'numpy._core.{submodule}', f'numpy.core.{submodule}'):
    try:
      return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
      continue
  raise ImportError(f'numpy has no {submodule}.{name}.')


def _create_array(f: Callable[..., Any], args: tuple[Any, ...], state: Any,
                  npdict: Optional[dict[str, Any]] = None) -> np.ndarray:
  """Stands in for `dill._dill._create_array`, which dill emits per array.

  dill pickles every ndarray as `_create_array(_reconstruct, args, state,
  __dict__)`; `f` is itself resolved through `SafeUnpickler.find_class`, so
  only numpy's reconstructor can reach here. Rebuilding it locally means
  loading needs neither dill nor trust in the file.
  """
  if f is not _numpy_attr('multiarray', '_reconstruct'):
    raise UnsafePickleError(
        f'dill array record calls {f!r}; only numpy\'s _reconstruct is '
        'admitted.')
  if npdict:
    raise UnsafePickleError(
        f'dill array record carries attributes {sorted(npdict)}; plain '
        'ndarrays have none.')
  array = f(*args)
  array.__setstate__(state)
  return array


def _codecs_encode(text: str, encoding: str = 'utf-8') -> bytes:
  """Stands in for `_codecs.encode`: protocol-2 pickles spell bytes with it."""
  if not isinstance(text, str) or encoding != 'latin1':
    raise UnsafePickleError(
        '_codecs.encode is admitted only as protocol 2 uses it for bytes '
        f'(str, "latin1"); got ({type(text).__name__}, {encoding!r}).')
  return text.encode('latin1')


def _admitted_globals() -> dict[tuple[str, str], Any]:
  """(module, name) -> object for every global a dict of arrays needs.

  numpy 1 and numpy 2 spell their private modules differently (`numpy.core`
  vs `numpy._core`); both spellings map to the installed numpy's objects.
  """
  admitted = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('dill._dill', '_create_array'): _create_array,
      ('_codecs', 'encode'): _codecs_encode,
  }
  for core in ('numpy.core', 'numpy._core'):
    admitted[(f'{core}.multiarray', '_reconstruct')] = _numpy_attr(
        'multiarray', '_reconstruct')
    admitted[(f'{core}.multiarray', 'scalar')] = _numpy_attr(
        'multiarray', 'scalar')
    # Protocol 5 pickles contiguous arrays through _frombuffer.
    admitted[(f'{core}.numeric', '_frombuffer')] = _numpy_attr(
        'numeric', '_frombuffer')
  return admitted


class SafeUnpickler(pickle.Unpickler):
  """An unpickler that builds only dicts, strings and numpy arrays.

  Every global a pickle references goes through `find_class`; anything not in
  `_admitted_globals()` (os.system, builtins.eval, a class of some library)
  raises `UnsafePickleError` naming it, before it could be called.
  """

  def __init__(self, file: Any, source: str = '<stream>'):
    super().__init__(file)
    self._source = source
    self._admitted = _admitted_globals()

  def find_class(self, module: str, name: str) -> Any:
    key = (module, name)
    if key not in self._admitted:
      raise UnsafePickleError(
          f'{self._source}: refusing to load global {module}.{name}; only '
          'numpy arrays, dicts and strings are admitted '
          f'(admitted globals: {sorted(".".join(k) for k in self._admitted)}).')
    return self._admitted[key]


def _check_structure(tree: Any, source: str) -> Params:
  """Checks a loaded object is {str: {str: numeric ndarray}}; returns it."""
  if not isinstance(tree, dict):
    raise ValueError(f'{source}: expected a dict of modules, got '
                     f'{type(tree).__name__}.')
  out = {}
  for module, entries in tree.items():
    if not isinstance(module, str) or not isinstance(entries, dict):
      raise ValueError(f'{source}: entry {module!r} is not a str -> dict '
                       f'mapping (value is {type(entries).__name__}).')
    out[module] = {}
    for name, value in entries.items():
      if isinstance(value, np.generic):
        value = np.asarray(value)
      if (not isinstance(name, str) or not isinstance(value, np.ndarray)
          or value.dtype.kind not in 'biuf'):
        raise ValueError(
            f'{source}: {module}/{name} is not a numeric numpy array '
            f'(got {type(value).__name__}'
            f'{" of dtype " + str(value.dtype) if hasattr(value, "dtype") else ""}).')
      out[module][name] = value
  return out


def load_haiku_pickle(path: PathLike) -> Params:
  """Reads a released `F*_haiku.npz` (a dill pickle) without running its code.

  Args:
    path: local file.

  Returns:
    {module path: {parameter name: numpy array}}.

  Raises:
    UnsafePickleError: the pickle references a global other than the numpy
      ones needed for arrays (the message names it).
    ValueError: the file is not a pickle of a nested dict of arrays.
  """
  path = pathlib.Path(path)
  with path.open('rb') as f:
    try:
      tree = SafeUnpickler(f, source=str(path)).load()
    except UnsafePickleError:
      raise
    except Exception as e:  # Truncated or corrupt streams raise many types.
      raise ValueError(f'{path}: not a readable pickle ({type(e).__name__}: '
                       f'{e}).') from e
  return _check_structure(tree, str(path))


def load_npz(path: PathLike) -> Params:
  """Reads a plain `.npz` whose keys are 'module/path/param' (no pickles)."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as archive:
      flat = {k: archive[k] for k in archive.files}
  except ValueError as e:
    raise ValueError(f'{path}: npz holds object arrays, which are not '
                     f'loaded ({e}).') from e
  params: Params = {}
  for key, value in flat.items():
    if '/' not in key:
      raise ValueError(f'{path}: key {key!r} is not "module/path/param".')
    module, name = key.rsplit('/', 1)
    params.setdefault(module, {})[name] = value
  return _check_structure(params, str(path))


def load_params(path: PathLike, *, use_ema: bool = True) -> Params:
  """Reads weights from a released pickle, a plain `.npz` or a checkpoint.

  The format is told by content, not by name (the released pickles end in
  '.npz'): a zip archive is an npz, a directory is a run's work directory or
  one of its checkpoint steps, anything else is read as a pickle.

  Args:
    path: file or directory.
    use_ema: for checkpoints, take the EMA weights when the run kept them.

  Returns:
    {module path: {parameter name: numpy array}}.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'No weights at {path}.')
  if path.is_dir():
    params, _ = checkpoint.read_saved(path).weights(use_ema)
    return to_numpy(params)
  with path.open('rb') as f:
    magic = f.read(4)
  if magic.startswith(b'PK'):
    return load_npz(path)
  return load_haiku_pickle(path)


def to_numpy(params: Mapping[str, Mapping[str, Any]]) -> Params:
  """Copies a Haiku params mapping to {str: {str: numpy array}}."""
  return {m: {n: np.asarray(jax.device_get(v)) for n, v in e.items()}
          for m, e in params.items()}


def check_params(expected: Mapping[str, Mapping[str, Any]],
                 loaded: Mapping[str, Mapping[str, Any]],
                 source: str = 'weights') -> None:
  """Raises `WeightsMismatchError` listing every name and shape mismatch.

  Args:
    expected: the model's params or their `jax.ShapeDtypeStruct`s.
    loaded: arrays read from a file.
    source: where `loaded` came from, for the message.
  """
  def flat(tree):
    return {f'{m}/{n}': tuple(v.shape) for m, e in tree.items()
            for n, v in e.items()}
  want, got = flat(expected), flat(loaded)
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  misshaped = sorted(f'{k}: expected {want[k]}, file has {got[k]}'
                     for k in set(want) & set(got) if want[k] != got[k])
  if missing or unexpected or misshaped:
    lines = [f'{source} does not fit the model:']
    for title, items in (('missing', missing), ('unexpected', unexpected),
                         ('wrong shape', misshaped)):
      if items:
        lines.append(f'  {len(items)} {title}: ' + '; '.join(items))
    raise WeightsMismatchError('\n'.join(lines))


@dataclasses.dataclass
class Pretrained:
  """A model with loaded weights.

  Attributes:
    name: registry name.
    model: `hk.transform_with_state` of the model; call
      `model.apply(params, state, rng, images, is_training=False)`.
    params: Haiku params (jax arrays).
    state: Haiku state (empty for the NF models).
    num_classes: classifier outputs.
  """
  name: str
  model: hk.TransformedWithState
  params: hk.Params
  state: hk.State
  num_classes: int


def _classifier_path(params: Mapping[str, Any]) -> Optional[str]:
  """The classifier's module path ('Top/~/linear'), if any."""
  for module in params:
    if optim.is_classifier(module, ''):
      return module
  return None


def load_pretrained(name: str, path: PathLike,
                    num_classes: Optional[int] = None, *,
                    reinit_classifier: bool = False, use_ema: bool = True,
                    **overrides: Any) -> Pretrained:
  """Builds `name` and fills it with weights from `path`, checking every array.

  Args:
    name: registry name, e.g. 'nfnet_f0'.
    path: a released `F*_haiku.npz` pickle, a plain `.npz`, or a checkpoint
      directory (see `load_params`).
    num_classes: classifier outputs; None takes the file's.
    reinit_classifier: start the classifier at zero instead of loading it,
      e.g. to fine-tune the ImageNet weights on another label set (a zero
      head is the usual fine-tuning start); the rest must still match.
    use_ema: for checkpoints, take the EMA weights when present.
    **overrides: model constructor overrides, e.g. width=0.25.

  Returns:
    A `Pretrained` with jax-array params in the model's dtypes.

  Raises:
    WeightsMismatchError: missing, unexpected or mis-shaped arrays (all of them
      are listed).
    UnsafePickleError: the file's pickle references a refused global.
  """
  loaded = load_params(path, use_ema=use_ema)
  head = _classifier_path(loaded)
  if num_classes is None:
    if head is None or 'w' not in loaded[head]:
      raise WeightsMismatchError(
          f'{path}: no classifier "<Top>/~/linear/w" to take num_classes from; '
          'pass num_classes.')
    num_classes = int(loaded[head]['w'].shape[-1])
  model = models.transform(name, num_classes, **overrides)
  abstract_params, abstract_state = models.abstract_init(
      model, models.get_spec(name).test_imsize)
  if jax.tree_util.tree_leaves(abstract_state):
    raise WeightsMismatchError(
        f'{name} keeps state (e.g. BatchNorm statistics); weight files here '
        'hold params only.')
  model_head = _classifier_path(abstract_params)
  if reinit_classifier:
    loaded = {m: e for m, e in loaded.items() if m != head}
    expected = {m: e for m, e in abstract_params.items() if m != model_head}
  else:
    expected = abstract_params
  check_params(expected, loaded, source=str(path))
  params = {m: {n: jnp.asarray(loaded[m][n], abstract_params[m][n].dtype)
                for n in e} for m, e in expected.items()}
  if reinit_classifier:
    params[model_head] = {n: jnp.zeros(v.shape, v.dtype)
                          for n, v in abstract_params[model_head].items()}
  return Pretrained(name=name, model=model, params=params, state={},
                    num_classes=num_classes)


def export_haiku_pickle(params: Mapping[str, Mapping[str, Any]],
                        path: PathLike) -> pathlib.Path:
  """Writes params in the released files' format (a pickle of nested dicts).

  Plain `pickle` suffices: `dill.load` and `load_haiku_pickle` both read it.

  Args:
    params: Haiku params.
    path: destination file (conventionally '<name>_haiku.npz').

  Returns:
    The path written.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  pickle.dump(to_numpy(params), buf, protocol=4)
  path.write_bytes(buf.getvalue())
  return path


def export_npz(params: Mapping[str, Mapping[str, Any]],
               path: PathLike) -> pathlib.Path:
  """Writes params as a plain `.npz` with keys 'module/path/param'.

  Readable with `np.load(path)` and no pickle; `load_npz` reads it back.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {f'{m}/{n}': v for m, e in to_numpy(params).items()
          for n, v in e.items()}
  with path.open('wb') as f:
    np.savez(f, **flat)
  return path
