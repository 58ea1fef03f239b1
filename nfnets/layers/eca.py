"""Efficient Channel Attention ([ECA-Net] Wang et al. 2020).

A channel gate like Squeeze-Excite's, without its two fully connected
layers: the globally average-pooled features [N, C] are convolved along the
channel axis by one small 1-D kernel shared by every channel, then squashed
by a sigmoid. Neighbouring channels interact, and the layer holds k weights
instead of SE's 2 C^2 r.

Reference:
  [ECA-Net] Wang, Wu, Zhu, Li, Zuo, Hu. "ECA-Net: Efficient Channel
    Attention for Deep Convolutional Neural Networks", CVPR 2020, sec. 3.
"""
from __future__ import annotations

import math
from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp


def eca_kernel_size(channels: int, gamma: float = 2.0,
                    beta: float = 1.0) -> int:
  """[ECA-Net] eq. 12's adaptive kernel size for `channels` channels.

  k = |log2(C) / gamma + beta / gamma| rounded to an odd integer, in timm's
  form: t = int(|log2(C) + beta| / gamma), k = t if t is odd else t + 1, and
  at least 3 (C = 256, 512 and 1536 all give 5).
  """
  if channels < 1:
    raise ValueError(f'channels must be positive, got {channels}.')
  t = int(abs(math.log2(channels) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


class ECA(hk.Module):
  """Efficient Channel Attention gate: mean over H, W -> 1-D conv -> sigmoid.

  Returns the gate [N, 1, 1, C] in (0, 1), to multiply the input by; NF
  blocks multiply their branch by gain * gate (gain 2, so that the gate's
  expected value of about 0.5 at init does not halve the signal, as with
  `SqueezeExcite`). The conv is a cross-correlation over the channel axis
  with zero padding of (k - 1) / 2 on each side and no bias:
  gate[c] = sigmoid(sum_j w[j] * pooled[c + j - (k - 1) / 2]).
  Parameter: `w` [k], initialised U(-1/sqrt(k), 1/sqrt(k)) (PyTorch's
  Conv1d default, which timm's ECA layer keeps).
  """

  def __init__(self, kernel_size: Optional[int] = None, gamma: float = 2.0,
               beta: float = 1.0, name: Optional[str] = None):
    """Builds the module.

    Args:
      kernel_size: odd width of the 1-D kernel k; None takes
        `eca_kernel_size` of the input's channel count with gamma, beta.
      gamma, beta: the adaptive rule's constants ([ECA-Net] eq. 12).
      name: module name.

    Raises:
      ValueError: an even or non-positive `kernel_size`.
    """
    super().__init__(name=name)
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
      raise ValueError('ECA kernel_size must be a positive odd integer (the '
                       f'padding keeps C channels), got {kernel_size}.')
    self.kernel_size, self.gamma, self.beta = kernel_size, gamma, beta

  def __call__(self, x: jax.Array) -> jax.Array:
    """Gate [N, 1, 1, C] for NHWC `x` [N, H, W, C]."""
    channels = x.shape[-1]
    k = self.kernel_size or eca_kernel_size(channels, self.gamma, self.beta)
    bound = 1.0 / math.sqrt(k)
    w = hk.get_parameter('w', (k,), x.dtype,
                         init=hk.initializers.RandomUniform(-bound, bound))
    pooled = jnp.mean(x, axis=(1, 2))  # [N, C]
    # The channels as a 1-D signal of one feature: [N, C, 1] (NWC) with a
    # [k, 1, 1] (WIO) kernel; lax convolutions are cross-correlations.
    logits = jax.lax.conv_general_dilated(
        pooled[:, :, None], w[:, None, None], window_strides=(1,),
        padding=[((k - 1) // 2, (k - 1) // 2)],
        dimension_numbers=('NWC', 'WIO', 'NWC'))
    return jax.nn.sigmoid(logits[:, :, 0])[:, None, None, :]
