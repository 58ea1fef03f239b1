r"""Signal Propagation Plots ([NF-ResNet] Brock, De, Smith 2021, sec. 3).

Feed a batch (unit Gaussian noise by default) through a ResNet and, at the
output of every residual block, record
  * the average squared channel mean  mean_c (E_{n,h,w}[x])^2,
  * the average channel variance      mean_c Var_{n,h,w}[x],
  * the same variance of the residual branch's output (before the skip gain,
    alpha and stochastic depth),
with channel statistics taken over the batch and spatial axes.

Any registered model works, as does any Haiku function with the model
contract `forward(images, is_training, return_activations)` returning
(logits, activations) where activations has `.blocks` and `.branches` lists of
NHWC tensors (`nfnets.models.common.Activations`).

At initialization the NF-ResNets' zero-initialised skip gains are set to one,
as the paper's plots assume, and dropout and stochastic depth are turned off.
The forward pass runs with `is_training=True`, so BatchNorm uses batch
statistics, as in the paper.

Command line: `python -m nfnets.spp` (see `nfnets.cli.spp`).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets import errors
from nfnets.models import registry

# Short names for the networks of [NF-ResNet] Figures 1 and 2: (registered
# name with '{depth}' in it, constructor overrides).
SHORT_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    'bn_relu_conv': ('resnet{depth}_bn', {'ordering': 'bn_relu_conv'}),
    'relu_bn_conv': ('resnet{depth}_bn', {'ordering': 'relu_bn_conv'}),
    'nf_resnet_ws': ('nf_resnet{depth}', {}),
    'nf_resnet_he': ('nf_resnet{depth}_no_ws', {}),
}
_LABELS = {
    'bn_relu_conv': 'BN-ReLU-Conv',
    'relu_bn_conv': 'ReLU-BN-Conv',
    'nf_resnet_ws': 'NF-ResNet (Scaled WS)',
    'nf_resnet_he': 'NF-ResNet (He init, no WS)',
}
STATISTICS = ('mean_sq', 'variance', 'residual_variance')
_TITLES = ('Average squared channel mean', 'Average channel variance',
           'Residual average channel variance')


@dataclasses.dataclass
class SPP:
  """Per-block statistics of one network, each an array [num_blocks].

  Attributes:
    mean_sq: average over channels of the squared channel mean of the
      residual stream at each block's output.
    variance: average channel variance of the residual stream.
    residual_variance: average channel variance of the residual branch.
  """
  mean_sq: np.ndarray
  variance: np.ndarray
  residual_variance: np.ndarray

  def __len__(self) -> int:
    return len(self.mean_sq)


def channel_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(average squared channel mean, average channel variance) of x [..., C].

  Channel statistics are over every axis but the last (batch and space);
  the variance is the population one. Both are float32 scalars.
  """
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)  # [C]
  var = jnp.mean(jnp.square(x - mean), axis=axes)  # [C]
  return jnp.mean(jnp.square(mean)), jnp.mean(var)


def _blocks_and_branches(acts: Any) -> tuple[Sequence[jax.Array],
                                             Sequence[jax.Array]]:
  if isinstance(acts, Mapping):
    return acts['blocks'], acts['branches']
  return acts.blocks, acts.branches


def set_skip_gains(params: hk.Params, value: float = 1.0) -> hk.Params:
  """Returns `params` with every parameter named 'skip_gain' set to `value`."""
  return {m: {k: (jnp.full_like(v, value) if k == 'skip_gain' else v)
              for k, v in leaves.items()}
          for m, leaves in params.items()}


def signal_propagation(
    forward: Union[str, Callable[..., Any]],
    images: jax.Array,
    *,
    params: Optional[hk.Params] = None,
    state: Optional[hk.State] = None,
    rng: Union[int, jax.Array] = 0,
    is_training: bool = True,
    unit_skip_gains: bool = True,
    jit: bool = False,
    **overrides: Any,
) -> SPP:
  """Computes the signal propagation statistics of a network.

  Args:
    forward: a registered model name, or a forward function with the model
      contract (see the module docstring) to wrap in `hk.transform_with_state`.
    images: input batch [N, H, W, C], e.g. unit Gaussian noise.
    params: trained parameters; None initializes them from `rng`.
    state: model state (BatchNorm statistics) to go with `params`; None
      initializes it.
    rng: PRNG key or integer seed for initialization and the forward pass.
    is_training: forward mode; True makes BatchNorm use batch statistics.
    unit_skip_gains: when initializing (params is None), set every
      'skip_gain' parameter to one so that residual branches contribute.
    jit: compile the forward pass. A single pass through a deep network runs
      faster op by op than its compilation takes (minutes on CPU at depth 600).
    **overrides: model constructor arguments when `forward` is a name, e.g.
      width=0.125. Dropout and stochastic depth rates default to zero.

  Returns:
    An `SPP` with one entry per residual block.
  """
  if isinstance(forward, str):
    accepted = registry.accepted_overrides(forward)
    for key in ('drop_rate', 'stochdepth_rate'):
      if key in accepted:
        overrides.setdefault(key, 0.0)
    forward = registry.create(forward, **overrides)
  elif overrides:
    raise TypeError(f'Overrides {sorted(overrides)} need a registered model '
                    'name, not a forward function.')
  model = hk.transform_with_state(forward)
  key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
  init_key, apply_key = jax.random.split(key)
  if params is None or state is None:
    new_params, new_state = model.init(init_key, images,
                                       is_training=is_training)
    if params is None:
      params = new_params
      if unit_skip_gains:
        params = set_skip_gains(params, 1.0)
    if state is None:
      state = new_state

  def stats(params, state, images, key):
    (_, acts), _ = model.apply(params, state, key, images,
                               is_training=is_training,
                               return_activations=True)
    blocks, branches = _blocks_and_branches(acts)
    if not blocks or len(blocks) != len(branches):
      raise ValueError('The forward function must return activations with '
                       'equal, non-empty lists of block and branch outputs; '
                       f'got {len(blocks)} and {len(branches)}.')
    block_stats = [channel_stats(b) for b in blocks]
    branch_var = [channel_stats(b)[1] for b in branches]
    return (jnp.stack([m for m, _ in block_stats]),
            jnp.stack([v for _, v in block_stats]), jnp.stack(branch_var))

  if jit:
    stats = jax.jit(stats)
  mean_sq, var, res_var = jax.device_get(stats(params, state, images,
                                               apply_key))
  return SPP(np.asarray(mean_sq), np.asarray(var), np.asarray(res_var))


def resolve(model: str, depth: int) -> tuple[str, dict[str, Any]]:
  """Maps a short name (`SHORT_NAMES`) at `depth`, or a registered name, to
  (registered name, overrides).

  Raises:
    errors.InputError: a short name at a depth no registered model has.
    registry.UnknownModelError: an unknown name.
  """
  if model in SHORT_NAMES:
    template, overrides = SHORT_NAMES[model]
    name = template.format(depth=depth)
    if name not in registry.list_models():
      prefix, suffix = template.split('{depth}')
      depths = sorted(int(m[len(prefix):len(m) - len(suffix)])
                      for m in registry.list_models()
                      if m.startswith(prefix) and m.endswith(suffix)
                      and m[len(prefix):len(m) - len(suffix)].isdigit())
      raise errors.InputError(
          f'{model} has no depth {depth}; depths: '
          f'{", ".join(map(str, depths))}.')
    return name, dict(overrides)
  registry.get_entry(model)  # Unknown names fail here, listing known ones.
  return model, {}


def check_inputs(models: Sequence[str], depth: int, *, width: float,
                 image_size: int, batch_size: int) -> None:
  """Refuses settings that would give empty, zero or NaN statistics.

  Raises:
    errors.InputError: no models, a width or image size that is not
      positive, or fewer than 2 inputs (the channel variance of a block
      whose output is 1x1 px needs two); an unknown model or depth.
  """
  if not models or not all(models):
    raise errors.InputError(f'Name at least one model; got {list(models)}. '
                            f'Short names: {", ".join(SHORT_NAMES)}.')
  if not width > 0:
    raise errors.InputError(f'width must be positive, got {width}.')
  if image_size < 1:
    raise errors.InputError(f'image_size must be positive, got {image_size}.')
  if batch_size < 2:
    raise errors.InputError(
        f'batch_size must be at least 2 (the statistics are over the batch '
        f'and the pixels), got {batch_size}.')
  for model in models:
    resolve(model, depth)


def write_csv(path: str, results: Mapping[str, SPP]) -> None:
  """Writes one row per (model, block): model, block, and the statistics."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('model', 'block') + STATISTICS)
    for name, spp in results.items():
      for i in range(len(spp)):
        writer.writerow([name, i] + [f'{getattr(spp, s)[i]:.6g}'
                                     for s in STATISTICS])


def read_csv(path: str) -> dict[str, SPP]:
  """Reads a file written by `write_csv` back into `SPP`s."""
  rows: dict[str, list[list[float]]] = {}
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      rows.setdefault(row['model'], []).append(
          [float(row[s]) for s in STATISTICS])
  return {name: SPP(*np.asarray(v).T) for name, v in rows.items()}


def plot(results: Mapping[str, SPP], path: str,
         title: Optional[str] = None) -> None:
  """Draws one panel per statistic, one line per model, against block index.

  The squared-mean panel uses a log scale: the mean shift of unnormalized
  ReLU networks spans orders of magnitude.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, spp in results.items():
    label = _LABELS.get(name, name)
    for ax, stat in zip(axes, STATISTICS):
      ax.plot(np.arange(len(spp)), getattr(spp, stat), label=label, lw=1.2)
  for ax, t in zip(axes, _TITLES):
    ax.set_title(t)
    ax.set_xlabel('Residual block')
    ax.grid(alpha=0.3)
  axes[0].set_yscale('symlog', linthresh=1e-2)
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(models: Sequence[str], depth: int, out: str, *, width: float = 0.25,
        image_size: int = 32, batch_size: int = 8, seed: int = 0,
        **overrides: Any) -> dict[str, SPP]:
  """Computes the SPPs of `models` on unit Gaussian inputs; writes PNG + CSV.

  Args:
    models: short names (`SHORT_NAMES`) or registered model names.
    depth: depth for the short names (50, 101, 152, 200, 288, 600).
    out: PNG path; the CSV goes beside it with the extension '.csv'.
    width: channel multiplier for every model.
    image_size: input height and width in pixels.
    batch_size: number of noise images.
    seed: seed of the inputs and of the initialization.
    **overrides: further constructor arguments for every model.

  Returns:
    The statistics per model, keyed as given in `models`.

  Raises:
    errors.InputError: see `check_inputs`.
    errors.PathError: `out` cannot be written.
  """
  check_inputs(models, depth, width=width, image_size=image_size,
               batch_size=batch_size)
  errors.check_writable(out, f'the plot {out}')
  images = jax.random.normal(jax.random.PRNGKey(seed),
                             (batch_size, image_size, image_size, 3))
  results = {}
  for model in models:
    name, kw = resolve(model, depth)
    results[model] = signal_propagation(name, images, rng=seed, width=width,
                                        **kw, **overrides)
  errors.make_parent(out, f'the plot {out}')
  write_csv(os.path.splitext(out)[0] + '.csv', results)
  # `depth` applies only to the short names; registered names fix their own.
  shown = f'Depth {depth}, ' if set(models) & set(SHORT_NAMES) else ''
  plot(results, out, title=(f'{shown}width x{width}, {batch_size} Gaussian '
                            f'inputs of {image_size}x{image_size} px'))
  return results


if __name__ == '__main__':
  # `python -m nfnets.spp` runs the command line, which lives with the other
  # command lines.
  from nfnets.cli import spp as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
