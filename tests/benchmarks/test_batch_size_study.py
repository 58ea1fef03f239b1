"""The batch-size study's small form: every run trains, the table adds up."""
import json
import math

import jax
import numpy as np
import pytest

from benchmarks import batch_size_study as study
from nfnets.models import registry


@pytest.mark.slow
def test_small_study_writes_the_table_and_figure(tmp_path):
  results, figure = tmp_path / 'study.json', tmp_path / 'study.png'
  record = study.run(study.parse_args(
      ['--small', f'--results={results}', f'--figure={figure}']))
  assert json.loads(results.read_text()) == json.loads(json.dumps(record))
  assert figure.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  runs, table = record['runs'], record['table']
  # 3 models x 2 batch sizes x 1 seed, one row each.
  assert sorted((r['model'], r['batch_size']) for r in runs) == sorted(
      (m, b) for m in study.MODELS for b in (4, 2))
  assert [(t['model'], t['batch_size'], t['n']) for t in table] == [
      (r['model'], r['batch_size'], 1) for r in runs]
  for r, t in zip(runs, table):
    assert 0.0 <= r['top1_error'] <= 1.0 and math.isfinite(r['top1_error'])
    assert t['mean'] == r['top1_error'] and t['std'] == 0.0
    assert r['steps'] == 4
    # Linear scaling from 0.1 at batch 32.
    assert r['peak_lr'] == pytest.approx(0.1 * r['batch_size'] / 32)
  text = study.format_table(table)
  assert len(text.splitlines()) == 1 + len(study.MODELS)


def test_summary_is_mean_and_sample_std():
  runs = [dict(model='BN-ResNet', batch_size=2, top1_error=e)
          for e in (0.1, 0.2, 0.4)]
  (row,) = study.summarize(runs)
  assert row['n'] == 3
  assert row['mean'] == pytest.approx(np.mean([0.1, 0.2, 0.4]))
  assert row['std'] == pytest.approx(np.std([0.1, 0.2, 0.4], ddof=1))


def test_the_three_models_have_one_shape_and_the_runs_one_recipe():
  args = study.parse_args([])
  configs = {m: study.run_config(args, m, 8, 1) for m in study.MODELS}
  shapes = set()
  for label, config in configs.items():
    kw = config.model.kwargs
    shapes.add((kw.depth, kw.widths, kw.width))
    fwd = registry.transform(config.model.name, num_classes=10, **kw)
    params, state = jax.eval_shape(
        lambda x, f=fwd: f.init(jax.random.PRNGKey(0), x, is_training=True),
        jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    convs = sorted(tuple(p['w'].shape) for p in params.values()
                   if 'w' in p and len(p['w'].shape) == 4)
    shapes.add(tuple(convs))
    # Only BN keeps moving statistics, which its evaluation uses.
    assert bool(state) == (label == 'BN-ResNet')
  assert len(shapes) == 2  # One (depth, widths, width), one set of convs.
  opts = [c.optimizer.to_dict() for c in configs.values()]
  assert all(o == opts[0] for o in opts)
  tc = configs['BN-ResNet'].training
  assert (tc.batch_size, tc.seed, tc.ema_decay) == (8, 1, 0.0)
  assert tc.num_steps == round(args.epochs * 1437 / 8)
