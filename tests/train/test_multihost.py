"""The digits training stream does not depend on the number of processes.

Every random draw for an example depends on (seed, its position in the
stream), and MixUp/CutMix pair positions (2k, 2k + 1), so the per-process
batches of P processes, concatenated in process order, are one global batch
whatever P is. Checked directly on the pipeline for 1, 2 and 4 processes,
and end to end: the runner started as two `jax.distributed` processes on
127.0.0.1 (gloo collectives on CPU) logs the per-step losses of a
one-process run with the same global batch.
"""
import itertools
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from nfnets import configs
from nfnets import data
from nfnets import errors
from nfnets import train
from nfnets.train import config as train_config
from nfnets.train import metrics
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parents[2]
# NFNet-F0 with two stages at 1/16 width on 16 px digits, global batch 8,
# shifts, MixUp and CutMix on (RandAugment's host invariance is checked on
# the pipeline above; tracing it costs each process seconds). The learning
# rate is 16x the recipe's so that four steps move the loss: with the
# per-process augmentation seeds that this stream replaced (and RandAugment
# on), one and two processes differed by 1e-4 to 4e-4 in these losses.
FLAGS = (
    '--config.training.num_steps=4', '--config.training.batch_size=8',
    '--config.training.log_every=1', '--config.optimizer.warmup_steps=1',
    '--config.optimizer.base_lr=4.0', '--config.eval.every_steps=0',
    '--config.checkpoint.every_steps=0', '--config.data.image_size=16',
    '--config.data.eval_image_size=16', '--config.data.max_shift=2',
    '--config.data.mixup_alpha=0.2',
    '--config.data.cutmix_alpha=1.0', '--config.model.kwargs.width=0.0625',
    '--config.model.kwargs.depth=(1,1)',
    '--config.model.kwargs.widths=(256,512)')


def _augmented_digits_config():
  """16 px digits with every augmentation on: shifts, RandAugment, mixing."""
  config = data.default_config()
  config.image_size = 16
  config.max_shift = 2
  config.randaugment_layers = 2
  config.mixup_alpha = 0.2
  config.cutmix_alpha = 1.0
  return config


def _global_batches(config, process_count, steps, *, batch_size, **kwargs):
  """`steps` global batches: the processes' batches concatenated in order."""
  streams = [data.build_train(config, batch_size=batch_size // process_count,
                              process_index=p, process_count=process_count,
                              **kwargs) for p in range(process_count)]
  per_process = [list(itertools.islice(s, steps)) for s in streams]
  return [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
          for parts in zip(*per_process)]


# 89 * 16 = 1424: that step's global batch crosses the 1437-example epoch.
@pytest.mark.parametrize('start_step', [0, 89])
def test_digits_global_batches_do_not_depend_on_process_count(start_step):
  config = _augmented_digits_config()
  kwargs = dict(batch_size=16, seed=7, start_step=start_step)
  one = _global_batches(config, 1, 2, **kwargs)
  assert set(one[0]) == {'images', 'labels', 'mix_labels', 'mix_ratio'}
  assert np.all(one[0]['mix_ratio'] < 1)
  for count in (2, 4):
    many = _global_batches(config, count, 2, **kwargs)
    for step, (a, b) in enumerate(zip(one, many)):
      for k in a:
        np.testing.assert_allclose(
            b[k], a[k], rtol=0, atol=1e-6,
            err_msg=f'{k} of step {step} with {count} processes')


def test_digits_mixing_pairs_adjacent_stream_positions():
  # Steps of 8 from step 3: global positions 24..31, pairs 12..15. With both
  # kinds on, even pairs are CutMixed and odd pairs MixUped.
  config = _augmented_digits_config()
  config.randaugment_layers = 0
  kwargs = dict(batch_size=8, seed=1, start_step=3)
  mixed = next(data.build_train(config, **kwargs))
  config.mixup_alpha = config.cutmix_alpha = 0.0
  plain = next(data.build_train(config, **kwargs))
  x, images, ratio = plain['images'], mixed['images'], mixed['mix_ratio']
  partner = np.arange(8) ^ 1
  np.testing.assert_array_equal(mixed['labels'], plain['labels'])
  np.testing.assert_array_equal(mixed['mix_labels'], plain['labels'][partner])
  np.testing.assert_array_equal(ratio, ratio[partner])
  height, width = x.shape[1:3]
  for i in (0, 4):  # CutMix pairs.
    # Pixels that changed in either image lie in the pasted box, so their
    # bounding box does too: inside it both images hold their partner.
    changed = np.any(images[i:i + 2] != x[i:i + 2], axis=(0, 3))
    rows, cols = np.nonzero(changed)
    assert rows.size, 'CutMix changed no pixel'
    top, left = rows.min(), cols.min()
    bottom, right = rows.max() + 1, cols.max() + 1
    assert (bottom - top) * (right - left) <= round(
        (1 - ratio[i]) * height * width)
    for j in (i, i + 1):
      np.testing.assert_array_equal(images[j, top:bottom, left:right],
                                    x[partner[j], top:bottom, left:right])
    kept = ratio[i] * height * width
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-3)
  for i in (2, 3, 6, 7):  # MixUp pairs.
    np.testing.assert_allclose(
        images[i], ratio[i] * x[i] + (1 - ratio[i]) * x[partner[i]],
        rtol=1e-5, atol=1e-5)
  assert len(set(ratio[::2].tolist())) == 4, 'pairs share a ratio'


def test_digits_mixing_needs_an_even_batch_at_the_call():
  config = _augmented_digits_config()
  with pytest.raises(errors.InputError, match='must be even; got 3'):
    data.build_train(config, batch_size=3, seed=0)
  config.mixup_alpha = config.cutmix_alpha = 0.0
  batch = next(data.build_train(config, batch_size=3, seed=0))
  assert len(batch['labels']) == 3


def test_an_odd_batch_with_mixing_fails_before_the_run_writes(tmp_path):
  config = configs.digits_config()
  config.data.mixup_alpha = 0.2
  config.training.batch_size = 3
  config.eval.batch_size = 3
  workdir = tmp_path / 'run'
  with pytest.raises(train_config.ConfigError, match='must be even; got 3'):
    train.train_and_evaluate(config, workdir)
  assert not workdir.exists() or not any(workdir.iterdir())


# ---------------------------------------------------- two real processes


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _env() -> dict[str, str]:
  # One CPU device per process whatever the caller simulates: the 1- and
  # 2-process runs must both divide the batch of 8.
  xla_flags = ' '.join(
      f for f in os.environ.get('XLA_FLAGS', '').split()
      if not f.startswith('--xla_force_host_platform_device_count'))
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags,
              PYTHONPATH=str(REPO))


def _start(workdir: pathlib.Path, log: pathlib.Path,
           *extra: str) -> subprocess.Popen:
  # Logs go to files: a full pipe would stall one process of a pair while
  # the other waits for it in a collective.
  with open(log, 'w') as out:
    return subprocesses.popen(
        [sys.executable, '-m', 'nfnets.experiment', f'--workdir={workdir}',
         *FLAGS, *extra], cwd=REPO, env=_env(), stdout=out,
        stderr=subprocess.STDOUT)


def _train_losses(workdir: pathlib.Path) -> dict[int, tuple[float, float]]:
  """step -> (train/loss, train/grad_norm) from the run's metrics.jsonl."""
  return {int(r['step']): (r['train/loss'], r['train/grad_norm'])
          for r in metrics.read_metrics(workdir) if 'train/loss' in r}


@pytest.mark.slow
def test_two_processes_log_the_losses_of_one(tmp_path):
  port = _free_port()
  # All three at once: the pair and the single run share the two cores.
  logs = [tmp_path / 'one.log', tmp_path / 'two0.log', tmp_path / 'two1.log']
  procs = [_start(tmp_path / 'one', logs[0])] + [
      _start(tmp_path / 'two', logs[1 + i], '--num_processes=2',
             f'--process_id={i}', f'--coordinator_address=127.0.0.1:{port}')
      for i in range(2)]
  try:
    for proc, log in zip(procs, logs):
      subprocesses.communicate(proc, log=log)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log.read_text()[-3000:]
  one = _train_losses(tmp_path / 'one')
  two = _train_losses(tmp_path / 'two')
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  losses = [one[s][0] for s in sorted(one)]
  # The loss moves by far more than the tolerance, so the check can tell
  # two streams apart.
  assert max(losses) - min(losses) > 1e-3
  for step in sorted(one):
    (loss_1, norm_1), (loss_2, norm_2) = one[step], two[step]
    assert abs(loss_2 - loss_1) <= 1e-5, (step, loss_1, loss_2)
    assert abs(norm_2 - norm_1) <= 1e-5 * norm_1, (step, norm_1, norm_2)
