"""The runner end to end on tiny models: training, logs, exact resume after
SIGTERM, the NaN stop, 1 vs 8 devices, and one step on mock ImageNet.

Every test that trains is marked slow: each compiles a model, which takes XLA
10-30 s on 2 CPU cores (the session's persistent compilation cache, see
conftest.py, shares compilations between tests that build the same step).
The runs use NFNet-F0 made shallow by its constructor overrides
(`_shallow_f0`).
"""
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nfnets import configs
from nfnets import data
from nfnets import train
from nfnets.train import checkpoint
from nfnets.train import config as train_config
from nfnets.train import state as train_state
from nfnets.train import step as train_step
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parents[2]


def _shallow_f0(config: ml_collections.ConfigDict) -> None:
  """Makes `config`'s model NFNet-F0's first two stages, with 1 and 2 blocks.

  That still builds every kind of block F0 has (the unstrided first block with
  a projection, a strided transition and an identity-shortcut block) in a
  fraction of XLA's compile time for twelve.
  """
  config.model.name = 'nfnet_f0'
  config.model.kwargs.depth = (1, 2)
  config.model.kwargs.widths = (256, 512)


def tiny_config(num_steps: int = 6) -> ml_collections.ConfigDict:
  """Shallow NFNet-F0 (`_shallow_f0`) at 1/16 width on 16 px digits, batch 8.

  One dense 3x3 conv per block (instead of two grouped ones) roughly
  quarters XLA's compile time on CPU, which dominates these tests.
  """
  config = configs.digits_config()
  _shallow_f0(config)
  config.model.kwargs.width = 0.0625
  config.model.kwargs.group_size = 4096
  config.model.kwargs.use_two_convs = False
  config.optimizer.clipping = 0.1
  config.data.image_size = config.data.eval_image_size = 16
  config.data.max_shift = 1
  config.training.batch_size = 8
  config.training.num_steps = num_steps
  config.training.log_every = 2
  config.eval.batch_size = 120
  config.eval.every_steps = 0
  config.checkpoint.every_steps = 0
  config.optimizer.warmup_steps = 1
  return config


def one_runner_step(config: ml_collections.ConfigDict):
  """One step of the runner's train step on the first training batch.

  Validates `config` for one device, initializes the state from seed 0 and
  takes one jitted `make_train_step` step on the first batch of
  `config.data`. Returns (initial state, new state, metrics, schedule).
  """
  train_config.validate_config(config, num_devices=1)
  model = train_state.build_model(config)
  optimizer, schedule = train_state.build_optimizer(config)
  state = jax.jit(functools.partial(train_state.init_train_state, config,
                                    model, optimizer))(jax.random.PRNGKey(0))
  batch = jax.tree.map(jnp.asarray, next(data.build_train(
      config.data, batch_size=config.training.batch_size, seed=0)))
  new, metrics = jax.jit(train_step.make_train_step(config, model, optimizer))(
      state, batch)
  return state, new, metrics, schedule


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _wrap_train_batches(monkeypatch, edit):
  """Makes the runner's train stream pass through `edit(index, batch)`."""
  build_train = data.build_train

  def wrapped(*args, **kwargs):
    start = kwargs.get('start_step', 0)
    for i, batch in enumerate(build_train(*args, **kwargs), start):
      yield edit(i, batch)

  monkeypatch.setattr(data, 'build_train', wrapped)


# Pieces -----------------------------------------------------------------------


def test_get_steps_from_steps_or_epochs():
  group = ml_collections.ConfigDict({'num_steps': None, 'num_epochs': 2.5})
  assert train_config.get_steps(group, 'num', batch_size=100,
                              num_examples=1000) == 25
  group = ml_collections.ConfigDict({'num_steps': 7, 'num_epochs': None})
  assert train_config.get_steps(group, 'num', batch_size=100,
                              num_examples=1000) == 7
  group = ml_collections.ConfigDict({'num_steps': 7, 'num_epochs': 1.0})
  with pytest.raises(train.ConfigError, match='only one'):
    train_config.get_steps(group, 'num', batch_size=1, num_examples=1)
  group = ml_collections.ConfigDict({'num_steps': None, 'num_epochs': None})
  with pytest.raises(train.ConfigError, match='Set num_steps'):
    train_config.get_steps(group, 'num', batch_size=1, num_examples=1)
  assert train_config.get_steps(group, 'num', batch_size=1, num_examples=1,
                              default=3) == 3


def test_ema_decay_warmup():
  steps = jnp.array([0, 1, 90, 10**7])
  got = train_step.ema_decay_at(steps, 0.99999)
  want = [min(0.99999, (1 + t) / (10 + t)) for t in (0, 1, 90, 10**7)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_targets_with_mixing_and_label_smoothing():
  batch = {'labels': jnp.array([0, 2]), 'mix_labels': jnp.array([1, 2]),
           'mix_ratio': jnp.array([0.75, 0.4])}
  got = train_step.targets_of(batch, 4, 0.1)
  want = np.array([[0.75, 0.25, 0, 0], [0, 0, 1.0, 0]])
  want = want * 0.9 + 0.1 / 4
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(np.sum(got, -1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_train_step_loss_ema_and_learning():
  # Long enough that the cosine decay keeps the learning rate up here.
  config = tiny_config(num_steps=200)
  config.model.kwargs.drop_rate = 0.0
  config.optimizer.warmup_steps = 0  # A warmup's first learning rate is 0.
  model = train_state.build_model(config)
  optimizer, _ = train_state.build_optimizer(config)
  state = jax.jit(functools.partial(train_state.init_train_state, config, model,
                                    optimizer))(jax.random.PRNGKey(0))
  batch = next(data.build_train(config.data, batch_size=8, seed=0))
  batch = jax.tree.map(jnp.asarray, batch)
  step = jax.jit(train_step.make_train_step(config, model, optimizer))

  new, metrics = step(state, batch)
  # The loss: smoothed cross-entropy of the forward pass, recomputed in NumPy.
  logits, _ = jax.jit(functools.partial(model.apply, is_training=True))(
      state.params, state.model_state, jax.random.split(state.rng)[1],
      batch['images'])
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  eps, k = config.training.label_smoothing, 10
  targets = np.eye(k)[np.asarray(batch['labels'])] * (1 - eps) + eps / k
  want = -np.mean(np.sum(targets * log_probs, -1))
  np.testing.assert_allclose(float(metrics['loss']), want, rtol=1e-5)
  assert int(new.step) == 1
  flat = np.concatenate([np.ravel(np.asarray(x, np.float64))
                         for x in jax.tree.leaves(jax.device_get(new.params))])
  np.testing.assert_allclose(float(metrics['param_norm']),
                             np.sqrt(np.sum(flat ** 2)), rtol=1e-5)
  assert 0.0 <= float(metrics['agc_clip_fraction']) <= 1.0
  # The EMA at t=0 uses decay min(d, 1/10): ema = 0.1 * old + 0.9 * new.
  # (In NumPy: eager jax arithmetic would compile once per parameter shape.)
  leaves = jax.device_get([jax.tree.leaves(t) for t in (
      state.params, new.params, new.ema_params)])
  for old, p, e in zip(*leaves):
    np.testing.assert_allclose(e, 0.1 * old + 0.9 * p, rtol=1e-5, atol=1e-7)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(new.params)))
  assert not np.array_equal(state.rng, new.rng)

  # The same batch over and over: the loss must fall.
  losses = [float(metrics['loss'])]
  for _ in range(15):
    new, metrics = step(new, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0] - 0.05, losses


# The loop ---------------------------------------------------------------------


@pytest.mark.slow
def test_train_and_evaluate_writes_logs_checkpoints_and_config(tmp_path):
  config = tiny_config(num_steps=6)
  config.checkpoint.every_steps = 4
  config.eval.every_steps = 4
  metrics = train.train_and_evaluate(config, tmp_path)

  assert metrics['step'] == 6 and metrics['preempted'] == 0
  for key in ('top1', 'top5', 'loss', 'ema_top1', 'ema_top5', 'ema_loss'):
    assert np.isfinite(metrics[f'eval/{key}'])
  assert 0 <= metrics['eval/top1'] <= metrics['eval/top5'] <= 1
  assert np.isfinite(metrics['train/loss'])

  # The config file is the run's config.
  assert checkpoint.config_to_dict(checkpoint.load_config(tmp_path)) == checkpoint.config_to_dict(
      config)
  # Checkpoints every 4 steps and at the end.
  manager = checkpoint.checkpoint_manager(tmp_path, read_only=True)
  assert manager.all_steps() == [4, 6]
  manager.close()
  saved_config, state = checkpoint.restore_latest(tmp_path)
  assert int(state.step) == 6
  assert saved_config.model.kwargs.width == 0.0625

  # JSON lines: train logs every 2 steps, evaluations at 4 and 6.
  records = [json.loads(l) for l in
             (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  logged = [r['step'] for r in records if 'train/loss' in r]
  evals = [r['step'] for r in records if 'eval/top1' in r]
  assert logged == [2, 4, 6] and evals == [4, 6]
  assert all(r['train/images_per_sec'] > 0 for r in records
             if 'train/loss' in r)
  assert records[-1]['eval/top1'] == pytest.approx(metrics['eval/top1'])

  # TensorBoard event files hold the same scalars.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  events = list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert len(events) == 1
  tags = {}
  for record in tf.data.TFRecordDataset(str(events[0])):
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      tags.setdefault(value.tag, []).append(event.step)
  assert tags['train/loss'] == [2, 4, 6]
  assert tags['eval/ema_top1'] == [4, 6]

  # A second start finds the finished run and only evaluates it.
  again = train.train_and_evaluate(config, tmp_path)
  assert again['step'] == 6
  assert again['eval/top1'] == pytest.approx(metrics['eval/top1'])


@pytest.mark.slow
def test_resume_after_sigterm_equals_an_uninterrupted_run(tmp_path,
                                                          monkeypatch):
  config = tiny_config(num_steps=6)
  reference = tmp_path / 'reference'
  train.train_and_evaluate(config, reference)

  # SIGTERM arrives while the 3rd batch is being prepared; the runner must
  # save and stop, then a second start must resume and finish.
  received = []
  fallback = signal.signal(signal.SIGTERM, lambda *a: received.append(a))

  def kill_at_batch_3(index, batch):
    if index == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  interrupted = tmp_path / 'interrupted'
  try:
    with monkeypatch.context() as m:
      _wrap_train_batches(m, kill_at_batch_3)
      first = train.train_and_evaluate(config, interrupted)
  finally:
    signal.signal(signal.SIGTERM, fallback)
  assert not received  # The runner's handler got it, not the fallback.
  assert first['preempted'] == 1
  assert 1 <= first['step'] < 6
  manager = checkpoint.checkpoint_manager(interrupted, read_only=True)
  assert manager.all_steps() == [int(first['step'])]
  manager.close()

  second = train.train_and_evaluate(config, interrupted)
  assert second['step'] == 6 and second['preempted'] == 0
  _, want = checkpoint.restore_latest(reference)
  _, got = checkpoint.restore_latest(interrupted)
  _assert_trees_equal(want, got)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path,
                                                           monkeypatch):
  config = tiny_config(num_steps=6)
  config.checkpoint.every_steps = 2
  config.training.log_every = 1

  def poison_batch_3(index, batch):
    if index == 3:  # The 4th update.
      batch = dict(batch, images=np.full_like(batch['images'], np.nan))
    return batch

  _wrap_train_batches(monkeypatch, poison_batch_3)
  with pytest.raises(FloatingPointError, match=r'at step 4\b.*kept'):
    train.train_and_evaluate(config, tmp_path)
  manager = checkpoint.checkpoint_manager(tmp_path, read_only=True)
  assert manager.all_steps() == [2]
  manager.close()
  _, state = checkpoint.restore_latest(tmp_path)
  assert int(state.step) == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


_RUN_WITH_DEVICES = '''
import json, sys
import ml_collections
from nfnets import train
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
train.train_and_evaluate(config, sys.argv[2])
'''


@pytest.mark.slow
def test_one_and_eight_devices_train_the_same(tmp_path):
  config = tiny_config(num_steps=2)
  config.training.batch_size = 16
  config.training.log_every = 1
  runs = {}
  for devices in (1, 8):
    workdir = tmp_path / str(devices)
    # Both runs keep the session's other XLA flags (see conftest.py).
    xla_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
                 if not f.startswith('--xla_force_host_platform_device_count')]
    xla_flags.append(f'--xla_force_host_platform_device_count={devices}')
    env = dict(os.environ, XLA_FLAGS=' '.join(xla_flags), JAX_PLATFORMS='cpu')
    subprocesses.run(
        [sys.executable, '-c', _RUN_WITH_DEVICES,
         json.dumps(checkpoint.config_to_dict(config)), str(workdir)],
        check=True, env=env, cwd=REPO, capture_output=True)
    records = [json.loads(l) for l in
               (workdir / 'metrics.jsonl').read_text().splitlines()]
    losses = [r['train/loss'] for r in records if 'train/loss' in r]
    runs[devices] = losses, checkpoint.restore_latest(workdir)[1]
  np.testing.assert_allclose(runs[1][0], runs[8][0], rtol=1e-5)
  for one, eight in zip(jax.tree.leaves(runs[1][1]),
                        jax.tree.leaves(runs[8][1])):
    np.testing.assert_allclose(one, eight, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_one_step_on_mock_imagenet(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = configs.nfnet_config('nfnet_f0')
  _shallow_f0(config)
  config.model.kwargs.width = 0.0625
  config.model.kwargs.group_size = 4096
  config.model.kwargs.use_two_convs = False
  config.data.image_size = config.data.eval_image_size = 16
  config.data.crop_padding = 4
  config.training.batch_size = 8
  config.training.num_epochs = None
  config.training.num_steps = 1
  config.optimizer.warmup_epochs = 0.0
  config.eval.batch_size = 8
  with tfds.testing.mock_data(num_examples=12):
    metrics = train.train_and_evaluate(config, tmp_path)
  assert metrics['step'] == 1
  assert np.isfinite(metrics['train/loss'])
  # 1000 classes at initialization: the loss is close to log(1000).
  assert abs(metrics['train/loss'] - np.log(1000)) < 0.5
  assert 0 <= metrics['eval/top1'] <= metrics['eval/top5'] <= 1
