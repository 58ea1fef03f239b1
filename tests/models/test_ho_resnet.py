"""High-order CIFAR ResNets: parameter counts against a closed form and the
released code's, feature-map sizes per stem stride, a block against its
hand-written composition, a sub-block against NumPy, the config and the
runner's train step."""
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets.models as models
from nfnets.cli import config_flag
from nfnets.layers import high_order
from nfnets.models import ho_resnet
from nfnets.train import config as train_config
from nfnets.train import optimizer as train_optimizer
from tests.train.test_experiment import one_runner_step

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / 'experiments'
WIDTHS = (16, 32, 64)


def _closed_form_params(sub_blocks_per_stage, num_classes=10, widths=WIDTHS,
                        dead_per_stage=0):
  """Stem conv + BN, 2 x (BN, 3x3 conv) per sub-block, linear with bias.

  `dead_per_stage` adds unused out->out sub-blocks in each stage's first
  block (the released code's Verner89Block builds 16 sub-blocks, uses 14).
  """
  pair = lambda i, o: 2 * i + 9 * i * o + 2 * o + 9 * o * o
  total = 9 * 3 * widths[0] + 2 * widths[0]
  ch = widths[0]
  for w in widths:
    total += pair(ch, w) + (sub_blocks_per_stage - 1 + dead_per_stage) * pair(
        w, w)
    ch = w
  return total + ch * num_classes + num_classes


def test_closed_form_gives_the_released_codes_counts():
  assert _closed_form_params(4) == 366_842
  assert _closed_form_params(14) == 1_339_002
  assert _closed_form_params(14, dead_per_stage=2) == 1_533_434


@pytest.mark.parametrize('name, count', [
    ('ho_resnet26_euler', 366_842), ('ho_resnet26_midpoint', 366_842),
    ('ho_resnet26_rk4', 366_842), ('ho_resnet86_euler', 1_339_002),
    ('ho_resnet86_midpoint', 1_339_002), ('ho_resnet86_rk8', 1_339_002),
    ('ho_resnet86_rk8_authors', 1_339_002)])
def test_parameter_counts_are_equal_across_schemes(name, count):
  assert models.count_params(name, num_classes=10) == count


def test_overrides_pick_scheme_and_depth():
  # Blocks of the scheme per stage: rk4 [1, 1, 1] is 4 sub-blocks a stage.
  assert models.count_params('ho_resnet26_euler', num_classes=10,
                             stacking='rk4', depth=(1, 1, 1)) == 366_842
  assert models.count_params('ho_resnet26_euler', num_classes=10,
                             stacking='rk8', depth=(1, 1, 1)) == 1_339_002
  assert models.count_params('ho_resnet26_euler', num_classes=10,
                             widths=(8, 16, 32), depth=(2, 2, 2)) == (
                                 _closed_form_params(2, widths=(8, 16, 32)))
  with pytest.raises(high_order.UnknownTableauError, match="'rk4'"):
    models.transform('ho_resnet26_euler', stacking='rk44').init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


def _eval_shapes(name, image_size, **overrides):
  fwd = models.transform(name, num_classes=10, **overrides)

  def run(x):
    params, state = fwd.init(jax.random.PRNGKey(0), x, is_training=False)
    (logits, acts), _ = fwd.apply(params, state, None, x, is_training=False,
                                  return_activations=True)
    return params, logits, acts

  return jax.eval_shape(
      run, jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32))


@pytest.mark.parametrize('stem_stride, final', [(2, 4), (1, 8)])
def test_final_map_at_32px_by_stem_stride(stem_stride, final):
  params, logits, acts = _eval_shapes('ho_resnet26_rk4', 32,
                                      stem_stride=stem_stride)
  assert logits.shape == (2, 10)
  assert acts.stem.shape == (2, 32 // stem_stride, 32 // stem_stride, 16)
  assert [b.shape[1:] for b in acts.blocks] == [
      (32 // stem_stride, 32 // stem_stride, 16),
      (16 // stem_stride, 16 // stem_stride, 32), (final, final, 64)]
  assert params['HOResNet/~/linear']['w'].shape == (64, 10)


def test_parameter_names_of_a_block():
  params, _, _ = _eval_shapes('ho_resnet26_midpoint', 16, depth=(1, 1, 1))
  block = 'HOResNet/~/ho_block_1'
  assert params[f'{block}/~/f1/~/conv1']['w'].shape == (3, 3, 16, 32)
  assert params[f'{block}/~/f1/~/bn1']['scale'].shape == (16,)
  assert params[f'{block}/~/f2/~/conv1']['w'].shape == (3, 3, 32, 32)
  assert f'{block}/~/f3/~/conv1' not in params


def test_midpoint_transition_block_is_its_hand_written_composition():
  # A stride-2, 4 -> 8 channel block in training mode, and the same
  # sub-blocks (same module names, so the same parameters) composed by hand:
  # k1 = F1(x), out = ReLU(s + F2(s + k1 / 2)), s the option-A shortcut.
  x = np.random.default_rng(1).normal(size=(3, 6, 6, 4)).astype(np.float32)

  def block(x):
    return ho_resnet.HOBlock(4, 8, tableau=high_order.MIDPOINT, stride=2,
                             name='block')(x, is_training=True)

  class ByHand(hk.Module):

    def __init__(self):
      super().__init__(name='block')
      self.f1 = ho_resnet.PreActSubBlock(8, stride=2, name='f1')
      self.f2 = ho_resnet.PreActSubBlock(8, name='f2')

    def __call__(self, x):
      shortcut = np.zeros((3, 3, 3, 8), np.float32)
      shortcut[..., 2:6] = x[:, ::2, ::2, :]  # 2 zero channels each side.
      k1 = self.f1(x, is_training=True)
      return jax.nn.relu(
          shortcut + self.f2(shortcut + 0.5 * k1, is_training=True))

  f = hk.transform_with_state(block)
  params, state = f.init(jax.random.PRNGKey(0), x)
  # Non-trivial BN parameters, so that a mixed-up sub-block would show.
  params = jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
      params)
  (out, branch), _ = f.apply(params, state, None, x)
  g = hk.transform_with_state(lambda x: ByHand()(x))
  assert jax.tree.structure(g.init(jax.random.PRNGKey(0), x)[0]) == (
      jax.tree.structure(params))
  want, _ = g.apply(params, state, None, x)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  assert out.shape == (3, 3, 3, 8) and branch.shape == (3, 3, 3, 8)


def _np_conv3x3(x, w, stride):
  """PyTorch's Conv2d(3, stride, padding=1, bias=False), NHWC, float64."""
  n, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
  out = np.zeros((n, ho, wo, w.shape[-1]))
  for i in range(ho):
    for j in range(wo):
      patch = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3, :]
      out[:, i, j, :] = np.einsum('nhwc,hwco->no', patch, w)
  return out


def test_strided_sub_block_matches_numpy_with_pytorch_padding():
  # Odd input size: PyTorch's symmetric padding and 'SAME' disagree there.
  x = np.random.default_rng(3).normal(size=(4, 7, 7, 2))
  f = hk.transform_with_state(
      lambda x: ho_resnet.PreActSubBlock(3, stride=2)(x, is_training=True))
  params, state = f.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
  out, _ = f.apply(params, state, None, jnp.asarray(x, jnp.float32))
  p = {k.split('/')[-1]: {n: np.asarray(v, np.float64) for n, v in d.items()}
       for k, d in params.items()}

  def bn(v, q):
    mean, var = v.mean((0, 1, 2)), v.var((0, 1, 2))
    return (v - mean) / np.sqrt(var + 1e-5) * q['scale'] + q['offset']

  h = _np_conv3x3(np.maximum(bn(x, p['bn1']), 0), p['conv1']['w'], 2)
  want = _np_conv3x3(np.maximum(bn(h, p['bn2']), 0), p['conv2']['w'], 1)
  assert out.shape == (4, 4, 4, 3)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_option_a_shortcut_and_its_error():
  x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
  s = ho_resnet.option_a_shortcut(x, 5, 2)
  assert s.shape == (2, 2, 2, 5)
  np.testing.assert_array_equal(s[..., 1:3], x[:, ::2, ::2, :])
  assert not np.any(s[..., 0]) and not np.any(s[..., 3:])
  with pytest.raises(ValueError, match='cannot narrow'):
    ho_resnet.option_a_shortcut(x, 1, 1)


def test_post_activation_off_leaves_block_outputs_signed():
  fwd = models.transform('ho_resnet26_euler', num_classes=10, width=0.25,
                         depth=(1, 1, 1), post_activation=False)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 8, 8, 3)),
                  jnp.float32)
  params, state = fwd.init(jax.random.PRNGKey(0), x)
  (_, acts), _ = fwd.apply(params, state, None, x, return_activations=True)
  assert float(jnp.min(acts.blocks[-1])) < 0
  assert float(jnp.min(acts.pooled)) >= 0  # The head's ReLU.


# The config ------------------------------------------------------------------


@pytest.mark.parametrize('arg, name, depth', [
    ('scheme=rk4', 'ho_resnet26_rk4', (1, 1, 1)),
    ('scheme=euler', 'ho_resnet26_euler', (4, 4, 4)),
    ('scheme=rk8', 'ho_resnet86_rk8', (1, 1, 1)),
    ('scheme=rk8_authors,dataset=cifar100', 'ho_resnet86_rk8_authors',
     (1, 1, 1)),
    ('layers=86,scheme=midpoint', 'ho_resnet86_midpoint', (7, 7, 7)),
    # 50 layers: 8 sub-blocks per stage, no registered name.
    ('scheme=rk4,layers=50', 'ho_resnet26_euler', (2, 2, 2)),
])
def test_config_picks_scheme_and_depth(arg, name, depth):
  config = config_flag.load(f'ho_resnet_cifar:{arg}')
  train_config.validate_config(config, num_devices=1)
  assert config.model.name == name
  assert config.model.kwargs.depth == depth
  assert config.model.kwargs.stacking == arg.split('scheme=')[1].split(',')[0]
  assert config.data.dataset == ('cifar100' if 'cifar100' in arg
                                 else 'cifar10')
  tc, opt = config.training, config.optimizer
  assert (tc.batch_size, tc.num_epochs, tc.label_smoothing) == (128, 200, 0.0)
  assert train_optimizer.peak_learning_rate(opt, 128) == pytest.approx(0.1)
  assert (opt.momentum, opt.nesterov, opt.weight_decay) == (0.9, False, 5e-4)
  assert (opt.schedule, opt.clipping, opt.warmup_epochs) == ('cosine', 0, 0)
  # 200 epochs of the 50,000 training images.
  assert train_config.get_steps(tc, 'num', batch_size=128,
                                num_examples=50_000) == 78_125


def test_config_by_path_and_default():
  by_path = config_flag.load(
      f'{EXPERIMENTS / "ho_resnet_cifar.py"}:scheme=rk4')
  assert by_path == config_flag.load('ho_resnet_cifar:scheme=rk4')
  assert config_flag.load('ho_resnet_cifar').model.name == 'ho_resnet26_rk4'


@pytest.mark.parametrize('arg, message', [
    ('scheme=rk5', "Did you mean 'rk8'"),
    ('sceme=rk4', "Did you mean 'scheme'"),
    ('runlcal', "Did you mean 'runlocal'"),
    ('dataset=cifar1000', "Did you mean 'cifar100'"),
    ('scheme=rk8,layers=26', 'e.g. layers=86'),
    ('layers=x', 'layers must be 6 m \\+ 2'),
    ('runlocal,digits', 'two different runs'),
])
def test_config_argument_errors(arg, message):
  with pytest.raises(config_flag.ConfigLoadError, match=message) as info:
    config_flag.load(f'ho_resnet_cifar:{arg}')
  assert len(str(info.value).splitlines()) == 1


def test_digits_form_trains_the_full_network_on_digits():
  config = config_flag.load('ho_resnet_cifar:scheme=midpoint,digits')
  train_config.validate_config(config, num_devices=1)
  assert config.data.dataset == 'digits' and 'width' not in config.model.kwargs
  assert train_config.durations(config) == (450, 0)


def test_one_runner_step_on_digits():
  config = config_flag.load('ho_resnet_cifar:scheme=rk4,runlocal')
  assert config.data.dataset == 'digits'
  config.model.kwargs.depth = (1, 1)
  config.model.kwargs.widths = (4, 8)
  config.model.kwargs.width = 1.0
  config.data.image_size = config.data.eval_image_size = 16
  config.training.batch_size = 8
  state, new, metrics, schedule = one_runner_step(config)
  assert int(new.step) == 1
  assert 1.0 < float(metrics['loss']) < 5.0  # About log(10) at init.
  assert float(schedule(0)) == pytest.approx(0.1 * 8 / 128)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                       state.params, new.params)
  # Every sub-block of both rk4 blocks (4 + 4) and the stem and classifier.
  assert sum(k.endswith('/conv1') for k in moved) == 8
  assert all(step > 0 for leaves in moved.values() for step in leaves.values())
