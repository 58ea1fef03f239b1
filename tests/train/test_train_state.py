"""TrainState checkpoints: exact round trips, the work-directory helpers and
clear errors for missing or damaged files."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets import configs
from nfnets.train import checkpoint
from nfnets.train import state as train_state
from nfnets.train import optimizer as train_optimizer


@jax.jit
def _toy_state(seed: int = 0) -> train_state.TrainState:
  """A TrainState over Haiku-style params with a real optimizer state."""
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {'NFNet/~/stem_conv0': {'w': jax.random.normal(k[0], (3, 3, 3, 4)),
                                   'gain': jnp.ones((4,)),
                                   'bias': jnp.zeros((4,))},
            'NFNet/~/linear': {'w': jax.random.normal(k[1], (4, 10)),
                               'b': jnp.zeros((10,))}}
  opt = train_optimizer.from_config(train_optimizer.default_config(), batch_size=256,
                              total_steps=10, warmup_steps=2)
  opt_state = opt.init(params)
  # One update so that momentum and counters are not all zeros.
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  updates, opt_state = opt.update(grads, opt_state, params)
  return train_state.TrainState(
      step=jnp.asarray(7, jnp.int32), params=optax.apply_updates(params,
                                                                 updates),
      model_state={}, opt_state=opt_state,
      ema_params=jax.tree.map(lambda p: 0.5 * p, params), ema_state={},
      rng=jax.random.PRNGKey(seed + 1))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_round_trip_is_exact(tmp_path):
  state = _toy_state()
  config = configs.digits_config()
  manager = checkpoint.checkpoint_manager(tmp_path)
  checkpoint.save(manager, state, config)
  manager.wait_until_finished()
  assert manager.all_steps() == [7]
  mesh = train_state.make_mesh()
  restored = checkpoint.restore(manager, 7, train_state.abstract(state, train_state.replicated(mesh)))
  _assert_trees_equal(state, restored)
  # optax's NamedTuple states come back as themselves, not as lists.
  assert type(restored.opt_state) is type(state.opt_state)
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding.is_equivalent_to(train_state.replicated(mesh), leaf.ndim)
  saved = checkpoint.restore_config(manager, 7)
  assert saved.training.batch_size == config.training.batch_size
  assert saved.model.kwargs.width == config.model.kwargs.width
  manager.close()


def test_config_file_round_trip(tmp_path):
  config = configs.nfnet_config('nfnet_f3')
  checkpoint.write_config(config, tmp_path)
  loaded = checkpoint.load_config(tmp_path)
  assert checkpoint.config_to_dict(loaded) == checkpoint.config_to_dict(config)
  assert json.loads((tmp_path / checkpoint.CONFIG_FILE).read_text())['model'][
      'name'] == 'nfnet_f3'


def test_missing_and_corrupt_config_files_name_the_file(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / 'config.json')):
    checkpoint.load_config(tmp_path)
  (tmp_path / 'config.json').write_text('{"model": ')
  with pytest.raises(checkpoint.CheckpointError, match='Corrupt config file'):
    checkpoint.load_config(tmp_path)


def test_restore_latest_rebuilds_the_state_from_the_workdir(tmp_path):
  config = configs.digits_config('runlocal')
  config.model.kwargs.width = 0.0625
  config.data.image_size = config.data.eval_image_size = 16
  mesh = train_state.make_mesh()
  # Random values in the shapes the runner builds for this config (no
  # compilation needed): restoring must find every array again.
  rng = np.random.default_rng(0)
  state = jax.tree.map(
      lambda x: rng.normal(size=x.shape).astype(x.dtype)
      if np.issubdtype(x.dtype, np.floating)
      else rng.integers(0, 100, size=x.shape).astype(x.dtype),
      train_state.abstract_train_state(config, mesh))
  manager = checkpoint.checkpoint_manager(tmp_path)
  for step in (2, 5):
    checkpoint.save(manager, state._replace(step=jnp.asarray(step, jnp.int32)),
            config)
  manager.wait_until_finished()
  manager.close()

  loaded_config, restored = checkpoint.restore_latest(tmp_path, mesh=mesh)
  assert int(restored.step) == 5
  assert loaded_config.model.name == config.model.name
  _assert_trees_equal(state.params, restored.params)
  _assert_trees_equal(state.opt_state, restored.opt_state)
  _assert_trees_equal(state.rng, restored.rng)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='No checkpoint directory'):
    checkpoint.restore_latest(tmp_path)
  (tmp_path / checkpoint.CHECKPOINT_DIR).mkdir()
  with pytest.raises(checkpoint.CheckpointError, match='No checkpoint in'):
    checkpoint.restore_latest(tmp_path)


def test_corrupt_checkpoint_names_the_file_and_is_kept(tmp_path):
  state = _toy_state()
  manager = checkpoint.checkpoint_manager(tmp_path)
  checkpoint.save(manager, state, configs.digits_config())
  manager.wait_until_finished()
  state_dir = tmp_path / checkpoint.CHECKPOINT_DIR / '7' / 'state'
  # Damage every data file of the saved arrays.
  damaged = [p for p in state_dir.rglob('*') if p.is_file() and
             p.parent.name == 'd']
  assert damaged
  for path in damaged:
    path.write_bytes(b'not a checkpoint')
  files_before = sorted(p for p in tmp_path.rglob('*'))
  abstract = train_state.abstract(state, train_state.replicated(train_state.make_mesh()))
  with pytest.raises(checkpoint.CheckpointError, match=str(state_dir)):
    checkpoint.restore(manager, 7, abstract)
  with pytest.raises(checkpoint.CheckpointError, match='No checkpoint at step 3'):
    checkpoint.restore(manager, 3, abstract)
  manager.close()
  assert sorted(p for p in tmp_path.rglob('*')) == files_before


def test_mesh_and_shardings():
  mesh = train_state.make_mesh()
  assert mesh.axis_names == (train_state.DATA_AXIS,)
  assert mesh.devices.size == jax.device_count()
  batch = jax.device_put(np.zeros((jax.device_count() * 2, 3)),
                         train_state.batch_sharded(mesh))
  assert batch.sharding.spec == jax.sharding.PartitionSpec(train_state.DATA_AXIS)
  shapes = train_state.abstract({'a': np.zeros((2, 3), np.float32)},
                       train_state.replicated(mesh))
  assert shapes['a'].shape == (2, 3) and shapes['a'].dtype == np.float32
  assert pathlib.Path(checkpoint.CHECKPOINT_DIR).name == 'checkpoints'
