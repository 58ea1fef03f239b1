"""The image ops of RandAugment, in TensorFlow, with PIL's semantics.

Each takes and returns a float32 [H, W, 3] image with values in [0, 255];
the colour ops match PIL's ImageOps/ImageEnhance (to within PIL's rounding
through uint8), the geometric ops move whole pixels (nearest pixel, grey
outside). `nfnets.data.augment` maps RandAugment's magnitudes to their
arguments.

They run per image inside tf.data on CPU, where TensorFlow's kernels differ
in speed by several times between formulations of the same arithmetic
(broadcasting a [3] vector, `tf.where`, reductions over a short axis): the
ones here were timed, and give the same values as the straightforward ones.
"""
import math
from typing import Sequence

import tensorflow as tf

FILL = 128.0  # Grey fill for pixels geometric ops pull from outside.


def _blend(degenerate: tf.Tensor, image: tf.Tensor,
           factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0., 255.)


def _select(condition: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
  """`tf.where(condition, x, y)` for operands of one shape.

  TensorFlow's CPU `tf.where` (SelectV2, which broadcasts) runs ~5x slower
  than the same-shape Select on an image.
  """
  return tf.raw_ops.Select(condition=condition, x=x, y=y)


def _rows(image: tf.Tensor) -> tf.Tensor:
  """[H, W, C] -> [H, W * C].

  With `_row_of`, for per-channel arithmetic: TensorFlow's CPU broadcasting
  of a [C] vector over [H, W, C] runs ~4x slower than of a [W * C] row.
  """
  return tf.reshape(image, [tf.shape(image)[0], -1])


def _row_of(values: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
  """Per-channel `values` [C] repeated along a row of `image` [H, W, C]."""
  return tf.tile(values, [tf.shape(image)[1]])


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """ITU-R 601-2 luma as PIL computes it, [H, W, 1]."""
  # Three slices, not a reduction over the last axis: TensorFlow's CPU
  # reduction over an axis of 3 runs ~10x slower than these multiply-adds.
  return (image[..., 0:1] * 0.299 + image[..., 1:2] * 0.587 +
          image[..., 2:3] * 0.114)


def _channel_extremes(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-channel (min, max) of [H, W, 3], each [3].

  Reduced over rows first ([H, W * 3] -> [W * 3]) then columns: TensorFlow's
  CPU reduction of [H, W, 3] over (0, 1) vectorizes over the 3 channels
  alone and runs several times slower.
  """
  rows = _rows(image)
  lo = tf.reduce_min(tf.reshape(tf.reduce_min(rows, 0), [-1, 3]), 0)
  hi = tf.reduce_max(tf.reshape(tf.reduce_max(rows, 0), [-1, 3]), 0)
  return lo, hi


# ---------------------------------------------------------------- pixel ops


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255.0 - image


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """Inverts pixels at or above `threshold`."""
  return _select(image < threshold, image, 255.0 - image)


def solarize_add(image: tf.Tensor, addition: tf.Tensor,
                 threshold: float = 128.0) -> tf.Tensor:
  """Adds `addition` to pixels below `threshold`."""
  added = tf.clip_by_value(image + addition, 0.0, 255.0)
  return _select(image < threshold, added, image)


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """Keeps the `bits` most significant bits of each 8-bit value."""
  shift = tf.cast(8 - bits, tf.uint8)
  quantized = tf.cast(image, tf.uint8)
  quantized = tf.bitwise.left_shift(tf.bitwise.right_shift(quantized, shift),
                                    shift)
  return tf.cast(quantized, tf.float32)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Saturation: 0 gives grayscale, 1 the image."""
  return _blend(_grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Contrast against the mean gray level (PIL ImageEnhance.Contrast)."""
  mean = tf.reduce_mean(tf.round(_grayscale(image)))
  return _blend(mean, image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blend with PIL's SMOOTH-filtered image; border pixels stay unfiltered."""
  kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1],
                                  'VALID')[0]
  smooth = tf.round(smooth)
  # Reinstate the one-pixel border the VALID convolution dropped.
  middle = tf.concat([image[1:-1, :1], smooth, image[1:-1, -1:]], axis=1)
  degenerate = tf.concat([image[:1], middle, image[-1:]], axis=0)
  return _blend(degenerate, image, factor)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel to span [0, 255] (PIL ImageOps.autocontrast)."""
  lo, hi = _channel_extremes(image)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  stretched = tf.clip_by_value(
      tf.floor((_rows(image) - _row_of(lo, image)) * _row_of(scale, image)),
      0.0, 255.0)
  stretched = tf.reshape(stretched, tf.shape(image))
  # A constant channel stays as it is; the broadcast select is slow, so it
  # only runs when a channel is constant.
  return tf.cond(tf.reduce_all(hi > lo), lambda: stretched,
                 lambda: tf.where(hi > lo, stretched, image))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Per-channel histogram equalization (PIL ImageOps.equalize).

  The three channels' 256-bin histograms come from one `bincount` of the
  8-bit values offset by 256 per channel, and their lookup tables apply as
  one gather.
  """
  values = tf.reshape(
      _rows(tf.cast(image, tf.int32)) + _row_of(tf.constant([0, 256, 512]),
                                                image), [-1])
  histograms = tf.reshape(
      tf.math.bincount(values, minlength=768, maxlength=768),
      [3, 256])  # [3, 256]
  # The count of each channel's largest value (its last nonzero bin).
  last_bin = tf.reduce_max(
      tf.where(histograms > 0, tf.range(256)[None], -1), axis=1)
  last = tf.gather(histograms, last_bin, batch_dims=1)
  step = (tf.reduce_sum(histograms, axis=1) - last) // 255  # [3]
  luts = ((tf.cumsum(histograms, axis=1) + step[:, None] // 2) //
          tf.maximum(step, 1)[:, None])
  luts = tf.clip_by_value(
      tf.concat([tf.zeros([3, 1], tf.int32), luts[:, :-1]], 1), 0, 255)
  equalized = tf.reshape(
      tf.cast(tf.gather(tf.reshape(luts, [-1]), values), tf.float32),
      tf.shape(image))
  # A channel of (nearly) one value stays as it is; the broadcast select is
  # slow, so it only runs for such images.
  return tf.cond(tf.reduce_all(step > 0), lambda: equalized,
                 lambda: tf.where(step > 0, equalized, image))


def _round_half_away(x: tf.Tensor) -> tf.Tensor:
  """Rounds halves away from zero, as C's `round` (tf.round rounds to even).
  """
  return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def _transform(image: tf.Tensor, transform: Sequence[tf.Tensor]
               ) -> tf.Tensor:
  """Affine warp, nearest pixel, grey outside the image.

  `transform` = (a0, a1, a2, b0, b1, b2) maps output pixel (x, y) to input
  (a0 x + a1 y + a2, b0 x + b1 y + b2). The same arithmetic and rounding as
  `tf.raw_ops.ImageProjectiveTransformV3(interpolation='NEAREST',
  fill_mode='CONSTANT')`, as one gather of whole pixels: that op computes
  the source position for every channel of every pixel and runs ~4x slower.
  """
  a0, a1, a2, b0, b1, b2 = [tf.cast(t, tf.float32) for t in transform]
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  # Full [H, W] grids: with broadcast operands, graph optimization
  # regroups the sums below by operand shape, which changes their float
  # rounding and so which pixel a coordinate near a half rounds to.
  xs, ys = tf.meshgrid(tf.cast(tf.range(width), tf.float32),
                       tf.cast(tf.range(height), tf.float32))  # [H, W]
  src_x = tf.cast(_round_half_away(a0 * xs + a1 * ys + a2), tf.int32)
  src_y = tf.cast(_round_half_away(b0 * xs + b1 * ys + b2), tf.int32)
  inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
  # Pixels from outside read an extra grey row after the image's pixels.
  index = _select(inside, src_y * width + src_x,
                  tf.fill(tf.shape(src_x), height * width))  # [H, W]
  pixels = tf.concat([tf.reshape(image, [-1, 3]),
                      tf.fill([1, 3], FILL)], axis=0)
  return tf.gather(pixels, index)


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
  """Rotates clockwise as displayed (rows pointing down) about the centre."""
  theta = degrees * (math.pi / 180.0)
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cy, cx = (height - 1) / 2, (width - 1) / 2
  cos, sin = tf.cos(theta), tf.sin(theta)
  return _transform(image, [cos, sin, cx - cos * cx - sin * cy,
                            -sin, cos, cy + sin * cx - cos * cy])


def shear_x(image: tf.Tensor, shear: tf.Tensor) -> tf.Tensor:
  return _transform(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0])


def shear_y(image: tf.Tensor, shear: tf.Tensor) -> tf.Tensor:
  return _transform(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0])


def translate_x(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  """Moves content right by `pixels`."""
  return _transform(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0])


def translate_y(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  """Moves content down by `pixels`."""
  return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels])


def cutout(image: tf.Tensor, half_size: tf.Tensor,
           seed: tf.Tensor) -> tf.Tensor:
  """Greys a square of side 2 * half_size centred at a random pixel."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  cy = tf.random.stateless_uniform([], seed, 0, height, tf.int32)
  cx = tf.random.stateless_uniform([], seed[::-1], 0, width, tf.int32)
  top = tf.clip_by_value(cy - half_size, 0, height)
  bottom = tf.clip_by_value(cy + half_size, 0, height)
  left = tf.clip_by_value(cx - half_size, 0, width)
  right = tf.clip_by_value(cx + half_size, 0, width)
  # Stitched from slices: a broadcast tf.where costs several times more.
  grey = tf.fill([bottom - top, right - left, 3], FILL)
  band = tf.concat([image[top:bottom, :left], grey,
                    image[top:bottom, right:]], axis=1)
  return tf.concat([image[:top], band, image[bottom:]], axis=0)
