r"""Test accuracy of high-order residual stacking at equal parameters.

[HO-ResNet] Luo et al. 2021 (arXiv 2103.15244) regroup a CIFAR ResNet's
residual sub-blocks into the steps of a higher-order Runge-Kutta scheme and
report, at equal parameters, +2.15 points of CIFAR-10 accuracy for ResNet-30
and +2.35 for ResNet-58. Here at digits scale: the network of
`nfnets.models.ho_resnet` with `--sub_blocks` m pre-activation sub-blocks per
stage, grouped as

  euler     m blocks of 1 sub-block per stage (the plain ResNet),
  midpoint  m / 2 blocks of 2,
  rk4       m / 4 blocks of 4,
  rk8       m / 14 blocks of 14 (needs --sub_blocks=14),

so every scheme has the same layers and parameters (m = 4: 366,842, the
26-layer networks `ho_resnet26_{euler,midpoint,rk4}`). Each trains on a
fixed class-balanced subset of `--train_examples` of the 1437 digits
training images (`nfnets.data.digits.train_subset`) with random shifts, and
is evaluated on all 360 test images. Few examples keep the accuracy off its
ceiling: a one-seed pilot of the three schemes at 200, 100 and 50 images
averaged 95.8%, 90.8% and 85.1% test top-1, hence 50 (5 per class). The
optimizer is the HO-ResNet CIFAR recipe's (momentum SGD, learning rate 0.1
at batch 128 scaled linearly, cosine to 0 without warmup, weight decay 5e-4
on weights and BatchNorm parameters, no label smoothing), with an EMA of the
weights (decay 0.99) evaluated beside them; the runner's own train and eval
steps (`nfnets.train.step`) do the work. Every scheme runs with the same
`--seeds` seeds; a seed sets the initialization and the data order, and a
rerun reproduces every accuracy exactly on the same machine.

`--nopost_activation` drops the ReLU the released code applies after each
block's sum, so the blocks compose as plain Runge-Kutta steps: with it on,
Euler [4, 4, 4] has 12 ReLUs on the residual stream and RK4 [1, 1, 1] 3.

  python -m benchmarks.ho_stacking_study            # 8 min, 2 shared cores
  python -m benchmarks.ho_stacking_study --nopost_activation \
      --results=benchmarks/results/ho_stacking_study_no_post_relu.json \
      --figure=docs/figures/ho_stacking_study_no_post_relu.png
  python -m benchmarks.ho_stacking_study --small    # the CI form, seconds

It prints a table of mean +- std test top-1 per scheme (raw and EMA weights)
with the difference to the first scheme, its standard error and Welch's
t-test p-value, and writes it with every run to
`benchmarks/results/ho_stacking_study.json` and the plot to
`docs/figures/ho_stacking_study.png`. Flags are absl's (`--helpfull` lists
them with JAX's `--jax_*` flags).
"""
from __future__ import annotations

import datetime
import functools
import json
import math
import os
import statistics
import sys
import time
import types
from typing import Any, Optional, Sequence

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from absl import flags
import jax
import ml_collections
import numpy as np

from benchmarks import _common
from nfnets import configs
from nfnets import errors
from nfnets.data import digits
from nfnets.layers import high_order
from nfnets.train import config as config_lib
from nfnets.train import state as state_lib
from nfnets.train import step as step_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(_common.RESULTS_DIR, 'ho_stacking_study.json')
FIGURE = os.path.join(_ROOT, 'docs', 'figures', 'ho_stacking_study.png')

# Every scheme is built from this registered network with its own
# `stacking` and `depth`; the variant only supplies the defaults.
_MODEL = 'ho_resnet26_euler'
# The CIFAR recipe's learning rate is quoted at batch 128; scaled linearly
# to the run's batch.
_LR_BATCH = 128
_EVAL_BATCH = 120
# Per-run metrics the table summarizes.
METRICS = ('top1', 'ema_top1', 'train_loss', 'wall_s')

# --small: 2 seeds, 2 schemes, a few steps of a one-stage network at 8 px.
_SMALL = dict(seeds=2, schemes='euler,midpoint', sub_blocks=2, widths='8',
              steps=3, batch_size=8, train_examples=40, image_size=8)


class StudyFlagError(errors.UserError, flags.Error):
  """Flag values that do not make a study (the command line prints one
  line)."""


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  define = _common.definer(flag_values)
  define('string', 'schemes', 'euler,midpoint,rk4', 'Comma-separated keys '
         'of nfnets.layers.high_order.TABLEAUX; the first is the baseline '
         'the others are compared with.')
  define('integer', 'sub_blocks', 4, 'Sub-blocks per stage (m); a scheme '
         'of s stages gets m / s blocks per stage (6 m + 2 layers).')
  define('string', 'widths', '16,32,64', 'Comma-separated stage widths '
         "(the released code's three by default), non-decreasing.")
  define('integer', 'stem_stride', 2, "Stem conv stride (2: the released "
         "code's; 1: He et al.'s CIFAR layout, 4x the multiply-adds).")
  define('bool', 'post_activation', True, "ReLU after each block's sum "
         "(the released code's); off, blocks compose as plain RK steps and "
         'every scheme has one final ReLU.')
  define('integer', 'seeds', 8, 'Seeds per scheme (the same for each).')
  define('integer', 'train_examples', 50, 'Training images: a fixed '
         'class-balanced subset of the 1437 (5 per class by default).')
  define('integer', 'steps', 300, 'Steps of every run.')
  define('integer', 'batch_size', 32, 'Training batch.')
  define('float', 'base_lr', 0.1, f'Peak learning rate at batch {_LR_BATCH} '
         '(scaled linearly).')
  define('float', 'weight_decay', 5e-4, 'L2 on weights and BatchNorm '
         'parameters (not biases).')
  define('float', 'ema_decay', 0.99, 'Decay of the weights\' EMA, also '
         'evaluated.')
  define('integer', 'image_size', 16, 'Train and test px per side (8x8 '
         'digits upsampled).')
  define('integer', 'max_shift', 2, 'Random translation in px (train).')
  define('bool', 'small', False,
         'The CI form: ' + ', '.join(f'{k}={v}' for k, v in _SMALL.items()))
  define('string', 'results', RESULTS, 'JSON file the table is written to.')
  define('string', 'figure', FIGURE, 'PNG the plot is written to.')


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  return finish_args(_common.parse_flags(define_flags, argv))


def finish_args(args: types.SimpleNamespace) -> types.SimpleNamespace:
  """Applies --small and checks that every scheme fits --sub_blocks."""
  if args.small:
    for key, value in _SMALL.items():
      setattr(args, key, value)
  args.schemes = [s.strip() for s in args.schemes.split(',') if s.strip()]
  if len(set(args.schemes)) != len(args.schemes) or not args.schemes:
    raise StudyFlagError(f'--schemes must name distinct schemes; got '
                      f'{args.schemes}.')
  for scheme in args.schemes:
    stages = high_order.get_tableau(scheme).num_stages  # Names the nearest.
    if args.sub_blocks % stages:
      raise StudyFlagError(
          f'--sub_blocks={args.sub_blocks} is not a multiple of the '
          f'{stages} stages of {scheme!r}; use a common multiple of the '
          "schemes' stages (e.g. 4 for euler, midpoint and rk4; 14 for "
          'euler and rk8).')
  args.widths = tuple(int(w) for w in str(args.widths).split(','))
  return args


def run_config(args: types.SimpleNamespace, scheme: str,
               seed: int) -> ml_collections.ConfigDict:
  """The runner's config of one run: the digits recipe, overridden.

  Only the scheme (and with it the blocks per stage) and the seed differ
  between runs.
  """
  config = configs.digits_config()
  config.model.name = _MODEL
  blocks = args.sub_blocks // high_order.get_tableau(scheme).num_stages
  config.model.kwargs = ml_collections.ConfigDict(dict(
      stacking=scheme, depth=(blocks,) * len(args.widths),
      widths=args.widths, stem_stride=args.stem_stride,
      post_activation=args.post_activation))
  config.data.image_size = config.data.eval_image_size = args.image_size
  config.data.max_shift = args.max_shift
  tc = config.training
  tc.batch_size = args.batch_size
  tc.seed = seed
  tc.num_steps = args.steps
  tc.ema_decay = args.ema_decay
  tc.label_smoothing = 0.0
  tc.compute_dtype = 'float32'
  config.eval.batch_size = _EVAL_BATCH
  opt = config.optimizer
  opt.name = 'sgd'
  opt.base_lr = args.base_lr
  opt.lr_batch_reference = _LR_BATCH
  opt.momentum = 0.9
  opt.nesterov = False
  opt.weight_decay = args.weight_decay
  # PyTorch's SGD, as the released code uses it, decays BatchNorm's too.
  opt.weight_decay_norm_params = True
  opt.clipping = 0.0  # No AGC: a BatchNorm network.
  opt.schedule = 'cosine'
  opt.end_lr = 0.0
  opt.warmup_steps = 0
  config_lib.validate_config(config, num_devices=1)
  return config


class _Scheme:
  """One scheme's model, optimizer and jitted steps, shared by its seeds."""

  def __init__(self, config: ml_collections.ConfigDict):
    """Builds and jits from `config`; its seed is not used."""
    self.model = state_lib.build_model(config)
    self.optimizer, _ = state_lib.build_optimizer(config)
    self._init = jax.jit(functools.partial(
        state_lib.init_train_state, config, self.model, self.optimizer))
    mesh = state_lib.make_mesh()
    self.train_step = step_lib.compile_train_step(
        step_lib.make_train_step(config, self.model, self.optimizer, mesh),
        mesh)
    self.eval_step = step_lib.compile_eval_step(
        step_lib.make_eval_step(config, self.model), mesh)

  def init(self, seed: int) -> state_lib.TrainState:
    """The runner's fresh state for `seed`."""
    # As the runner initializes (`nfnets.train.loop`), so a seed here is
    # the same network as that seed's run of the runner.
    with jax.threefry_partitionable(False):
      return self._init(jax.random.PRNGKey(seed))


def train_one(scheme: _Scheme, config: ml_collections.ConfigDict,
              train_examples: int) -> dict[str, Any]:
  """Trains one run and evaluates it on the whole test split.

  Returns:
    'top1' and 'ema_top1' (test fractions of the raw and EMA weights),
    'test_loss', 'train_loss' and 'train_top1' (means over the last epoch's
    steps), 'params', 'step_ms' (mean train step after the first) and
    'wall_s' (the whole run: compilation on a scheme's first seed, the
    steps, the data and the evaluation).
  """
  t0 = time.perf_counter()
  tc = config.training
  state = scheme.init(tc.seed)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  batches = digits.build_train(config.data, batch_size=tc.batch_size,
                               seed=tc.seed, train_examples=train_examples)
  history = []
  for step in range(tc.num_steps):
    state, metrics = scheme.train_step(state, next(batches))
    history.append(metrics)
    if step == 0:
      # The step time excludes the first step, which may compile.
      jax.block_until_ready(metrics)
      t1 = time.perf_counter()
  # The only read of training values, after the last step.
  epoch = max(1, min(len(history), -(-train_examples // tc.batch_size)))
  last = jax.device_get(history[-epoch:])
  step_s = (time.perf_counter() - t1) / max(1, tc.num_steps - 1)
  totals: dict[str, float] = {}
  for batch in digits.build_eval(config.data,
                                 batch_size=config.eval.batch_size):
    for prefix, p, s in (('', state.params, state.model_state),
                         ('ema_', state.ema_params, state.ema_state)):
      for key, value in jax.device_get(scheme.eval_step(p, s, batch)).items():
        totals[prefix + key] = totals.get(prefix + key, 0.0) + float(value)
  count = totals['count']
  return dict(
      top1=totals['top1'] / count, ema_top1=totals['ema_top1'] / count,
      test_loss=totals['loss'] / count,
      train_loss=float(np.mean([m['loss'] for m in last])),
      train_top1=float(np.mean([m['top1'] for m in last])),
      params=int(params), step_ms=round(1000 * step_s, 2),
      wall_s=round(time.perf_counter() - t0, 2))


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per scheme, in run order: n and each metric's mean and sample std."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in runs:
    groups.setdefault(r['scheme'], []).append(r)
  table = []
  for scheme, rs in groups.items():
    row: dict[str, Any] = dict(scheme=scheme, n=len(rs),
                               params=rs[0]['params'])
    for m in METRICS:
      values = [r[m] for r in rs]
      row[m] = dict(mean=statistics.fmean(values),
                    std=statistics.stdev(values) if len(values) > 1 else 0.0)
    table.append(row)
  return table


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Optional[float]]:
  """mean(a) - mean(b), its standard error, and Welch's t, dof and p.

  The standard error is se = sqrt(s_a^2 / n_a + s_b^2 / n_b) with sample
  variances, t = diff / se, the dof Welch-Satterthwaite's, and p the
  two-sided tail of Student's t at that dof (what
  `scipy.stats.ttest_ind(a, b, equal_var=False)` computes). se is None
  with fewer than two values a side, and t, dof and p also when se = 0.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  diff = statistics.fmean(a) - statistics.fmean(b)
  out: dict[str, Optional[float]] = dict(diff=diff, se=None, t=None,
                                         dof=None, p=None)
  if len(a) < 2 or len(b) < 2:
    return out
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  out['se'] = math.sqrt(va + vb)
  if out['se'] == 0:
    return out
  out['t'] = diff / out['se']
  out['dof'] = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) +
                                 vb ** 2 / (len(b) - 1))
  out['p'] = float(2 * stats.t.sf(abs(out['t']), out['dof']))
  return out


def compare(runs: Sequence[dict[str, Any]], baseline: str,
            metrics: Sequence[str] = ('top1', 'ema_top1')
            ) -> list[dict[str, Any]]:
  """`welch(scheme, baseline)` of each metric for every other scheme."""
  by_scheme: dict[str, list[dict[str, Any]]] = {}
  for r in runs:
    by_scheme.setdefault(r['scheme'], []).append(r)
  base = by_scheme[baseline]
  return [dict(scheme=s, baseline=baseline,
               **{m: welch([r[m] for r in rs], [r[m] for r in base])
                  for m in metrics})
          for s, rs in by_scheme.items() if s != baseline]


def _pm(stat: dict[str, float], scale: float = 100.0,
        decimals: int = 1) -> str:
  return (f'{scale * stat["mean"]:.{decimals}f} +- '
          f'{scale * stat["std"]:.{decimals}f}')


def _p(value: Optional[float]) -> str:
  if value is None:
    return '-'
  return '<0.001' if value < 0.001 else f'{value:.3f}'


def format_table(table: Sequence[dict[str, Any]],
                 comparisons: Sequence[dict[str, Any]]) -> str:
  """One row per scheme: accuracies in %, the difference to the baseline
  +- its standard error (points) and Welch's p, train loss, seconds."""
  diffs = {c['scheme']: c for c in comparisons}
  head = (f'{"scheme":<10}{"n":>3}{"params":>10}{"top-1 (%)":>15}'
          f'{"vs base":>15}{"p":>7}{"EMA top-1 (%)":>16}{"vs base":>15}'
          f'{"p":>7}{"train loss":>16}{"s/run":>7}')
  lines = [head]
  for t in table:
    row = (f'{t["scheme"]:<10}{t["n"]:>3}{t["params"]:>10,}'
           f'{_pm(t["top1"]):>15}')
    for m in ('top1', 'ema_top1'):
      c = diffs.get(t['scheme'], {}).get(m)
      if m == 'ema_top1':
        row += f'{_pm(t["ema_top1"]):>16}'
      if c is None:
        row += f'{"(baseline)":>15}{"":>7}'
      else:
        se = '-' if c['se'] is None else f'{100 * c["se"]:.1f}'
        diff = f'{100 * c["diff"]:+.1f} +- {se}'
        row += f'{diff:>15}{_p(c["p"]):>7}'
    row += (f'{_pm(t["train_loss"], 1.0, 3):>16}'
            f'{t["wall_s"]["mean"]:>7.0f}')
    lines.append(row)
  return '\n'.join(lines)


def plot(runs: Sequence[dict[str, Any]], table: Sequence[dict[str, Any]],
         comparisons: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """Test top-1 (%) per scheme: seeds as dots, mean +- std as a bar.

  Two panels, the raw and the EMA weights; each scheme's label carries
  Welch's p against the baseline.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  schemes = [t['scheme'] for t in table]
  diffs = {c['scheme']: c for c in comparisons}
  fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
  for ax, metric, name in zip(axes, ('top1', 'ema_top1'),
                              ('raw weights', 'EMA weights')):
    for i, t in enumerate(table):
      values = [100 * r[metric] for r in runs if r['scheme'] == t['scheme']]
      # Spread the seeds sideways so equal values stay visible.
      offsets = np.linspace(-0.12, 0.12, len(values))
      ax.scatter(i + offsets - 0.1, values, s=18, alpha=0.7,
                 color=f'C{i}', zorder=3)
      ax.errorbar(i + 0.15, 100 * t[metric]['mean'],
                  yerr=100 * t[metric]['std'], fmt='s', color='k',
                  capsize=5, zorder=4)
    labels = []
    for s in schemes:
      c = diffs.get(s, {}).get(metric)
      labels.append(s if c is None else f'{s}\np = {_p(c["p"])}')
    ax.set_xticks(range(len(schemes)), labels)
    ax.set_xlim(-0.6, len(schemes) - 0.4)
    ax.set_title(f'test top-1, {name}', fontsize=9)
    ax.grid(axis='y', alpha=0.3)
  axes[0].set_ylabel('test top-1 (%)')
  fig.suptitle(f'{title}\ndots: seeds; squares and bars: mean ± std; '
               f"p: Welch's t-test against {schemes[0]}", fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def title(args: types.SimpleNamespace) -> str:
  """The figure's title: the setting of the runs."""
  seeds = f'{args.seeds} seed{"s" if args.seeds > 1 else ""}'
  relu = ('a ReLU after each sum' if args.post_activation
          else 'no ReLU after the sums')
  return (f'digits: {args.train_examples} training images, '
          f'{args.image_size} px, {args.steps} steps of {args.batch_size}, '
          f'{seeds}\n{args.sub_blocks} sub-blocks per stage, widths '
          f'{",".join(map(str, args.widths))}, {relu}')


def _load() -> dict[str, float]:
  try:
    return dict(zip(('load1', 'load5', 'load15'), os.getloadavg()))
  except OSError:  # Not on every platform.
    return {}


def run(args: types.SimpleNamespace) -> dict[str, Any]:
  """Trains every (seed, scheme); returns and writes the record."""
  start, load_before = time.perf_counter(), _load()
  runs, built = [], {}
  # Seeds outer: a change of machine load falls on every scheme alike.
  for seed in range(args.seeds):
    for scheme in args.schemes:
      config = run_config(args, scheme, seed)
      if scheme not in built:
        built[scheme] = _Scheme(config)
      result = train_one(built[scheme], config, args.train_examples)
      runs.append(dict(scheme=scheme, seed=seed,
                       depth=list(config.model.kwargs.depth),
                       steps=args.steps, **result))
      print(f'{scheme} seed={seed}: top-1 {100 * result["top1"]:.1f}% '
            f'(EMA {100 * result["ema_top1"]:.1f}%), train loss '
            f'{result["train_loss"]:.3f}, {result["wall_s"]:.0f} s',
            flush=True)
  table = summarize(runs)
  comparisons = compare(runs, args.schemes[0])
  settings = {k: v for k, v in vars(args).items()
              if k not in ('results', 'figure')}
  record = dict(
      timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      machine=_common.machine_description(), settings=settings,
      peak_lr=args.base_lr * args.batch_size / _LR_BATCH,
      wall_s=round(time.perf_counter() - start, 1),
      load_before=load_before, load_after=_load(), table=table,
      comparisons=comparisons, runs=runs)
  print(format_table(table, comparisons))
  print(f'{len(runs)} runs in {record["wall_s"]:.0f} s; load average '
        f'{load_before.get("load1", float("nan")):.2f} before, '
        f'{record["load_after"].get("load1", float("nan")):.2f} after.')
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write('\n')
  plot(runs, table, comparisons, args.figure, title(args))
  return record


def main(args: types.SimpleNamespace) -> dict[str, Any]:
  """The command line's entry: `run` on the parsed flags.

  Each scheme's steps are jitted once and serve all its seeds.
  """
  return run(finish_args(args))


if __name__ == '__main__':
  _common.run_command_line(define_flags, main)
