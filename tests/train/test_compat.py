"""Files written before the package's layout changed still load.

`tests/fixtures/legacy_run` is the work directory of a 2-step NFNet-F0 run
(1/32 width, 16 px digits) and `legacy_tiny_f0_haiku.npz` its EMA weights in
the released pickle format, both written by the earlier single-module
runner. Parameter names, the `TrainState` layout and the optimizer state must
still match them exactly.
"""
import pathlib
import shutil

import jax
import numpy as np
import pytest

from nfnets import evaluate
from nfnets import pretrained
from nfnets import train
from nfnets.train import checkpoint

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'
LEGACY_RUN = FIXTURES / 'legacy_run'
LEGACY_WEIGHTS = FIXTURES / 'legacy_tiny_f0_haiku.npz'


def test_legacy_checkpoint_restores_into_the_current_train_state(tmp_path):
  workdir = shutil.copytree(LEGACY_RUN, tmp_path / 'run')
  config, state = checkpoint.restore_latest(workdir)
  assert config.model.name == 'nfnet_f0'
  assert int(state.step) == 2
  # Restored into the structure the current code builds (params, optax
  # state, EMA): every leaf is finite and the raw and EMA weights differ
  # after two steps.
  leaves = jax.tree.leaves(state)
  assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)))


def test_legacy_checkpoint_evaluates_and_matches_its_released_format_export():
  ckpt = evaluate.load_checkpoint(LEGACY_RUN)
  assert ckpt.step == 2
  probs = ckpt.predict(np.zeros((3, 8, 8), np.uint8))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  loaded = pretrained.load_pretrained(
      'nfnet_f0', LEGACY_WEIGHTS, **ckpt.config.model.kwargs.to_dict())
  assert loaded.num_classes == 10
  flat = lambda tree: {f'{m}/{n}': np.asarray(v) for m, e in tree.items()
                       for n, v in e.items()}
  from_pickle, from_orbax = flat(loaded.params), flat(ckpt.params)
  assert from_pickle.keys() == from_orbax.keys()
  for key, value in from_pickle.items():
    np.testing.assert_array_equal(value, from_orbax[key], err_msg=key)


@pytest.mark.slow
def test_legacy_run_resumes_with_the_current_runner(tmp_path):
  workdir = shutil.copytree(LEGACY_RUN, tmp_path / 'run')
  config = checkpoint.load_config(workdir)
  config.training.num_steps = 3
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics['step'] == 3
  assert np.isfinite(metrics['train/loss'])
  assert checkpoint.checkpoint_manager(workdir).all_steps()[-1] == 3
