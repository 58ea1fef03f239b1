"""Tests for checkpoint evaluation on a tiny run trained by the runner."""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from sklearn import metrics as skmetrics

from nfnets import data
from nfnets import evaluate
from nfnets import pretrained
from nfnets.cli import evaluate as evaluate_cli
from nfnets.train import metrics
from nfnets.train import state as train_state
from tests import subprocesses

# Needs the session's tiny trained run (`digits_run` in conftest.py), whose
# first user trains it.
pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(digits_run):
  """The shared run: 2 steps, checkpoints at steps 1 and 2; read only."""
  return digits_run


def _snapshot(path):
  """{relative path: (sha256, mtime_ns)} of every file under `path`."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      p = pathlib.Path(root) / name
      rel = str(p.relative_to(path))
      if p.is_file():
        out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                    p.stat().st_mtime_ns)
      else:
        out[rel] = None
  return out


def test_evaluate_matches_an_independent_count(workdir):
  ckpt = evaluate.load_checkpoint(workdir)
  assert ckpt.step == 2 and ckpt.use_ema
  result = evaluate.evaluate(ckpt, progress=False)
  # Independent path: the raw 8x8 test images through `predict` (jax resize
  # of uint8 images), scored with scikit-learn.
  images, labels = data.digits.raw_images('test')
  probs = ckpt.predict(images)
  assert probs.shape == (360, 10)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert result.num_images == 360
  assert result.top1 == pytest.approx(
      skmetrics.accuracy_score(labels, probs.argmax(-1)), abs=2 / 360)
  assert result.top5 == pytest.approx(skmetrics.top_k_accuracy_score(
      labels, probs, k=5, labels=range(10)), abs=2 / 360)
  confusion = skmetrics.confusion_matrix(labels, probs.argmax(-1),
                                         labels=range(10))
  assert np.abs(result.confusion - confusion).sum() <= 4
  assert result.confusion.sum() == 360


def test_raw_and_ema_weights_differ(workdir):
  raw = evaluate.load_checkpoint(workdir, use_ema=False)
  ema = evaluate.load_checkpoint(workdir, use_ema=True)
  w = 'NFNet/~/linear'
  assert not np.allclose(raw.params[w]['w'], ema.params[w]['w'])
  # The same weights through the pretrained loader (a checkpoint directory).
  loaded = pretrained.load_params(workdir, use_ema=False)
  np.testing.assert_array_equal(loaded[w]['w'], np.asarray(raw.params[w]['w']))


def test_predict_accepts_any_size_uint8_and_float(workdir):
  ckpt = evaluate.load_checkpoint(workdir)
  images, _ = data.digits.raw_images('test')
  images = images[:4]
  as_uint8 = ckpt.predict(images)
  as_float = ckpt.predict(images.astype(np.float32) / 255.0)
  np.testing.assert_allclose(as_uint8, as_float, atol=1e-5)
  big = np.repeat(np.repeat(images, 5, axis=1), 5, axis=2)[..., None]  # 40 px
  assert ckpt.predict(np.repeat(big, 3, -1)).shape == (4, 10)


def test_cli_prints_metrics_writes_png_and_leaves_workdir_alone(
    workdir, tmp_path, capsys):
  before = _snapshot(workdir)
  png = tmp_path / 'confusion.png'
  result = evaluate_cli.parse_and_run([f'--workdir={workdir}', '--no_progress',
                                       f'--confusion_png={png}'])
  out = capsys.readouterr().out
  assert f'top-1 {result.top1:.4f}' in out and 'images 360' in out
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  step_dir = workdir / 'checkpoints' / '1'
  evaluate_cli.parse_and_run([f'--checkpoint={step_dir}', '--raw',
                              '--no_progress',
                              f'--confusion_png={tmp_path / "c1.png"}'])
  assert 'step 1 (raw weights)' in capsys.readouterr().out
  assert _snapshot(workdir) == before


@pytest.mark.parametrize('case', ['missing', 'no_step', 'corrupt', 'model'])
def test_bad_checkpoints_are_clear_errors(workdir, tmp_path, case):
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  if case == 'missing':
    target, needle = tmp_path / 'nowhere', 'nowhere'
  elif case == 'no_step':
    target, needle = copy, 'saved steps'
  elif case == 'corrupt':
    for f in (copy / 'checkpoints' / '2' / 'state').rglob('*'):
      if f.is_file() and f.parent.name == 'd':
        f.write_bytes(b'garbage')
    target, needle = copy, str(copy / 'checkpoints' / '2' / 'state')
  else:
    target, needle = copy, "holds 'nfnet_f0'"
  with pytest.raises(evaluate.CheckpointError, match='.') as err:
    if case == 'no_step':
      evaluate.load_checkpoint(target, step=7)
    elif case == 'model':
      evaluate.load_checkpoint(target, model_name='nfnet_f1')
    else:
      evaluate.load_checkpoint(target)
  assert needle in str(err.value)
  if case != 'no_step' and case != 'model':
    # The command line prints the same message as its one line, without
    # TensorStore's detail or the echoes of the abandoned reads.
    result = subprocesses.run(
        [sys.executable, '-m', 'nfnets.evaluate', f'--workdir={target}',
         '--no_progress'], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith('error: ') and needle in lines[0], lines


def test_arrays_of_another_model_are_listed(workdir, tmp_path):
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  # The stored arrays are F0's; a config claiming another width cannot hold
  # them.
  config = evaluate.load_checkpoint(copy).config
  config.model.kwargs.width = 0.25
  with pytest.raises(pretrained.WeightsMismatchError,
                     match='wrong shape') as err:
    train_state.build_model(config)  # Sanity: the config builds.
    abstract, _ = jax.eval_shape(
        lambda: train_state.build_model(config).init(
            jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
            is_training=False))
    pretrained.check_params(abstract, evaluate.load_checkpoint(copy).params,
                            source=str(copy))
  assert str(copy) in str(err.value)


def test_read_metrics(workdir):
  records = metrics.read_metrics(workdir)
  assert records and all('step' in r for r in records)
  assert any(k.startswith('eval/') for r in records for k in r)
