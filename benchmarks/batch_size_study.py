r"""Top-1 error against per-device batch size: BN-, GN- and NF-ResNets.

The experiment of [GN] Wu & He 2018, Figure 1 (ResNet-50 on ImageNet, 8
workers: BN's error rises from 23.6% at 32 images per worker to 34.7% at 2,
GN's stays near 24.1%) and the argument of the NF papers ([NF-ResNet] Brock,
De, Smith 2021; [NFNet] Brock et al. 2021) that a network without
normalization does not depend on the batch at all. Here at digits scale:
three ResNets of one shape (bottleneck blocks, `--depth` per stage of
`--widths` x `--width`) that differ only in their normalization,

  BN-ResNet  'resnet50_bn': BatchNorm (decay 0.9), evaluated with its moving
             averages, as the model does;
  GN-ResNet  'resnet50_gn': GroupNorm (`--gn_groups`);
  NF-ResNet  'nf_resnet50': no normalization (Scaled WS, alpha/beta, skip
             gains at zero), no stochastic depth,

both normalized ones with gamma = 0 in each block's last normalization, as
in [GN] sec. 5.1. Each trains on the embedded digits (1437 training, 360
test images) through `nfnets.train.train_and_evaluate`, on one device, at
every per-device batch size of `--batch_sizes` for the same `--epochs`, with
the learning rate scaled linearly (`--base_lr` x B / 32, [GN] sec. 5.1 after
Goyal et al. 2017), momentum SGD, weight decay, no AGC, for `--seeds` seeds
(initialization and data order). Accuracy is kept off its ceiling by a short
schedule and strong random shifts.

  python -m benchmarks.batch_size_study             # ~20 min, 2 idle cores
  python -m benchmarks.batch_size_study --small     # the CI form, seconds

It prints a table of mean +- std top-1 error per model and batch size and
writes it, with every run, to `benchmarks/results/batch_size_study.json`, and
the plot to `docs/figures/batch_size_study.png`. Flags are absl's
(`--helpfull` lists them with JAX's `--jax_*` flags).
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import types
from typing import Any, Sequence

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from absl import flags
import jax
import ml_collections

from benchmarks import _common
from nfnets import configs
from nfnets.train import loop

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(_common.RESULTS_DIR, 'batch_size_study.json')
FIGURE = os.path.join(_ROOT, 'docs', 'figures', 'batch_size_study.png')

# Label -> (registered model, constructor arguments beyond the shared shape).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    'BN-ResNet': ('resnet50_bn', dict(zero_init_last_norm=True)),
    'GN-ResNet': ('resnet50_gn', dict(zero_init_last_norm=True)),
    'NF-ResNet': ('nf_resnet50', dict(stochdepth_rate=0.0)),
}
# The batch the learning rate is quoted at ([GN]: 32 images per worker).
_LR_BATCH = 32
_TRAIN_EXAMPLES = 1437

# --small: 1 seed, 2 batch sizes, a few steps of a one-stage model at 16 px.
_SMALL = dict(seeds=1, batch_sizes='4,2', num_steps=4, depth='1',
              widths='256', image_size=16)


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  define = _common.definer(flag_values)
  define('string', 'models', ','.join(MODELS), 'Comma-separated labels of '
         f'{sorted(MODELS)}.')
  define('string', 'batch_sizes', '32,16,8,4,2',
         'Comma-separated per-device batch sizes (one device).')
  define('integer', 'seeds', 3, 'Seeds per model and batch size.')
  define('float', 'epochs', 4.0, 'Training epochs of every run.')
  define('integer', 'num_steps', None,
         'Steps of every run instead of --epochs (for smoke runs).')
  define('float', 'base_lr', 0.1, f'Peak learning rate at batch {_LR_BATCH}.')
  define('float', 'warmup_epochs', 0.5, 'Linear warmup, then cosine to 0.')
  define('float', 'weight_decay', 1e-4, 'L2 on weights (not gains/biases).')
  define('string', 'depth', '1,1,1', 'Bottleneck blocks per stage.')
  define('string', 'widths', '256,512,1024', 'Stage output widths.')
  define('float', 'width', 0.25, 'Multiplier on every width.')
  define('integer', 'gn_groups', 8,
         'GroupNorm groups: 8 keeps >= 2 channels per group in the '
         "narrowest layers, as G = 32 does in ResNet-50's.")
  define('integer', 'image_size', 32, 'Train and test px per side.')
  define('integer', 'max_shift', 6, 'Random translation in px (train).')
  define('bool', 'small', False,
         'The CI form: ' + ', '.join(f'{k}={v}' for k, v in _SMALL.items()))
  define('string', 'results', RESULTS, 'JSON file the table is written to.')
  define('string', 'figure', FIGURE, 'PNG the plot is written to.')
  define('string', 'workdir', None, 'Where runs write (default: a temporary '
         'directory, removed at the end).')


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  return finish_args(_common.parse_flags(define_flags, argv))


def finish_args(args: types.SimpleNamespace) -> types.SimpleNamespace:
  """Applies --small and parses the list flags."""
  if args.small:
    for key, value in _SMALL.items():
      setattr(args, key, value)
  unknown = sorted(set(args.models.split(',')) - set(MODELS))
  if unknown:
    raise flags.Error(f'Unknown --models {unknown}; known: {sorted(MODELS)}.')
  args.models = args.models.split(',')
  for name in ('batch_sizes', 'depth', 'widths'):
    setattr(args, name, tuple(int(v) for v in getattr(args, name).split(',')))
  return args


def run_config(args: types.SimpleNamespace, label: str, batch_size: int,
               seed: int) -> ml_collections.ConfigDict:
  """The runner's config of one run: the digits recipe, overridden.

  Every run has the same epochs (or steps) and optimizer; only the model,
  the batch and its linearly scaled learning rate, and the seed differ.
  """
  config = configs.digits_config()
  name, kwargs = MODELS[label]
  config.model.name = name
  kwargs = dict(kwargs, depth=args.depth, widths=args.widths,
                width=args.width, drop_rate=0.0)
  if label == 'GN-ResNet':
    kwargs['groups'] = args.gn_groups
  config.model.kwargs = ml_collections.ConfigDict(kwargs)
  config.data.image_size = config.data.eval_image_size = args.image_size
  config.data.max_shift = args.max_shift
  tc = config.training
  tc.batch_size = batch_size
  tc.seed = seed
  if args.num_steps:
    tc.num_steps = args.num_steps
  else:
    tc.num_steps = round(args.epochs * _TRAIN_EXAMPLES / batch_size)
  # The weights and BN statistics as trained are what is evaluated.
  tc.ema_decay = 0.0
  tc.label_smoothing = 0.0
  tc.log_every = tc.num_steps  # Once, at the end: no host syncs in between.
  config.eval.every_steps = 0  # At the end only.
  config.checkpoint.every_steps = 0
  config.checkpoint.max_to_keep = 1
  opt = config.optimizer
  opt.base_lr = args.base_lr  # Peak LR = base_lr x B / 32.
  opt.lr_batch_reference = _LR_BATCH
  opt.nesterov = False
  opt.momentum = 0.9
  opt.weight_decay = args.weight_decay
  opt.clipping = 0.0
  # Warmup in epochs like the rest of the schedule; at most a quarter of a
  # smoke run.
  opt.warmup_steps = min(
      round(args.warmup_epochs * _TRAIN_EXAMPLES / batch_size),
      tc.num_steps // 4)
  opt.schedule = 'cosine'
  return config


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and sample std of top-1 error per (model, batch), in run order."""
  groups: dict[tuple[str, int], list[float]] = {}
  for r in runs:
    groups.setdefault((r['model'], r['batch_size']), []).append(
        r['top1_error'])
  return [dict(model=m, batch_size=b, n=len(e), mean=statistics.fmean(e),
               std=statistics.stdev(e) if len(e) > 1 else 0.0)
          for (m, b), e in groups.items()]


def format_table(table: Sequence[dict[str, Any]]) -> str:
  """Rows of models, columns of batch sizes: 'mean +- std' error in %."""
  batches = sorted({t['batch_size'] for t in table}, reverse=True)
  models = list(dict.fromkeys(t['model'] for t in table))
  cell = {(t['model'], t['batch_size']): t for t in table}
  head = f'{"top-1 error (%)":<16}' + ''.join(f'{f"B={b}":>16}'
                                               for b in batches)
  lines = [head]
  for m in models:
    row = f'{m:<16}'
    for b in batches:
      t = cell.get((m, b))
      row += (f'{100 * t["mean"]:>9.1f} +- {100 * t["std"]:<4.1f}' if t
              else f'{"-":>16}')
    lines.append(row)
  return '\n'.join(lines)


def plot(table: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """Top-1 error (%) against batch size, mean +- std over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for m in dict.fromkeys(t['model'] for t in table):
    rows = sorted((t for t in table if t['model'] == m),
                  key=lambda t: -t['batch_size'])
    ax.errorbar([t['batch_size'] for t in rows],
                [100 * t['mean'] for t in rows],
                yerr=[100 * t['std'] for t in rows], marker='o', capsize=3,
                label=m)
  ax.set_xscale('log', base=2)
  ax.invert_xaxis()  # As [GN] Figure 1: the batch shrinks to the right.
  batches = sorted({t['batch_size'] for t in table})
  ax.set_xticks(batches, [str(b) for b in batches])
  ax.set_xlabel('images per device (batch size)')
  ax.set_ylabel('test top-1 error (%)')
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _load() -> dict[str, float]:
  try:
    return dict(zip(('load1', 'load5', 'load15'), os.getloadavg()))
  except OSError:  # Not on every platform.
    return {}


def run(args: types.SimpleNamespace) -> dict[str, Any]:
  """Trains every (model, batch, seed); returns and writes the record."""
  start, load_before = time.perf_counter(), _load()
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    root = args.workdir or tmp
    for seed in range(args.seeds):
      for label in args.models:
        for batch in args.batch_sizes:
          config = run_config(args, label, batch, seed)
          workdir = os.path.join(root, f'{label}_b{batch}_s{seed}')
          t0 = time.perf_counter()
          final = loop.train_and_evaluate(config, workdir)
          runs.append(dict(
              model=label, batch_size=batch, seed=seed,
              steps=config.training.num_steps,
              peak_lr=args.base_lr * batch / _LR_BATCH,
              top1_error=1.0 - final['eval/top1'],
              train_loss=final.get('train/loss'),
              wall_s=round(time.perf_counter() - t0, 2)))
          print(f'{label} B={batch} seed={seed}: '
                f'{100 * runs[-1]["top1_error"]:.1f}% error, '
                f'{runs[-1]["wall_s"]:.0f} s', flush=True)
  table = summarize(runs)
  settings = {k: v for k, v in vars(args).items()
              if k not in ('results', 'figure', 'workdir')}
  record = dict(
      timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      machine=_common.machine_description(), settings=settings,
      wall_s=round(time.perf_counter() - start, 1),
      load_before=load_before, load_after=_load(), table=table, runs=runs)
  text = format_table(table)
  print(text)
  print(f'{len(runs)} runs in {record["wall_s"]:.0f} s; load average '
        f'{load_before.get("load1", float("nan")):.2f} before, '
        f'{record["load_after"].get("load1", float("nan")):.2f} after.')
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write('\n')
  length = (f'{args.num_steps} steps' if args.num_steps
            else f'{args.epochs:g} epochs')
  plot(table, args.figure,
       f'digits, {args.image_size} px, {length}, LR {args.base_lr:g} x B/32, '
       f'{args.seeds} seed{"s" if args.seeds > 1 else ""}')
  return record


def main(args: types.SimpleNamespace) -> dict[str, Any]:
  """`run`, with a persistent compilation cache for the command line.

  The seeds of one (model, batch) compile the same programs; the cache
  compiles them once per study.
  """
  if jax.config.jax_compilation_cache_dir is not None:
    return run(finish_args(args))
  with tempfile.TemporaryDirectory(prefix='batch_size_study_jit_') as cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    return run(finish_args(args))


if __name__ == '__main__':
  _common.run_command_line(define_flags, main)
