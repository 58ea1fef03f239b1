r"""Does AGC keep an unnormalized ResNet stable at high learning rates?

Trains a small NF-ResNet-50 (no normalization layers) on the embedded digits
data set with the NFNet optimizer (SGD, Nesterov momentum 0.9, weight decay
2e-5, warmup + cosine) at large batch size and high learning rates, once
with AGC (`--clipping`, classifier exempt) and once without (the same chain
with clipping 0). Both arms of a learning rate start from the same
initialization and see the same batches. [NFNet] sec. 4 reports that AGC is
what lets NF-ResNets train stably at large batch sizes and learning rates.

Per run it records the training loss of every step, whether the run diverged
(a non-finite loss, or a loss above `--blowup` times the initial one) and the
test accuracy at the end. It prints a table and writes
`benchmarks/results/agc_stability.json` and `agc_stability.png`.

  python -m benchmarks.agc_stability                 # 3-5 min on 2 CPU cores
  python -m benchmarks.agc_stability --steps 100 --batch-size 1024 \
      --lrs 0.1,0.4,1.6 --clipping 0.01

Learning rates are peak values; the paper's rule 0.1 * batch / 256 gives 0.4
at batch 1024. A diverged run stops at its first non-finite loss. Flags are
absl's (`--helpfull` lists them with JAX's `--jax_*` flags); the dashed
spellings `--batch-size 1024` work too.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
import types
from typing import Any, Sequence

from absl import flags
import haiku as hk
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from nfnets import data
from benchmarks import _common
from benchmarks import _host as host
from nfnets import models
from nfnets.train import config as train_config
from nfnets.train import optimizer as train_optimizer
from nfnets.train import state as state_lib
from nfnets.train import step as step_lib

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'results')


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  define = _common.definer(flag_values)
  define('string', 'model', 'nf_resnet50', 'Registered model name.')
  define('float', 'width', 0.125, 'Channel multiplier of the model.')
  define('integer', 'image_size', 16, 'Digits upsampled to this many pixels.')
  define('integer', 'batch_size', 1024, 'Batch size of both arms.')
  define('integer', 'steps', 100, 'Training steps per run.')
  define('integer', 'warmup_steps', 10, 'Linear warmup steps.')
  define('string', 'lrs', '0.1,0.4,1.6,6.4',
         'Comma-separated peak learning rates.')
  define('float', 'clipping', 0.01, 'AGC threshold lambda of the AGC arm.')
  define('float', 'blowup', 10.0, 'A loss above this times the initial one '
         'counts as divergence.')
  define('integer', 'seed', 0, 'Seed of initialization and batches.')
  define('string', 'out', os.path.join(RESULTS_DIR, 'agc_stability'),
         'Output path without extension (.json, .png).')


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  return _common.parse_flags(define_flags, argv)


def make_train_step(args: types.SimpleNamespace, clipping: float,
                    forward: hk.TransformedWithState,
                    data_config: ml_collections.ConfigDict):
  """(optimizer, jitted runner step) of one arm, for every learning rate.

  The step is the runner's (`nfnets.train.step.make_train_step`), without
  label smoothing or EMA. The optimizer is the NFNet one peaking at learning
  rate 1, followed by a scale whose factor lives in the optimizer state
  (`with_learning_rate` sets it), so one compilation serves every rate.
  """
  config = train_config.base_config()
  config.data = data_config
  config.training.batch_size = args.batch_size
  config.training.compute_dtype = 'float32'
  config.training.label_smoothing = 0.0
  config.training.ema_decay = 0.0
  optimizer = optax.chain(
      unit_peak_optimizer(args, clipping),
      optax.inject_hyperparams(optax.scale)(step_size=1.0))
  mesh = state_lib.make_mesh()
  return optimizer, step_lib.compile_train_step(
      step_lib.make_train_step(config, forward, optimizer, mesh), mesh)


def with_learning_rate(opt_state: Any, lr: float) -> Any:
  """`opt_state` of `make_train_step`'s optimizer, scaled to peak at `lr`."""
  inner, scale = opt_state
  return inner, scale._replace(
      hyperparams={'step_size': jnp.asarray(lr, jnp.float32)})


def accuracy(forward: hk.TransformedWithState, params: Any, state: Any,
             data_config: Any) -> float:
  """Top-1 accuracy on the digits test split."""
  correct = total = 0
  predict = jax.jit(lambda p, s, x: forward.apply(
      p, s, None, x, is_training=False)[0].argmax(-1))
  for batch in data.build_eval(data_config, batch_size=512):
    pred = np.asarray(predict(params, state, batch['images']))
    mask = batch['mask']
    correct += int(np.sum((pred == batch['labels']) & mask))
    total += int(np.sum(mask))
  return correct / total


def unit_peak_optimizer(args: types.SimpleNamespace, clipping: float
                        ) -> optax.GradientTransformation:
  """The NFNet optimizer (AGC off when clipping is 0), peaking at lr 1."""
  config = train_optimizer.default_config()
  config.clipping = clipping
  # Peak lr = base_lr * batch / lr_batch_reference = 1.
  config.base_lr = 1.0
  config.lr_batch_reference = args.batch_size
  return train_optimizer.from_config(config, batch_size=args.batch_size,
                                     total_steps=args.steps,
                                     warmup_steps=args.warmup_steps)


def run(args: types.SimpleNamespace, lr: float, clipping: float,
        optimizer: optax.GradientTransformation, step: Any,
        init: tuple[Any, Any], forward: hk.TransformedWithState,
        data_config: Any) -> dict[str, Any]:
  """Trains one arm; returns its losses, divergence and test accuracy."""
  params, state = init
  train_state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=state,
      opt_state=with_learning_rate(optimizer.init(params), lr),
      ema_params=params, ema_state=state,
      rng=jax.random.PRNGKey(args.seed + 1))
  batches = data.build_train(data_config, batch_size=args.batch_size,
                             seed=args.seed)
  losses = []
  diverged_at = None
  start = time.time()
  for i in range(args.steps):
    batch = next(batches)
    batch = {'images': batch['images'], 'labels': batch['labels']}
    train_state, metrics = step(train_state, batch)
    loss = float(metrics['loss'])
    losses.append(loss)
    blew_up = not math.isfinite(loss) or loss > args.blowup * losses[0]
    if blew_up and diverged_at is None:
      diverged_at = i
    if not math.isfinite(loss):
      break
  seconds = time.time() - start
  finite = all(math.isfinite(l) for l in losses)
  tail = losses[-max(1, len(losses) // 10):]
  return {
      'lr': lr,
      'agc': clipping > 0,
      'clipping': clipping,
      'losses': [l if math.isfinite(l) else None for l in losses],
      'diverged': diverged_at is not None,
      'diverged_at_step': diverged_at,
      'initial_loss': losses[0],
      'final_loss': float(np.mean(tail)) if finite else None,
      'min_loss': float(np.nanmin(np.asarray(losses, np.float64))),
      'test_accuracy': accuracy(forward, train_state.params,
                                train_state.model_state, data_config)
                       if finite else None,
      'seconds': seconds,
  }


def plot(results: Sequence[dict[str, Any]], args: types.SimpleNamespace,
         path: str) -> None:
  """Loss curves, one panel per learning rate, AGC vs none."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lrs = sorted({r['lr'] for r in results})
  fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.6),
                           squeeze=False, sharey=True)
  for ax, lr in zip(axes[0], lrs):
    for r in results:
      if r['lr'] != lr:
        continue
      y = np.array([np.nan if l is None else l for l in r['losses']])
      label = (f"AGC λ={r['clipping']:g}" if r['agc'] else 'no clipping')
      if r['diverged']:
        label += f" (diverged, step {r['diverged_at_step']})"
      color = 'tab:blue' if r['agc'] else 'tab:red'
      ax.plot(np.arange(len(y)), y, label=label, color=color)
      if r['diverged']:
        ax.axvline(r['diverged_at_step'], color=color, ls=':', lw=1)
    ax.set_title(f'peak lr {lr:g}')
    ax.set_xlabel('step')
    ax.set_yscale('log')
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel('training loss')
  fig.suptitle(f'{args.model} width {args.width:g}, digits '
               f'{args.image_size}px, batch {args.batch_size}', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(args: types.SimpleNamespace) -> None:
  """Trains both arms at every learning rate; prints and writes the results."""
  lrs = [float(x) for x in args.lrs.split(',') if x]
  data_config = data.default_config('digits')
  data_config.image_size = args.image_size
  data_config.eval_image_size = args.image_size
  forward = hk.transform_with_state(models.create(
      args.model, num_classes=data.num_classes(data_config), width=args.width,
      stochdepth_rate=0.0, drop_rate=0.0))
  sample = next(data.build_train(data_config, batch_size=2, seed=args.seed))
  init = jax.jit(lambda rng, x: forward.init(rng, x, is_training=True))(
      jax.random.PRNGKey(args.seed), sample['images'])
  num_params = sum(x.size for x in jax.tree.leaves(init[0]))
  print(f'{args.model} width {args.width}: {num_params:,} parameters; '
        f'batch {args.batch_size}, {args.steps} steps, '
        f'{args.warmup_steps} warmup, {args.image_size}px')
  arms = {}
  for clipping in (args.clipping, 0.0):
    arms[clipping] = make_train_step(args, clipping, forward, data_config)
  results = []
  for lr in lrs:
    for clipping, (optimizer, step) in arms.items():
      r = run(args, lr, clipping, optimizer, step, init, forward,
              data_config)
      results.append(r)
      print(f"lr {lr:<6g} {'AGC' if r['agc'] else 'none':<4} "
            f"diverged={str(r['diverged']):<5} "
            f"at={str(r['diverged_at_step']):<5} "
            f"loss {r['initial_loss']:.3f} -> {r['final_loss']} "
            f"test acc {r['test_accuracy']} ({r['seconds']:.0f} s)",
            flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  record = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'args': vars(args),
      'num_params': num_params,
      'jax': jax.__version__,
      'devices': [str(d) for d in jax.devices()],
      'results': results,
  }
  with open(args.out + '.json', 'w') as f:
    json.dump(record, f, indent=1)
  plot(results, args, args.out + '.png')
  print(f'wrote {args.out}.json and {args.out}.png')


if __name__ == '__main__':
  host.reexec_with_huge_pages()
  _common.run_command_line(define_flags, main)
