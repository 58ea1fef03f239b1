"""One registry of model names: name -> (module class, fixed arguments, spec).

`create(name, num_classes, **overrides)` returns a forward function to wrap in
`hk.transform_with_state`; families add themselves with `register`.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional

import haiku as hk

from nfnets.models import baselines
from nfnets.models import nf_regnet
from nfnets.models import nf_resnet
from nfnets.models import nfnet

Forward = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model.

  Attributes:
    name: registry name, e.g. 'nfnet_f0'.
    module: the Haiku module class; called as module(num_classes, **kwargs).
    kwargs: fixed constructor arguments (e.g. the variant).
    spec: published facts about the model: blocks per stage ('depth'),
      train/test resolution, dropout,
      parameter count ('params_m', millions) and cost ('gflops') where known.
  """
  name: str
  module: type
  kwargs: dict[str, Any]
  spec: dict[str, Any]


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, module: type, spec: dict[str, Any],
             **kwargs: Any) -> None:
  """Adds a model under `name`; a duplicate name is an error."""
  if name in _REGISTRY:
    raise ValueError(f'Model {name!r} is already registered.')
  _REGISTRY[name] = ModelEntry(name, module, dict(kwargs), dict(spec))


def list_models() -> list[str]:
  """Registered model names, sorted."""
  return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
  """The registry entry of `name`, or a ValueError listing the known names."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}. Known models: '
                     f'{", ".join(list_models())}.')
  return _REGISTRY[name]


def get_spec(name: str) -> dict[str, Any]:
  """Published facts about `name` (train_imsize, test_imsize, drop_rate, ...)."""
  return dict(get_entry(name).spec)


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
      activation='silu', drop_rate=0.0.

  Raises:
    ValueError: unknown model name (the message lists the known ones).
    TypeError: an override the model does not take (the message lists those
      it does).
  """
  entry = get_entry(name)
  allowed = accepted_overrides(name)
  unknown = sorted(set(overrides) - set(allowed))
  if unknown:
    raise TypeError(f'Model {name!r} does not take {unknown}; it takes: '
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


def _register_families() -> None:
  for variant, v in nfnet.NFNET_VARIANTS.items():
    key = variant.lower().replace('+', '_plus')
    spec = {'family': 'nfnet', 'depth': v.depth,
            'train_imsize': v.train_imsize,
            'test_imsize': v.test_imsize, 'drop_rate': v.drop_rate,
            'randaugment_magnitude': v.randaugment_magnitude}
    if variant in nfnet.NFNET_PARAMS_M:
      spec['params_m'] = nfnet.NFNET_PARAMS_M[variant]
    if variant in nfnet.NFNET_GFLOPS:
      spec['gflops'] = nfnet.NFNET_GFLOPS[variant]
    register(f'nfnet_{key}', nfnet.NFNet, spec, variant=variant)
  for variant, v in nf_resnet.NF_RESNET_VARIANTS.items():
    spec = {'family': 'nf_resnet', 'depth': v.depth,
            'train_imsize': v.train_imsize,
            'test_imsize': v.test_imsize, 'drop_rate': v.drop_rate}
    if variant in nf_resnet.NF_RESNET_PARAMS_M:
      spec['params_m'] = nf_resnet.NF_RESNET_PARAMS_M[variant]
    register(f'nf_resnet{variant}', nf_resnet.NFResNet, spec, variant=variant)
  for variant, v in nf_regnet.NF_REGNET_VARIANTS.items():
    spec = {'family': 'nf_regnet', 'depth': v.depth,
            'train_imsize': v.train_imsize,
            'test_imsize': v.test_imsize, 'drop_rate': v.drop_rate}
    if variant in nf_regnet.NF_REGNET_PARAMS_M:
      spec['params_m'] = nf_regnet.NF_REGNET_PARAMS_M[variant]
    register(f'nf_regnet_{variant.lower()}', nf_regnet.NFRegNet, spec,
             variant=variant)
  for variant, v in baselines.RESNET_VARIANTS.items():
    spec = {'family': 'resnet', 'depth': v.depth, 'train_imsize': v.train_imsize,
            'test_imsize': v.test_imsize, 'drop_rate': v.drop_rate}
    if variant in baselines.RESNET_PARAMS_M:
      spec['params_m'] = baselines.RESNET_PARAMS_M[variant]
    register(f'resnet{variant}_bn', baselines.ResNet, spec, variant=variant,
             norm='batch')
    register(f'resnet{variant}_gn', baselines.ResNet, spec, variant=variant,
             norm='group')
    nf_spec = get_spec(f'nf_resnet{variant}')
    nf_spec.pop('params_m', None)
    register(f'nf_resnet{variant}_no_ws', nf_resnet.NFResNet, nf_spec,
             variant=variant, conv=baselines.he_conv_for('relu'))


_register_families()
