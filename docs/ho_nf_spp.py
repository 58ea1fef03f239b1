r"""Signal propagation of high-order stacked NF-ResNets: prediction vs measure.

  .venv/bin/python docs/ho_nf_spp.py            # 1-3 min on 2 CPU cores
  .venv/bin/python docs/ho_nf_spp.py --image_size 64 --out /tmp/ho.png

An NF-ResNet of four stages of 28 sub-blocks (112 in all; widths 256..2048
times 1/4, alpha 0.2) at initialization with unit skip gains, fed unit
Gaussian noise, stacked as Euler, Midpoint and RK4 steps (`stacking=`), each
under both beta rules (`ho_variance='scheme'` and `'euler'`). All runs share
one parameter tree (stacking regroups the same sub-blocks). The statistics
are those of `nfnets.spp.signal_propagation`, one entry per sub-block: the
residual stream after it (the next sub-block's input, or the block's output
after the last) and its residual branch.

Per scheme (columns) the figure draws
  * top: the average channel variance of the stream, measured (solid) and
    predicted by each rule's bookkeeping (`BlockPlan.expected_var`, dashed);
    for the Euler rule also the scheme's formula propagated with that rule's
    betas (dotted), which is what its stream follows;
  * bottom: the residual branches' average channel variance, which the
    scheme rule keeps near one (each sub-block's input scaled by its own
    expected std) and the Euler rule does not.

The default 224 px keeps the last stage at 7x7, where zero padding of the
3x3 convolutions costs the branches about a fifth of their variance (at
64 px the last stage is 2x2 and the branches lose more than half of it, the
plain NF-ResNet's prediction included). Derivation: docs/high_order_nf.md.

Writes docs/figures/ho_nf_spp.png and .csv and prints, per scheme and rule,
the largest relative error of the prediction, and per scheme how far the
stage inputs' variance is from the sum of its parts' (the cross terms the
independence assumption drops).
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import haiku as hk
import jax
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from nfnets import spp
from nfnets.layers import high_order
from nfnets.models import common
from nfnets.models import registry
from nfnets.models import stacking

_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'figures',
                    'ho_nf_spp.png')
_MODEL = 'nf_resnet50'
_SCHEMES = ('euler', 'midpoint', 'rk4')
_RULES = ('scheme', 'euler')
_LABELS = {'euler': 'Euler', 'midpoint': 'Midpoint', 'rk4': 'RK4',
           'rk8': 'RK8'}


def propagate(plans: list[common.BlockPlan],
              tableau: high_order.ButcherTableau,
              alpha: float) -> np.ndarray:
  """The scheme's variance formula under the plans' betas, whatever they are.

  A branch whose input z is scaled by beta has variance beta^2 Var(z) (the
  scaled ReLU is positively homogeneous), so Var(k) = alpha^2 beta^2 Var(z);
  a transition's shortcut, a conv of act(x) * beta, has beta^2 Var(x).
  With the scheme rule's betas this is the plans' `expected_var`.

  Returns:
    The expected stream variance after every sub-block [num_sub_blocks].
  """
  s = tableau.num_stages
  var_x, out = 1.0, []
  for first in range(0, len(plans), s):
    block = plans[first:first + s]
    var_s = var_x * block[0].beta ** 2 if block[0].first_in_stage else var_x
    var_k, var_z = [], var_x
    for i, plan in enumerate(block):
      if i > 0:
        var_z = var_s + sum(a ** 2 * v for a, v in zip(tableau.a[i], var_k))
        out.append(var_z)
      var_k.append(alpha ** 2 * plan.beta ** 2 * var_z)
    var_x = var_s + sum(b ** 2 * v for b, v in zip(tableau.b, var_k))
    out.append(var_x)
  return np.array(out)


def cross_terms(stats: spp.SPP, plans: list[common.BlockPlan],
                tableau: high_order.ButcherTableau,
                alpha: float) -> np.ndarray:
  """Var(z) / (Var(s) + sum_j a_ij^2 Var(k_j)) - 1 at every stage input and
  output of the identity blocks, from measured variances only.

  Transition blocks are left out: their shortcut (a projection) is not
  recorded.
  """
  s = tableau.num_stages
  out = []
  for first in range(s, len(plans), s):
    if plans[first].first_in_stage:
      continue
    var_s = stats.variance[first - 1]
    var_k = alpha ** 2 * stats.residual_variance[first:first + s]
    for i in range(1, s + 1):
      coefs = tableau.a[i] if i < s else tableau.b
      parts = var_s + sum(c ** 2 * v for c, v in zip(coefs, var_k))
      out.append(stats.variance[first + i - 1] / parts - 1)
  return np.array(out)


def measure(args: argparse.Namespace) -> list[dict]:
  """Runs every (scheme, rule); returns one record per run."""
  overrides = dict(depth=(args.stage_depth,) * 4, width=args.width,
                   alpha=args.alpha, stochdepth_rate=0.0, drop_rate=0.0)
  images = jax.random.normal(
      jax.random.PRNGKey(args.seed),
      (args.batch_size, args.image_size, args.image_size, 3))
  plain = hk.transform_with_state(registry.create(_MODEL, **overrides))
  params, state = plain.init(jax.random.PRNGKey(args.seed + 1), images)
  params = spp.set_skip_gains(params, 1.0)
  records = []
  for scheme in args.schemes:
    tableau = high_order.get_tableau(scheme)
    for rule in _RULES if tableau.num_stages > 1 else _RULES[:1]:
      start = time.time()
      stats = spp.signal_propagation(
          _MODEL, images, params=params, state=state, stacking=scheme,
          ho_variance=rule, **overrides)
      plans = stacking.block_plans(overrides['depth'], args.alpha, 0.0,
                                   tableau, rule)
      records.append(dict(
          scheme=scheme, rule=rule, stats=stats, plans=plans,
          predicted=np.array([p.expected_var for p in plans]),
          propagated=propagate(plans, tableau, args.alpha),
          cross=cross_terms(stats, plans, tableau, args.alpha),
          seconds=time.time() - start))
  return records


def write_csv(path: str, records: list[dict]) -> None:
  """One row per (scheme, rule, sub-block m): m's beta, and the stream after
  m (`position`: the input of the next stage, or the block output) as
  predicted by the rule, by the scheme's formula at the rule's betas, and
  as measured, with m's branch variance."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('scheme', 'rule', 'sub_block', 'stage', 'position',
                     'sub_block_beta', 'predicted_variance', 'propagated_variance',
                     'variance', 'mean_sq', 'residual_variance'))
    for r in records:
      for m, plan in enumerate(r['plans']):
        last = plan.sub_block == plan.num_sub_blocks - 1
        writer.writerow([
            r['scheme'], r['rule'], m, plan.stage,
            'block_output' if last else f'stage_input_{plan.sub_block + 2}',
            f'{plan.beta:.6g}', f'{r["predicted"][m]:.6g}',
            f'{r["propagated"][m]:.6g}', f'{r["stats"].variance[m]:.6g}',
            f'{r["stats"].mean_sq[m]:.6g}',
            f'{r["stats"].residual_variance[m]:.6g}'])


def plot(records: list[dict], schemes: list[str], path: str,
         title: str) -> None:
  """Stream variance (top) and branch variance (bottom), a column per scheme."""
  fig, axes = plt.subplots(2, len(schemes), figsize=(4.6 * len(schemes), 7),
                           sharex=True, squeeze=False)
  colors = {'scheme': 'tab:blue', 'euler': 'tab:red'}
  for col, scheme in enumerate(schemes):
    top, bottom = axes[0, col], axes[1, col]
    for r in records:
      if r['scheme'] != scheme:
        continue
      c, x = colors[r['rule']], np.arange(len(r['predicted']))
      rule = f'{r["rule"]} rule'
      top.plot(x, r['stats'].variance, color=c, lw=1.3,
               label=f'{rule}: measured')
      top.plot(x, r['predicted'], color=c, lw=1.1, ls='--',
               label=f'{rule}: its prediction')
      if r['rule'] == 'euler':
        top.plot(x, r['propagated'], color='k', lw=0.9, ls=':',
                 label='scheme formula, Euler-rule betas')
      bottom.plot(x, r['stats'].residual_variance, color=c, lw=1.2,
                  label=f'{rule}: measured')
    bottom.axhline(1.0, color='gray', lw=0.8, ls='--')
    if max(np.max(r['stats'].variance) for r in records
           if r['scheme'] == scheme) > 100:
      top.set_yscale('log')  # RK8's large stage coefficients.
    top.set_title(f'{_LABELS.get(scheme, scheme)}: stream variance')
    bottom.set_title(f'{_LABELS.get(scheme, scheme)}: residual branch '
                     'variance')
    bottom.set_xlabel('Sub-block')
    for ax in (top, bottom):
      ax.grid(alpha=0.3)
    top.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(records: list[dict]) -> None:
  """Prints the largest relative errors (overall and per stage) of each
  rule's prediction and of the propagated formula, and the cross terms."""
  print(f'{"scheme":9s} {"rule":7s} {"max|rel err|":>12s} {"per stage":>24s}'
        f' {"propagated":>10s} {"cross max":>9s} {"mean":>8s} {"s":>5s}')
  for r in records:
    rel = np.abs(r['stats'].variance / r['predicted'] - 1)
    prop = np.abs(r['stats'].variance / r['propagated'] - 1)
    stages = np.array([p.stage for p in r['plans']])
    per_stage = ' '.join(f'{rel[stages == i].max():.3f}'
                         for i in range(stages.max() + 1))
    # Empty when every block is a transition (stage depth = scheme stages).
    cross = r['cross'] if r['cross'].size else np.full(1, np.nan)
    print(f'{r["scheme"]:9s} {r["rule"]:7s} {rel.max():12.3f} '
          f'{per_stage:>24s} {prop.max():10.3f} {np.abs(cross).max():9.4f} '
          f'{cross.mean():+8.4f} {r["seconds"]:5.1f}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--schemes', default=','.join(_SCHEMES),
                      help='comma-separated stacking schemes')
  parser.add_argument('--stage_depth', type=int, default=28,
                      help='sub-blocks per stage (4 stages)')
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--alpha', type=float, default=0.2)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=_OUT)
  args = parser.parse_args()
  args.schemes = args.schemes.split(',')
  start = time.time()
  records = measure(args)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  write_csv(os.path.splitext(args.out)[0] + '.csv', records)
  plot(records, args.schemes, args.out, title=(
      f'NF-ResNet, 4 x {args.stage_depth} sub-blocks, width x{args.width}, '
      f'alpha {args.alpha}, {args.batch_size} Gaussian inputs of '
      f'{args.image_size} px, at initialization'))
  report(records)
  print(f'Wrote {args.out} and {os.path.splitext(args.out)[0]}.csv in '
        f'{time.time() - start:.0f} s')


if __name__ == '__main__':
  main()
