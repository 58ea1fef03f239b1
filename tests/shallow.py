"""Shallow twins of registered models, for tests that need the code, not depth.

XLA's compile time on CPU grows with the number of residual blocks and
dominates the tests of tiny models. `register('nfnet_f0')` adds
'nfnet_f0_shallow': the same family, widths, recipe and constructor arguments
with `DEPTH` blocks per stage. One block in the first stage and two in the
second still build every kind of block the full model has: the first block
(unstrided with a projection in NFNets and NF-ResNets, unexpanded in
NF-RegNets), a strided transition and an identity-shortcut block.

The twin is added to the model file's variants table and to the registry, so
everything that takes a registered name (configs, the runner, checkpoints)
takes it; `registered` removes it again afterwards.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import pytest

from nfnets.models import baselines
from nfnets.models import nf_regnet
from nfnets.models import nf_resnet
from nfnets.models import nfnet
from nfnets.models import registry

DEPTH = (1, 2)
SUFFIX = '_shallow'

# The variants table each model class reads its `variant` from.
_TABLES = {
    nfnet.NFNet: nfnet.NFNET_VARIANTS,
    nf_resnet.NFResNet: nf_resnet.NF_RESNET_VARIANTS,
    nf_regnet.NFRegNet: nf_regnet.NF_REGNET_VARIANTS,
    baselines.ResNet: baselines.RESNET_VARIANTS,
}


def _add(patch: pytest.MonkeyPatch, name: str, depth: tuple[int, ...]) -> str:
  shallow = name + SUFFIX
  if shallow in registry.list_models():
    if registry.get_spec(shallow)['depth'] != depth:
      raise ValueError(f'{shallow} is registered with another depth.')
    return shallow
  entry = registry.get_entry(name)
  table = _TABLES[entry.module]
  variant = entry.kwargs['variant']
  patch.setitem(table, variant + SUFFIX,
                dataclasses.replace(table[variant], depth=depth))
  # Published sizes are the full model's; the twin has none.
  spec = {k: v for k, v in entry.spec.items()
          if k not in ('params_m', 'gflops')}
  spec['depth'] = depth
  # Set on the registry's table itself: it has no way to remove an entry.
  entries = registry._REGISTRY  # pylint: disable=protected-access
  patch.setitem(entries, shallow, registry.ModelEntry(
      shallow, entry.module, {**entry.kwargs, 'variant': variant + SUFFIX},
      spec))
  return shallow


def register(name: str, depth: tuple[int, ...] = DEPTH) -> str:
  """Registers `name`'s shallow twin for the rest of the process.

  For subprocesses started by a test; in-process tests use `registered` (or
  the `shallow` fixture), which cleans up.

  Returns:
    The twin's registry name, `name + SUFFIX`.
  """
  return _add(pytest.MonkeyPatch(), name, depth)


@contextlib.contextmanager
def registered(*names: str,
               depth: tuple[int, ...] = DEPTH) -> Iterator[list[str]]:
  """Registers the shallow twins of `names` while the context is open."""
  patch = pytest.MonkeyPatch()
  try:
    yield [_add(patch, name, depth) for name in names]
  finally:
    patch.undo()
