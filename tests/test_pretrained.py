"""Tests for loading and exporting weights in the released NFNet format."""
import os
import pickle

import dill
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets import models
from nfnets import pretrained

_TINY = dict(width=0.125)


def _abstract_params(name, **overrides):
  model = models.transform(name, **overrides)
  params, _ = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                         is_training=False))
  return params


def _random_like(abstract, seed=0):
  """Reference-format dict {module: {param: float32 ndarray}}."""
  rs = np.random.default_rng(seed)
  return {m: {n: rs.standard_normal(v.shape, dtype=np.float32) * 0.1
              for n, v in e.items()} for m, e in abstract.items()}


def _write_dill(tree, path):
  with open(path, 'wb') as f:
    dill.dump(tree, f)
  return path


def _reference_f0_table():
  """F0's parameter table written out from [NFNet] Table 1 and Figure 5.

  Independent of the model code: stem 3-16-32-64-128 (3x3 convs), stages of
  [1, 2, 6, 3] blocks with widths [256, 512, 1536, 1536], bottleneck ratio
  0.5, 3x3 group width 128, SE ratio 0.5, final 1x1 conv to 2 x 1536, and a
  1000-way classifier; module paths as in the released files.
  """
  table = {}

  def conv(path, k, cin, cout):
    table[f'NFNet/~/{path}'] = {'w': (k, k, cin, cout), 'gain': (cout,),
                                'bias': (cout,)}

  for i, (cin, cout) in enumerate([(3, 16), (16, 32), (32, 64), (64, 128)]):
    conv(f'stem_conv{i}', 3, cin, cout)
  cin, index = 128, 0
  for depth, cout in zip((1, 2, 6, 3), (256, 512, 1536, 1536)):
    for b in range(depth):
      block = 'nf_block' if index == 0 else f'nf_block_{index}'
      mid = cout // 2
      table[f'NFNet/~/{block}'] = {'skip_gain': ()}
      conv(f'{block}/~/conv0', 1, cin, mid)
      conv(f'{block}/~/conv1', 3, 128, mid)
      conv(f'{block}/~/conv1b', 3, 128, mid)
      conv(f'{block}/~/conv2', 1, mid, cout)
      if b == 0:
        conv(f'{block}/~/conv_shortcut', 1, cin, cout)
      se = f'NFNet/~/{block}/~/squeeze_excite/~/'
      table[se + 'linear'] = {'w': (cout, cout // 2), 'b': (cout // 2,)}
      table[se + 'linear_1'] = {'w': (cout // 2, cout), 'b': (cout,)}
      cin, index = cout, index + 1
  conv('final_conv', 1, 1536, 3072)
  table['NFNet/~/linear'] = {'w': (3072, 1000), 'b': (1000,)}
  return table


def test_f0_names_and_shapes_match_the_reference_layout():
  ours = {m: {n: tuple(v.shape) for n, v in e.items()}
          for m, e in _abstract_params('nfnet_f0').items()}
  reference = _reference_f0_table()
  assert ours == reference
  # The released F0 pickle has 94 module entries; [NFNet] Table 1: 71.5M.
  assert len(reference) == 94
  count = sum(int(np.prod(s)) for e in reference.values() for s in e.values())
  assert round(count / 1e6, 1) == 71.5


def test_full_size_f0_released_format_loads_every_array(tmp_path):
  abstract = _abstract_params('nfnet_f0')
  rs = np.random.default_rng(1)
  ref = {m: {n: rs.random(v.shape, dtype=np.float32) for n, v in e.items()}
         for m, e in abstract.items()}
  path = _write_dill(ref, tmp_path / 'F0_haiku.npz')
  loaded = pretrained.load_pretrained('nfnet_f0', path)
  assert loaded.num_classes == 1000
  assert set(loaded.params) == set(ref)
  for m, e in ref.items():
    assert set(loaded.params[m]) == set(e)
    for n, v in e.items():
      np.testing.assert_array_equal(np.asarray(loaded.params[m][n]), v)


def test_loaded_model_output_equals_hand_placed_arrays(tmp_path):
  ref = _random_like(_abstract_params('nfnet_f0', **_TINY))
  path = _write_dill(ref, tmp_path / 'F0_haiku.npz')
  loaded = pretrained.load_pretrained('nfnet_f0', path, **_TINY)
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))

  apply = jax.jit(lambda p: loaded.model.apply(p, {}, None, images,
                                               is_training=False)[0])
  by_hand = {m: {n: jnp.asarray(v) for n, v in e.items()}
             for m, e in ref.items()}
  np.testing.assert_array_equal(apply(loaded.params), apply(by_hand))
  other = _random_like(_abstract_params('nfnet_f0', **_TINY), seed=1)
  assert not np.allclose(apply(loaded.params), apply(other))


def _corrupt(kind, ref):
  ref = {m: dict(e) for m, e in ref.items()}
  if kind == 'missing':
    del ref['NFNet/~/nf_block_1/~/conv1b']['gain']
    return ref, ['1 missing', 'NFNet/~/nf_block_1/~/conv1b/gain']
  if kind == 'unexpected':
    ref['NFNet/~/nf_block_1/~/conv9'] = {'w': np.zeros((1, 1, 2, 2),
                                                       np.float32)}
    return ref, ['1 unexpected', 'NFNet/~/nf_block_1/~/conv9/w']
  w = ref['NFNet/~/stem_conv1']['w']
  ref['NFNet/~/stem_conv1']['w'] = w[..., :-1]
  return ref, ['1 wrong shape', 'NFNet/~/stem_conv1/w: expected '
               f'{w.shape}, file has {w[..., :-1].shape}']


@pytest.mark.parametrize('kind', ['missing', 'unexpected', 'wrong_shape'])
def test_mismatch_is_a_clear_error(tmp_path, kind):
  ref, needles = _corrupt(kind, _random_like(_abstract_params('nfnet_f0',
                                                               **_TINY)))
  path = _write_dill(ref, tmp_path / 'F0_haiku.npz')
  with pytest.raises(pretrained.WeightsMismatchError) as err:
    pretrained.load_pretrained('nfnet_f0', path, **_TINY)
  for needle in needles + [str(path)]:
    assert needle in str(err.value)


def test_wrong_model_is_a_clear_error(tmp_path):
  ref = _random_like(_abstract_params('nfnet_f0', **_TINY))
  path = _write_dill(ref, tmp_path / 'F0_haiku.npz')
  with pytest.raises(pretrained.WeightsMismatchError, match='missing'):
    pretrained.load_pretrained('nfnet_f1', path, **_TINY)


class _RunsCode:

  def __init__(self, func, arg):
    self.func, self.arg = func, arg

  def __reduce__(self):
    return self.func, (self.arg,)


@pytest.mark.parametrize('func,refused', [
    (os.system, f'{os.system.__module__}.system'),
    (eval, 'builtins.eval'),
])
def test_malicious_pickle_is_refused_before_running(tmp_path, func, refused):
  marker = tmp_path / 'ran'
  payload = (f'touch {marker}' if func is os.system
             else f'open({str(marker)!r}, "w")')
  tree = {'NFNet/~/linear': {'w': np.zeros((2, 2), np.float32),
                             'b': _RunsCode(func, payload)}}
  path = tmp_path / 'F0_haiku.npz'
  path.write_bytes(pickle.dumps(tree))
  with pytest.raises(pretrained.UnsafePickleError) as err:
    pretrained.load_params(path)
  assert refused in str(err.value)
  assert not marker.exists()


def test_non_array_values_are_refused(tmp_path):
  path = tmp_path / 'x.pkl'
  path.write_bytes(pickle.dumps({'NFNet/~/linear': {'w': [1.0, 2.0]}}))
  with pytest.raises(ValueError, match='NFNet/~/linear/w is not a numeric'):
    pretrained.load_params(path)
  path.write_bytes(pickle.dumps(
      {'NFNet/~/linear': {'w': np.array([1, 'a'], dtype=object)}}))
  with pytest.raises((ValueError, pretrained.UnsafePickleError)):
    pretrained.load_params(path)


def test_corrupt_file_is_a_clear_error(tmp_path):
  path = tmp_path / 'F0_haiku.npz'
  path.write_bytes(pickle.dumps({'a': {'b': np.ones(3)}})[:-20])
  with pytest.raises(ValueError, match='not a readable pickle'):
    pretrained.load_params(path)


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
@pytest.mark.parametrize('writer', [pickle, dill])
def test_pickle_protocols_load(tmp_path, writer, protocol):
  tree = {'NFNet/~/nf_block': {'skip_gain': np.float32(0.5)},
          'NFNet/~/linear': {'w': np.arange(6, dtype=np.float32).reshape(2, 3),
                             'b': np.asfortranarray(np.ones((2, 2)))}}
  path = tmp_path / 'w.npz'
  path.write_bytes(writer.dumps(tree, protocol=protocol))
  loaded = pretrained.load_params(path)
  for m, e in tree.items():
    for n, v in e.items():
      np.testing.assert_array_equal(loaded[m][n], v)
      assert loaded[m][n].dtype == np.asarray(v).dtype


def test_export_round_trips(tmp_path):
  ref = _random_like(_abstract_params('nfnet_f0', **_TINY))
  loaded = pretrained.load_pretrained(
      'nfnet_f0', _write_dill(ref, tmp_path / 'in.npz'), **_TINY)
  pkl = pretrained.export_haiku_pickle(loaded.params, tmp_path / 'out.npz')
  npz = pretrained.export_npz(loaded.params, tmp_path / 'plain.npz')
  with open(pkl, 'rb') as f:
    via_dill = dill.load(f)
  with np.load(npz, allow_pickle=False) as archive:
    via_numpy = {k: archive[k] for k in archive.files}
  for m, e in ref.items():
    for n, v in e.items():
      np.testing.assert_array_equal(via_dill[m][n], v)
      np.testing.assert_array_equal(via_numpy[f'{m}/{n}'], v)
  for path in (pkl, npz):
    again = pretrained.load_pretrained('nfnet_f0', path, **_TINY)
    for m, e in ref.items():
      for n, v in e.items():
        np.testing.assert_array_equal(np.asarray(again.params[m][n]), v)


def test_reinit_classifier_keeps_the_body(tmp_path):
  ref = _random_like(_abstract_params('nfnet_f0', **_TINY))
  path = _write_dill(ref, tmp_path / 'F0_haiku.npz')
  with pytest.raises(pretrained.WeightsMismatchError, match='linear/w'):
    pretrained.load_pretrained('nfnet_f0', path, num_classes=10, **_TINY)
  loaded = pretrained.load_pretrained('nfnet_f0', path, num_classes=10,
                                      reinit_classifier=True, **_TINY)
  head = loaded.params['NFNet/~/linear']
  assert head['w'].shape == (ref['NFNet/~/linear']['w'].shape[0], 10)
  assert not np.any(head['w']) and not np.any(head['b'])
  np.testing.assert_array_equal(
      np.asarray(loaded.params['NFNet/~/final_conv']['w']),
      ref['NFNet/~/final_conv']['w'])
