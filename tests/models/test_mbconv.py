"""The MBConv pieces EfficientNet and MnasNet share: the reference's rounding,
the block's SE width, expansion, residual and drop-connect rules."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets.models import efficientnet
from nfnets.models import mbconv


@pytest.mark.parametrize('channels, multiplier, expected', [
    (32, 1.0, 32),     # B0's stem.
    (32, 1.1, 32),     # 35.2 -> 32: within 10%, so rounded down.
    (32, 1.2, 40),     # 38.4 -> 40 (B3's stem).
    (1280, 1.4, 1792),  # B4's head.
    (1280, 1.8, 2304),  # B6's head.
    (320, 2.0, 640),   # B7's last stage.
    (112, 1.2, 136),   # 134.4 -> 136.
    (24, 0.75, 24),    # 18 -> 16 is below 0.9 * 18 = 16.2: plus 8.
    (16, 0.5, 8),      # The minimum is one divisor.
    (16, 0.25, 8),
    (83, 1.0, 80),     # Rounds to nearest: 83 -> 80, but 84 -> 88.
    (84, 1.0, 88),
])
def test_round_filters_worked_values(channels, multiplier, expected):
  assert mbconv.round_filters(channels, multiplier) == expected


def test_round_filters_matches_its_formula_everywhere():
  for c in range(1, 400):
    for m in (0.25, 0.5, 0.75, 1.0, 1.1, 1.3, 1.6, 2.0):
      v = c * m
      want = max(8, int(v + 4) // 8 * 8)
      want += 8 if want < 0.9 * v else 0
      got = mbconv.round_filters(c, m)
      assert got == want and got % 8 == 0 and got >= 0.9 * v


def test_round_repeats_is_the_ceiling_not_the_nearest():
  assert mbconv.round_repeats(1, 1.1) == 2  # round() would give 1.
  assert mbconv.round_repeats(3, 1.4) == 5  # 4.2 -> 5.
  assert mbconv.round_repeats(4, 3.1) == 13
  assert mbconv.round_repeats(2, 1.0) == 2
  # B7's stages: 55 blocks in all.
  assert efficientnet.EFFICIENTNET_VARIANTS['b7'].depth == (
      4, 7, 7, 10, 10, 13, 4)


def _block_params(**kwargs):
  def f(x):
    block = mbconv.MBConvBlock(
        16, kwargs.pop('out_ch', 16), activation=jax.nn.silu,
        se_activation=jax.nn.silu, conv=mbconv.tf_conv,
        norm=lambda n: lambda x, is_training: x, **kwargs)
    return block(x, is_training=True)
  fwd = hk.transform_with_state(f)
  return jax.eval_shape(fwd.init, jax.random.PRNGKey(0),
                        jnp.zeros((1, 8, 8, 16)))[0]


def test_se_width_comes_from_the_block_input_not_the_expanded_width():
  params = _block_params(kernel=5, stride=1, expansion=6, se_ratio=0.25,
                         residual=True)
  # 16 inputs expand to 96; SE squeezes 96 -> int(16 * 0.25) = 4 -> 96.
  assert params['mb_conv_block/~/squeeze_excite/~/linear']['w'].shape == (
      96, 4)
  assert params['mb_conv_block/~/squeeze_excite/~/linear_1']['w'].shape == (
      4, 96)
  assert params['mb_conv_block/~/depthwise_conv']['w'].shape == (5, 5, 1, 96)
  assert params['mb_conv_block/~/expand_conv']['w'].shape == (1, 1, 16, 96)
  assert params['mb_conv_block/~/project_conv']['w'].shape == (1, 1, 96, 16)


def test_no_expand_conv_at_expansion_one_and_no_se_at_ratio_zero():
  params = _block_params(kernel=3, stride=2, expansion=1, se_ratio=0.0,
                         residual=False, out_ch=8)
  assert set(params) == {'mb_conv_block/~/depthwise_conv',
                         'mb_conv_block/~/project_conv'}


def test_a_residual_needs_stride_one_and_equal_widths():
  with pytest.raises(ValueError, match='stride 1 and equal widths'):
    _block_params(kernel=3, stride=2, expansion=6, se_ratio=0.25,
                  residual=True)


def test_efficientnet_b0_residuals_and_drop_connect_schedule():
  @hk.testing.transform_and_run
  def layout():
    net = efficientnet.EfficientNet(10, 'b0')
    return [(b.residual, b.drop_rate) for b in net.blocks]

  blocks = layout()
  assert len(blocks) == 16
  # A residual only where a stage repeats (stride 1, in == out): not at the
  # first block of any stage.
  firsts = {0, 1, 3, 5, 8, 11, 15}
  for i, (residual, rate) in enumerate(blocks):
    assert residual == (i not in firsts)
    # Survival 1 - 0.2 * i / N over the global index, residual blocks only.
    assert rate == pytest.approx(0.2 * i / 16 if residual else 0.0)


def test_drop_connect_keeps_whole_examples_and_rescales_survivors():
  rate = 0.5

  def f(x, is_training):
    block = mbconv.MBConvBlock(
        8, 8, kernel=3, stride=1, expansion=2, se_ratio=0.25, residual=True,
        activation=jax.nn.silu, se_activation=jax.nn.silu, conv=mbconv.tf_conv,
        norm=lambda n: lambda x, is_training: x, drop_rate=rate)
    return block(x, is_training)

  fwd = hk.transform_with_state(f)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 8))
  params, state = fwd.init(jax.random.PRNGKey(1), x, True)
  (out, branch), _ = fwd.apply(params, state, jax.random.PRNGKey(2), x, True)
  added = np.asarray(out - x)
  kept = np.all(np.isclose(added, branch / (1 - rate), atol=1e-5),
                axis=(1, 2, 3))
  dropped = np.all(added == 0.0, axis=(1, 2, 3))
  assert np.all(kept | dropped) and 16 < kept.sum() < 48
  # Evaluation adds every branch, unscaled.
  (out, branch), _ = fwd.apply(params, state, None, x, False)
  np.testing.assert_allclose(out, x + branch, atol=1e-6)


def test_tf_conv_initializes_depthwise_kernels_by_their_kxk_fan():
  def f(x):
    dense = mbconv.tf_conv(64, 3, name='dense')(x)
    depthwise = mbconv.tf_conv(32, 5, feature_group_count=32,
                               name='depthwise')(x)
    return dense, depthwise

  params = hk.transform(f).init(jax.random.PRNGKey(0),
                                jnp.zeros((1, 8, 8, 32)))
  # TF reference: N(0, 2 / fan_out) with fan_out = k * k * out, and k * k for
  # a depthwise kernel.
  assert np.std(params['dense']['w']) == pytest.approx(
      (2 / (9 * 64)) ** 0.5, rel=0.05)
  assert np.std(params['depthwise']['w']) == pytest.approx(
      (2 / 25) ** 0.5, rel=0.1)
  assert set(params['dense']) == {'w'}  # No bias: BatchNorm follows.
