"""One registry of model names: name -> (module class, fixed arguments, spec).

Each family file registers its own variants when it is imported (importing
`nfnets.models` imports them all); this module imports no family.
`create(name, num_classes, **overrides)` returns a forward function to wrap in
`hk.transform_with_state`.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Callable, Optional

import haiku as hk

from nfnets import errors

Forward = Callable[..., Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
  """A model variant: its architecture table row and published facts.

  Attributes:
    family: model family, e.g. 'nfnet', 'nf_resnet', 'nf_regnet', 'resnet'.
    depth: residual blocks per stage.
    widths: output channels per stage before the constructor's `width`
      multiplier.
    train_imsize: training resolution (pixels, square).
    test_imsize: evaluation resolution (pixels, square).
    drop_rate: dropout rate before the classifier.
    classifier: Haiku module path of the final classifier, e.g.
      'NFNet/~/linear' (what fine-tuning re-initializes and weight decay
      may exclude).
    params_m: published parameter count in millions, where known.
    gmacs: published multiply-adds of one inference forward pass at
      `test_imsize`, in billions, where known.
    randaugment_magnitude: RandAugment magnitude of the published recipe,
      where the recipe uses RandAugment.
  """
  family: str
  depth: tuple[int, ...]
  widths: tuple[int, ...]
  train_imsize: int
  test_imsize: int
  drop_rate: float
  classifier: str
  params_m: Optional[float] = None
  gmacs: Optional[float] = None
  randaugment_magnitude: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model.

  Attributes:
    name: registry name, e.g. 'nfnet_f0'.
    module: the Haiku module class; called as module(num_classes, **kwargs).
    kwargs: fixed constructor arguments (e.g. the variant).
    spec: the variant's `ModelSpec`.
  """
  name: str
  module: type
  kwargs: dict[str, Any]
  spec: ModelSpec


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, module: type, spec: ModelSpec,
             **kwargs: Any) -> None:
  """Adds a model under `name`; a duplicate name is an error.

  Args:
    name: registry name, e.g. 'nfnet_f0'.
    module: Haiku module class, constructed as module(num_classes, **kwargs,
      **overrides).
    spec: the variant's architecture and published facts.
    **kwargs: constructor arguments fixed for this name (not overridable).
  """
  if name in _REGISTRY:
    raise ValueError(f'Model {name!r} is already registered.')
  if not isinstance(spec, ModelSpec):
    raise TypeError(f'spec of {name!r} must be a ModelSpec, got '
                    f'{type(spec).__name__}.')
  _REGISTRY[name] = ModelEntry(name, module, dict(kwargs), spec)


def list_models() -> list[str]:
  """Registered model names, sorted."""
  return sorted(_REGISTRY)


class UnknownModelError(errors.UserError, ValueError):
  """A model name that is not registered."""


class UnknownOverrideError(errors.UserError, TypeError):
  """A constructor override the model does not take."""


def _did_you_mean(name: str, known: list[str], n: int = 1) -> str:
  close = [repr(c) for c in difflib.get_close_matches(name, known, n=n)]
  if len(close) > 1:
    close = [f'{", ".join(close[:-1])} or {close[-1]}']
  return f'did you mean {close[0]}? ' if close else ''


def get_entry(name: str) -> ModelEntry:
  """The registry entry of `name`, or an error listing the known names."""
  if name not in _REGISTRY:
    raise UnknownModelError(
        f'Unknown model {name!r}; {_did_you_mean(name, list_models(), 3)}'
        f'Known models: {len(_REGISTRY)}, listed by '
        'nfnets.models.list_models().')
  return _REGISTRY[name]


def get_spec(name: str) -> ModelSpec:
  """The `ModelSpec` of `name` (depth, resolutions, dropout, published counts).

  It describes the registered variant; `create` overrides (e.g. `depth`) do
  not change it.
  """
  return get_entry(name).spec


def accepted_overrides(name: str) -> list[str]:
  """Constructor arguments of `name` that `create` accepts as overrides."""
  entry = get_entry(name)
  params = inspect.signature(entry.module.__init__).parameters
  fixed = {'self', 'num_classes', *entry.kwargs}
  return sorted(p for p in params if p not in fixed)


def create(name: str, num_classes: int = 1000,
           **overrides: Any) -> Forward:
  """Returns the forward function of a registered model.

  The result is `forward(images, is_training=True, return_activations=False)`
  to be wrapped in `hk.transform_with_state`; it returns logits
  [N, num_classes], or (logits, activations) with `return_activations`.

  Args:
    name: a name from `list_models()`.
    num_classes: classifier outputs.
    **overrides: constructor arguments of the model, e.g. width=0.25,
      depth=(1, 2, 1, 1), activation='silu', drop_rate=0.0.

  Raises:
    UnknownModelError: unknown model name (a ValueError; the message lists
      the known ones).
    UnknownOverrideError: an override the model does not take (a TypeError;
      the message lists those it does).
  """
  entry = get_entry(name)
  allowed = accepted_overrides(name)
  unknown = sorted(set(overrides) - set(allowed))
  if unknown:
    raise UnknownOverrideError(
        f'Model {name!r} does not take {unknown}; '
        f'{_did_you_mean(unknown[0], allowed)}it takes: '
        f'{", ".join(allowed)}.')
  kwargs = {**entry.kwargs, **overrides}

  def forward(images, is_training: bool = True,
              return_activations: bool = False):
    model = entry.module(num_classes, **kwargs)
    return model(images, is_training=is_training,
                 return_activations=return_activations)

  return forward


def transform(name: str, num_classes: int = 1000,
              **overrides: Any) -> hk.TransformedWithState:
  """`hk.transform_with_state(create(name, num_classes, **overrides))`."""
  return hk.transform_with_state(create(name, num_classes, **overrides))
