"""The high-order stacking study: its small form trains and writes a table
that adds up, the statistics against published values, one recipe for all
schemes."""
import json
import math

import numpy as np
import pytest

from benchmarks import ho_stacking_study as study
from nfnets import errors
import nfnets.models as models


def _closed_form_params(widths, sub_blocks, num_classes=10):
  """Stem conv + BN, per sub-block 2 x (BN, 3x3 conv), linear with bias."""
  pair = lambda i, o: 2 * i + 9 * i * o + 2 * o + 9 * o * o
  total, ch = 9 * 3 * widths[0] + 2 * widths[0], widths[0]
  for w in widths:
    total += pair(ch, w) + (sub_blocks - 1) * pair(w, w)
    ch = w
  return total + ch * num_classes + num_classes


# Mostly compiling 2 schemes' steps: 6 s on 2 cores at load 2.4 (14-16 s
# at load 10).
def test_small_study_writes_a_table_of_the_runs_means(tmp_path):
  results, figure = tmp_path / 'study.json', tmp_path / 'study.png'
  record = study.run(study.parse_args(
      ['--small', f'--results={results}', f'--figure={figure}']))
  assert json.loads(results.read_text()) == json.loads(json.dumps(record))
  assert figure.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  runs, table = record['runs'], record['table']
  # 2 seeds x 2 schemes, the same seeds for each scheme.
  assert sorted((r['scheme'], r['seed']) for r in runs) == [
      ('euler', 0), ('euler', 1), ('midpoint', 0), ('midpoint', 1)]
  # Equal sub-blocks, equal parameters: one stage of 8 channels, m = 2.
  assert {r['params'] for r in runs} == {_closed_form_params((8,), 2)}
  assert {r['scheme']: r['depth'] for r in runs} == {
      'euler': [2], 'midpoint': [1]}
  for r in runs:
    for key in ('top1', 'ema_top1'):
      assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
    assert math.isfinite(r['train_loss']) and r['steps'] == 3
  assert [t['scheme'] for t in table] == ['euler', 'midpoint']
  for t in table:
    for metric in study.METRICS:
      values = [r[metric] for r in runs if r['scheme'] == t['scheme']]
      assert t['n'] == len(values) == 2
      assert t[metric]['mean'] == pytest.approx(np.mean(values), abs=1e-12)
      assert t[metric]['std'] == pytest.approx(np.std(values, ddof=1),
                                               abs=1e-12)
  (c,) = record['comparisons']
  assert (c['scheme'], c['baseline']) == ('midpoint', 'euler')
  for metric in ('top1', 'ema_top1'):
    mid, eul = ([r[metric] for r in runs if r['scheme'] == s]
                for s in ('midpoint', 'euler'))
    assert c[metric]['diff'] == pytest.approx(np.mean(mid) - np.mean(eul),
                                              abs=1e-12)
    se = np.sqrt(np.var(mid, ddof=1) / 2 + np.var(eul, ddof=1) / 2)
    assert c[metric]['se'] == pytest.approx(se, abs=1e-12)
    assert c[metric]['p'] is None or 0.0 <= c[metric]['p'] <= 1.0
  text = study.format_table(table, record['comparisons'])
  assert len(text.splitlines()) == 1 + 2


# Welch's t-test, Wikipedia's worked examples 1 and 2: t, dof and p.
@pytest.mark.parametrize('a, b, t, dof, p', [
    ([27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6,
      19.0, 21.7, 21.4],
     [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1,
      22.9, 20.5, 24.4], -2.46, 25.0, 0.021),
    ([17.2, 20.9, 22.6, 18.1, 21.7, 21.4, 23.5, 24.2, 14.7, 21.8],
     [21.5, 22.8, 21.0, 23.0, 21.6, 23.6, 22.5, 20.7, 23.4, 21.8, 20.7, 21.7,
      21.5, 22.5, 23.6, 21.5, 22.5, 23.5, 21.5, 21.8], -1.57, 9.9, 0.149),
])
def test_welch_matches_published_examples(a, b, t, dof, p):
  out = study.welch(a, b)
  assert out['t'] == pytest.approx(t, abs=0.005)
  assert out['dof'] == pytest.approx(dof, abs=0.05)
  assert out['p'] == pytest.approx(p, abs=0.0005)
  assert out['diff'] == pytest.approx(np.mean(a) - np.mean(b))
  assert out['se'] == pytest.approx(abs(out['diff'] / out['t']))


def test_welch_without_spread_or_seeds_leaves_p_undefined():
  assert study.welch([0.5], [0.4])['p'] is None
  out = study.welch([0.5, 0.5], [0.4, 0.4])
  assert out['se'] == 0.0 and out['p'] is None
  assert out['diff'] == pytest.approx(0.1)


def test_schemes_share_one_recipe_and_the_published_parameter_count():
  args = study.parse_args([])
  configs = {s: study.run_config(args, s, 3) for s in args.schemes}
  assert list(configs) == ['euler', 'midpoint', 'rk4']
  blocks = {'euler': 4, 'midpoint': 2, 'rk4': 1}
  for scheme, config in configs.items():
    kw = config.model.kwargs.to_dict()
    assert kw.pop('stacking') == scheme
    assert kw.pop('depth') == (blocks[scheme],) * 3
    # [HO-ResNet]'s 26-layer networks: 366,842 parameters each.
    assert models.count_params(config.model.name, num_classes=10,
                               stacking=scheme, depth=(blocks[scheme],) * 3,
                               **kw) == 366_842
  rest = []
  for config in configs.values():
    d = config.to_dict()
    d['model']['kwargs'].pop('stacking')
    d['model']['kwargs'].pop('depth')
    rest.append(d)
  assert all(d == rest[0] for d in rest)
  assert configs['rk4'].model.kwargs.post_activation
  off = study.run_config(study.parse_args(['--nopost_activation']), 'rk4', 3)
  assert not off.model.kwargs.post_activation
  tc = configs['rk4'].training
  assert (tc.seed, tc.batch_size, tc.num_steps) == (3, 32, 300)
  assert configs['rk4'].optimizer.base_lr * 32 / 128 == pytest.approx(0.025)


def test_schemes_must_fit_the_sub_blocks():
  with pytest.raises(study.StudyFlagError, match='14 stages'):
    study.parse_args(['--schemes=euler,rk8'])
  with pytest.raises(errors.UserError, match='distinct'):
    study.parse_args(['--schemes=rk4,rk4'])
  with pytest.raises(errors.UserError, match="'rk4'"):
    study.parse_args(['--schemes=euler,rk44'])
