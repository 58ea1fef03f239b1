"""The runner's loop: one compilation, no implicit host round trips, donation."""
import jax
import numpy as np

from nfnets.train import loop
from nfnets.train import step as train_step
from tests.train.test_experiment import tiny_config


def _implicit_transfer(*args, **kwargs):
  raise AssertionError('implicit device-to-host transfer in the runner')


def test_train_step_compiles_once_and_the_loop_makes_no_implicit_transfers(
    tmp_path, monkeypatch):
  config = tiny_config(num_steps=6)
  config.training.log_every = 3
  traces = []
  donated = []
  make = train_step.make_train_step

  def counting_make_train_step(*args, **kwargs):
    step = make(*args, **kwargs)

    def counted(state, batch):
      traces.append(1)
      return step(state, batch)
    return counted

  jit = jax.jit

  def recording_jit(fn, *args, **kwargs):
    if getattr(fn, '__name__', '') == 'counted':
      donated.append(kwargs.get('donate_argnums'))
    return jit(fn, *args, **kwargs)

  monkeypatch.setattr(train_step, 'make_train_step', counting_make_train_step)
  monkeypatch.setattr(loop.jax, 'jit', recording_jit)
  # jax's transfer guard does not fire on the CPU backend (host and device
  # share memory), so the implicit conversions that would block on the step
  # each iteration (float(), int(), bool(), .item() of a device array) are
  # made to fail instead; metrics must come through jax.device_get (which
  # itself goes through __array__, left alone).
  array_type = type(jax.numpy.zeros(()))
  for method in ('__float__', '__int__', '__bool__', '__index__', 'item',
                 'tolist'):
    monkeypatch.setattr(array_type, method, _implicit_transfer)
  metrics = loop.train_and_evaluate(config, tmp_path)
  monkeypatch.undo()
  assert metrics['step'] == 6
  assert np.isfinite(metrics['train/loss'])
  assert len(traces) == 1, f'train step traced {len(traces)} times'
  assert donated == [0], 'the train state is donated to the step'
  logged = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert sum('"train/loss"' in line for line in logged) == 2  # steps 3, 6
