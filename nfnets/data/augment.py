"""Train-time augmentation in TensorFlow ops for the tf.data pipelines.

Every random draw here is stateless and takes an explicit `seed` ([2] int
tensor): the pipelines derive one seed per example (ImageNet from run seed,
process, epoch and example index; digits from run seed and global example
position), which makes a stream reproducible under parallel `map` and lets a
run resume at any step.

RandAugment is implemented here rather than imported because no maintained
library fits that requirement:
* `keras.layers.RandAugment` (Keras 3, already installed with TensorFlow)
  runs inside tf.data but draws from a stateful `SeedGenerator`; two seeded
  runs of the same parallel `map` gave different images, and a run cannot be
  resumed mid-stream. It also evaluates all of its ops per image and picks
  one with `where`, and samples strengths in [0, factor] rather than at a set
  magnitude.
* `tf-models-official` (`official.vision.ops.augment.RandAugment`) draws with
  stateful `tf.random.uniform` (same problem), pins `tensorflow~=2.20` (the
  full package, conflicting with tensorflow-cpu 2.21) and pulls
  tensorflow-text, opencv, pycocotools, kaggle and more.
* keras-cv is archived and also stateful.

The op set is that of the TPU AutoAugment/RandAugment code the NFNet release
used (Cubuk et al., 2020); strengths follow the "increasing" convention
(as in timm): each op grows monotonically with the magnitude, 10 being the
nominal maximum (30 degrees rotation, 0.3 shear, 45% translation, colour
factors 1 +/- 0.9, 4 bits of posterization, solarize threshold 0), with
larger magnitudes extrapolating linearly and clipped where an op saturates.
Each of the `num_layers` layers picks one op uniformly and applies it with
probability 1/2 (the TPU code uses a probability drawn from U(0.2, 0.8)).
"""
from typing import Callable

import tensorflow as tf

from nfnets.data import image_ops

_MAX_LEVEL = 10.0


def _uniform(seed: tf.Tensor, minval: float = 0.0,
             maxval: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval, maxval)


def _random_sign(value: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return tf.where(_uniform(seed) < 0.5, -value, value)


# ---------------------------------------------------------------- RandAugment


def _ops(image: tf.Tensor, level: tf.Tensor, seed: tf.Tensor
         ) -> list[Callable[[], tf.Tensor]]:
  """RandAugment's ops as thunks, with their magnitude-to-argument maps."""
  frac = level / _MAX_LEVEL
  side = tf.cast(tf.shape(image)[:2], tf.float32)
  sign_seed, cut_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  signed = lambda v: _random_sign(v, sign_seed)
  factor = lambda: tf.maximum(signed(0.9 * frac) + 1.0, 0.0)
  return [
      lambda: image_ops.autocontrast(image),
      lambda: image_ops.equalize(image),
      lambda: image_ops.invert(image),
      lambda: image_ops.rotate(image, signed(30.0 * frac)),
      lambda: image_ops.posterize(image, tf.clip_by_value(
          8 - tf.cast(4.0 * frac, tf.int32), 1, 8)),
      lambda: image_ops.solarize(image,
                                 tf.maximum(256.0 * (1.0 - frac), 0.0)),
      lambda: image_ops.color(image, factor()),
      lambda: image_ops.contrast(image, factor()),
      lambda: image_ops.brightness(image, factor()),
      lambda: image_ops.sharpness(image, factor()),
      lambda: image_ops.shear_x(image, signed(0.3 * frac)),
      lambda: image_ops.shear_y(image, signed(0.3 * frac)),
      lambda: image_ops.translate_x(image, signed(0.45 * frac * side[1])),
      lambda: image_ops.translate_y(image, signed(0.45 * frac * side[0])),
      # TPU cutout: half-size 40 px at 224 px and level 10.
      lambda: image_ops.cutout(
          image, tf.cast(40.0 / 224.0 * frac * side[0], tf.int32), cut_seed),
      lambda: image_ops.solarize_add(image,
                                     tf.minimum(110.0 * frac, 255.0)),
  ]


NUM_OPS = 16


@tf.function(input_signature=[
    tf.TensorSpec([None, None, 3], tf.float32),
    tf.TensorSpec([2], tf.int64),
    tf.TensorSpec([], tf.float32)])
def _randaugment_layer(image: tf.Tensor, seed: tf.Tensor,
                       level: tf.Tensor) -> tf.Tensor:
  """One RandAugment layer. Traced once per process (its 16 branches take
  seconds to build) and then called from every pipeline and layer."""
  choice_seed, apply_seed, op_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  op_index = tf.random.stateless_uniform([], choice_seed, 0, NUM_OPS,
                                         tf.int32)
  # Only the selected branch runs, and none when the layer is skipped: the
  # extra last branch is the identity.
  skip = _uniform(apply_seed) >= 0.5
  branches = _ops(image, level, op_seed) + [lambda: image]
  image = tf.switch_case(tf.where(skip, NUM_OPS, op_index), branches)
  return tf.ensure_shape(image, [None, None, 3])


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int,
                magnitude: float) -> tf.Tensor:
  """RandAugment (Cubuk et al., 2020) with stateless randomness.

  Args:
    image: float32 [H, W, 3] with values in [0, 255].
    seed: [2] int seed; equal seeds give equal outputs.
    num_layers: number of ops applied in sequence (N in the paper).
    magnitude: strength on the AutoAugment scale (M; 10 = nominal maximum).

  Returns:
    float32 [H, W, 3] in [0, 255].
  """
  level = tf.constant(float(magnitude), tf.float32)
  seeds = tf.random.experimental.stateless_split(
      tf.cast(seed, tf.int64), num_layers)
  static_shape = image.shape
  for i in range(num_layers):
    image = _randaugment_layer(image, tf.cast(seeds[i], tf.int64), level)
  return tf.ensure_shape(image, static_shape)


# ---------------------------------------------------------------- cropping


def decode_and_random_crop(image_bytes: tf.Tensor, seed: tf.Tensor,
                           area_range: tuple[float, float] = (0.08, 1.0),
                           aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                           fallback_fraction: float = 0.875) -> tf.Tensor:
  """Inception-style crop, decoding only the cropped JPEG region.

  Samples a box covering `area_range` of the image with aspect ratio in
  `aspect_range` (Szegedy et al., 2015); if 10 attempts fail, falls back to
  a central square crop of `fallback_fraction` of the shorter side.

  Args:
    image_bytes: scalar string, a JPEG.
    seed: [2] int seed.
    area_range: (min, max) fraction of the image area.
    aspect_range: (min, max) width / height.
    fallback_fraction: side of the fallback crop relative to the shorter side.

  Returns:
    uint8 [h, w, 3].
  """
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=aspect_range,
      area_range=area_range, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  crop_h, crop_w, _ = tf.unstack(size)
  # The sampler returns the whole image when every attempt failed.
  failed = tf.logical_and(tf.equal(crop_h, shape[0]),
                          tf.equal(crop_w, shape[1]))
  side = tf.cast(fallback_fraction * tf.cast(tf.minimum(shape[0], shape[1]),
                                             tf.float32), tf.int32)
  window = tf.where(
      failed,
      tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2,
                side, side]),
      tf.stack([offset_y, offset_x, crop_h, crop_w]))
  return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)


# ---------------------------------------------------------------- mixing


def sample_beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
  """One Beta(alpha, alpha) draw (scalar float32) from two stateless Gammas."""
  gammas = tf.random.stateless_gamma([2], seed, alpha=alpha)
  return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def mixup(images: tf.Tensor, labels: tf.Tensor, ratio: tf.Tensor
          ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Blends each example with the batch's reversed order.

  Returns (mixed images, mix_labels [B], mix_ratio float32 [B]); `ratio` is
  the weight of the original image.
  """
  mixed = ratio * images + (1.0 - ratio) * tf.reverse(images, [0])
  ratios = tf.fill(tf.shape(labels), tf.cast(ratio, tf.float32))
  return mixed, tf.reverse(labels, [0]), ratios


def cutmix_box(ratio: tf.Tensor, height: int, width: int, center_y: tf.Tensor,
               center_x: tf.Tensor) -> tf.Tensor:
  """The pasted rectangle (top, left, bottom, right), half-open, clipped.

  Its nominal area is (1 - ratio) of the image (CutMix, Yun et al., 2019);
  clipping at the border can make it smaller. Returns [4] int32.
  """
  cut = tf.sqrt(1.0 - ratio)
  cut_h = tf.cast(height * cut, tf.int32)
  cut_w = tf.cast(width * cut, tf.int32)
  return tf.stack([
      tf.clip_by_value(center_y - cut_h // 2, 0, height),
      tf.clip_by_value(center_x - cut_w // 2, 0, width),
      tf.clip_by_value(center_y + cut_h // 2, 0, height),
      tf.clip_by_value(center_x + cut_w // 2, 0, width),
  ])


def random_cutmix_box(ratio_seed: tf.Tensor, box_seed: tf.Tensor,
                      alpha: float, height: int, width: int) -> tf.Tensor:
  """`cutmix_box` with ratio ~ Beta(alpha, alpha) and a uniform centre pixel.
  """
  center = tf.random.stateless_uniform(
      [2], box_seed, 0, tf.int32.max, tf.int32) % [height, width]
  return cutmix_box(sample_beta(ratio_seed, alpha), height, width, center[0],
                    center[1])


def cutmix(images: tf.Tensor, labels: tf.Tensor, box: tf.Tensor
           ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Pastes the reversed batch into `box` (top, left, bottom, right).

  Returns (mixed images, mix_labels [B], mix_ratio float32 [B]) where
  mix_ratio is the fraction of pixels still from the original image.
  """
  height, width = images.shape[1], images.shape[2]
  top, left, bottom, right = tf.unstack(box)
  partner = tf.reverse(images, [0])
  # Stitched from slices: a broadcast tf.where over the batch costs ~3x more
  # on CPU.
  band = tf.concat([images[:, top:bottom, :left],
                    partner[:, top:bottom, left:right],
                    images[:, top:bottom, right:]], axis=2)
  mixed = tf.concat([images[:, :top], band, images[:, bottom:]], axis=1)
  mixed = tf.ensure_shape(mixed, images.shape)
  kept = 1.0 - tf.cast((bottom - top) * (right - left), tf.float32) / (
      height * width)
  ratios = tf.fill(tf.shape(labels), kept)
  return mixed, tf.reverse(labels, [0]), ratios


def mix_batch(batch: dict[str, tf.Tensor], seed: tf.Tensor,
              mixup_alpha: float, cutmix_alpha: float
              ) -> dict[str, tf.Tensor]:
  """CutMix on the first half and MixUp on the second (either may be off).

  Args:
    batch: {'images': float32 [B, H, W, C] (static shape), 'labels': [B]}.
    seed: [2] int seed.
    mixup_alpha: MixUp Beta parameter; 0 disables it.
    cutmix_alpha: CutMix Beta parameter; 0 disables it.

  Returns:
    The batch with mixed images, 'mix_labels' [B] and 'mix_ratio' [B].
  """
  images, labels = batch['images'], batch['labels']
  size, height, width = images.shape[0], images.shape[1], images.shape[2]
  if mixup_alpha > 0 and cutmix_alpha > 0:
    parts = [(0, size // 2, 'cutmix'), (size // 2, size, 'mixup')]
  elif cutmix_alpha > 0:
    parts = [(0, size, 'cutmix')]
  else:
    parts = [(0, size, 'mixup')]
  seeds = tf.random.experimental.stateless_split(seed, 2 * len(parts))
  outputs = []
  for i, (start, stop, kind) in enumerate(parts):
    ratio_seed, box_seed = seeds[2 * i], seeds[2 * i + 1]
    part_images, part_labels = images[start:stop], labels[start:stop]
    if kind == 'mixup':
      outputs.append(mixup(part_images, part_labels,
                           sample_beta(ratio_seed, mixup_alpha)))
    else:
      outputs.append(cutmix(part_images, part_labels, random_cutmix_box(
          ratio_seed, box_seed, cutmix_alpha, height, width)))
  batch = dict(batch)
  batch['images'] = tf.concat([o[0] for o in outputs], 0)
  batch['mix_labels'] = tf.cast(tf.concat([o[1] for o in outputs], 0),
                                tf.int32)
  batch['mix_ratio'] = tf.concat([o[2] for o in outputs], 0)
  return batch


def maybe_mix(batch: dict[str, tf.Tensor], seed: tf.Tensor,
              mixup_alpha: float, cutmix_alpha: float,
              ) -> dict[str, tf.Tensor]:
  """`mix_batch` when either strength is positive, else the batch as is."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return batch
  return mix_batch(batch, seed, mixup_alpha, cutmix_alpha)
