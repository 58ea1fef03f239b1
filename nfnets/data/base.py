"""The `config.data` group, its validation, and the shared eval preprocessing.

Per-data-set facts (class count, split sizes, normalization statistics, eval
resizing, pipeline module) live in one table, `DATASETS` (defined in
`nfnets.data.specs`, read through this module); code reads them from there
and never branches on a data set's name.
"""
import difflib
from typing import Optional, Union

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np

from nfnets import errors
# The table, re-exported: callers read it as `base.DATASETS` etc.
from nfnets.data.specs import DATASET_OPTIONS
from nfnets.data.specs import DatasetSpec
from nfnets.data.specs import DATASETS
from nfnets.data.specs import EVAL_CROPS

ArrayLike = Union[np.ndarray, jax.Array]

def default_config(dataset: str = 'digits') -> ml_collections.ConfigDict:
  """The `config.data` group with every field the pipelines read.

  Fields left as typed placeholders (None) take the data set's own default
  from `DATASETS`, so `--config.data.dataset=imagenet2012` switches splits
  and eval geometry consistently. The fields of `DATASET_OPTIONS` are read
  by some data sets only (`DatasetSpec.options`); `validate` refuses a value
  other than this function's on a data set that would ignore it (so a
  digits config switched to ImageNet also needs `max_shift=0`).

  Args:
    dataset: a key of `DATASETS`; sets the default image sizes.

  Returns:
    A ConfigDict; see the field comments for meaning and units.
  """
  spec = get_spec(dataset)
  return ml_collections.ConfigDict(dict(
      dataset=dataset,
      # tfds data sets only: the tfds data directory (None: tfds' default,
      # ~/tensorflow_datasets).
      data_dir=config_dict.placeholder(str),
      train_split=config_dict.placeholder(str),
      eval_split=config_dict.placeholder(str),
      # Number of labels; None: the data set's own.
      num_classes=config_dict.placeholder(int),
      # Train and eval resolutions in pixels per side.
      image_size=spec.image_size,
      eval_image_size=spec.eval_image_size,
      # Eval geometry: 'resize' (straight to eval_image_size), 'resize_crop'
      # (resize to eval_image_size + crop_padding, then center crop; how the
      # released NFNets were evaluated), 'aspect' (central square crop of
      # eval_image_size / (eval_image_size + crop_padding) of the shorter
      # side, then resize). None: the data set's default.
      eval_crop=config_dict.placeholder(str),
      # ImageNet only: the other data sets are evaluated with a plain resize.
      crop_padding=32,
      # Digits only: random translation by up to this many pixels (at
      # image_size resolution) per example; 0 disables it. ImageNet and
      # CIFAR use their own random crops and a horizontal flip instead, so
      # their default is 0 (off).
      max_shift=2 if 'max_shift' in spec.options else 0,
      # RandAugment: number of ops per image (0 disables) and magnitude on
      # the AutoAugment scale where 10 is each op's nominal maximum. Digits
      # runs the same TF ops eagerly per batch (imports TensorFlow);
      # synthetic data is not augmented (layers must stay 0).
      randaugment_layers=0,
      randaugment_magnitude=10.0,
      # Beta(alpha, alpha) parameters; 0 disables. With both on, ImageNet
      # and CIFAR CutMix the first half of each batch and MixUp the second;
      # digits mixes stream positions in pairs (2k, 2k + 1), CutMix for even
      # k; synthetic batches carry random mix_labels and Beta mix_ratios.
      mixup_alpha=0.0,
      cutmix_alpha=0.0,
      # tfds data sets only (tf.data): encoded examples held in the shuffle
      # buffer per process (ImageNet JPEGs average ~110 KB, so 10k is ~1 GB
      # of host memory), and batches prepared ahead of the training loop.
      shuffle_buffer=10_000,
      prefetch=2,
  ))


def get_spec(dataset: str) -> DatasetSpec:
  """The `DatasetSpec` for a name; unknown names list the known ones."""
  if dataset not in DATASETS:
    close = difflib.get_close_matches(str(dataset), DATASETS, n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    raise ValueError(
        f'Unknown data set {dataset!r}; {hint}known data sets: '
        f'{", ".join(sorted(DATASETS))}.')
  return DATASETS[dataset]


def train_split(data_config: ml_collections.ConfigDict) -> str:
  """The configured train split name (or the data set's default)."""
  return data_config.train_split or get_spec(data_config.dataset).train_split


def eval_split(data_config: ml_collections.ConfigDict) -> str:
  """The configured eval split name (or the data set's default)."""
  return data_config.eval_split or get_spec(data_config.dataset).eval_split


def eval_crop(data_config: ml_collections.ConfigDict) -> str:
  """The configured eval geometry (or the data set's default)."""
  return data_config.eval_crop or get_spec(data_config.dataset).eval_crop


def num_classes(data_config: ml_collections.ConfigDict) -> int:
  """Number of labels the model's classifier needs."""
  if data_config.num_classes is not None:
    return data_config.num_classes
  return get_spec(data_config.dataset).num_classes


def _split_base(split: str) -> str:
  # tfds slicing syntax ('train[:10%]', 'validation[5000:]') names its base
  # split before the bracket.
  return split.split('[', 1)[0]


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError on a config the pipelines cannot run.

  Cheap (no data is read), so the runner calls it before any compute. A
  field of `DATASET_OPTIONS` that the data set does not read must keep its
  default: e.g. `data_dir` set for 'digits' is an error, not a no-op.
  """
  spec = get_spec(data_config.dataset)
  if not spec.stand_in:
    _check_options(data_config)
  for split in (train_split(data_config), eval_split(data_config)):
    if _split_base(split) not in spec.splits:
      raise ValueError(
          f'Unknown split {split!r} for data set {data_config.dataset!r}; '
          f'known splits: {", ".join(spec.splits)}.')
    if split != _split_base(split) and spec.source != 'tfds':
      raise ValueError(
          f'Split {split!r}: slices are a tensorflow-datasets feature and '
          f'{data_config.dataset!r} is not read through it; use one of '
          f'{", ".join(spec.splits)}.')
  if eval_crop(data_config) not in spec.eval_crops and not spec.stand_in:
    raise ValueError(
        f'eval_crop for {data_config.dataset!r} must be one of '
        f'{spec.eval_crops}, got {data_config.eval_crop!r}.')
  for field in ('image_size', 'eval_image_size'):
    if data_config[field] < 1:
      raise ValueError(f'data.{field} must be positive, got '
                       f'{data_config[field]}.')
  for field in ('mixup_alpha', 'cutmix_alpha', 'randaugment_magnitude'):
    if data_config[field] < 0:
      raise ValueError(f'data.{field} must be >= 0, got {data_config[field]}.')
  for field in ('randaugment_layers', 'max_shift', 'crop_padding'):
    if data_config[field] < 0:
      raise ValueError(f'data.{field} must be >= 0, got {data_config[field]}.')
  if data_config.num_classes is not None and data_config.num_classes < 1:
    raise ValueError(f'data.num_classes must be positive, got '
                     f'{data_config.num_classes}.')


def _check_options(data_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a changed field the configured data set ignores."""
  dataset = data_config.dataset
  spec = get_spec(dataset)
  defaults = default_config(dataset)
  for field in DATASET_OPTIONS:
    value = data_config[field]
    if field in spec.options or value == defaults[field]:
      continue
    readers = [name for name, s in DATASETS.items() if field in s.options]
    tfds_only = all(DATASETS[name].source == 'tfds' for name in readers)
    who = (f'tfds data sets ({", ".join(readers)})' if tfds_only
           else ', '.join(map(repr, readers)))
    keep = ('leave it unset' if defaults[field] is None
            else f'use its default ({defaults[field]!r})')
    hint = ''
    if tfds_only and spec.source == 'bundled':
      hint = (", or for an ImageNet smoke run use an ImageNet recipe's "
              "'runlocal,imagenet' form (e.g. "
              '--config=experiments/nfnet_f0.py:runlocal,imagenet)')
    raise ValueError(
        f'data.{field} is only read by {who}; this config uses {dataset!r}, '
        f'which would ignore data.{field}={value!r}: {keep}{hint}.')


def mean_std(data_config: ml_collections.ConfigDict
             ) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel normalization constants on the 0..255 scale, each [3]."""
  spec = get_spec(data_config.dataset)
  return (np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32))


def normalize(images: ArrayLike,
              data_config: ml_collections.ConfigDict) -> jax.Array:
  """Standardizes images on the 0..255 scale: (x - mean) / std per channel.

  Args:
    images: [..., 3] uint8 or float with values in 0..255.
    data_config: the `config.data` group (picks the statistics).

  Returns:
    float32 array of the same shape.
  """
  mean, std = mean_std(data_config)
  return (jnp.asarray(images, jnp.float32) - mean) / std


# Float images are read as 0..1; values this far outside still count as in
# range (rounding from a resize or a colour conversion).
_FLOAT_RANGE_TOLERANCE = 1e-3


def check_images(images: np.ndarray) -> None:
  """Raises `InputError` for images `preprocess_for_eval` would misread.

  The rules: a batch is [N, H, W] (grayscale), [N, H, W, 1] or
  [N, H, W, 3]; a 3-D array whose last axis is 1 or 3 is refused, since it
  reads as one unbatched image just as well (pass `images[None]` for one
  image, or [N, H, W, 1] for grayscale). uint8 images are 0..255; float
  images must be finite and within [0, 1], and have at least one pixel.
  """
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype,
                                                    np.floating):
    raise errors.InputError(
        f'Images must be uint8 (0..255) or float (0..1), got {images.dtype}.')
  if images.ndim == 3 and images.shape[-1] in (1, 3):
    raise errors.InputError(
        f'Images of shape {images.shape} could be one unbatched image; pass '
        'a batch: images[None] for one image, [N, H, W, 1] for grayscale.')
  if images.ndim not in (3, 4) or (images.ndim == 4 and
                                   images.shape[-1] not in (1, 3)):
    raise errors.InputError(
        'Images must be a batch [N, H, W], [N, H, W, 1] or [N, H, W, 3]; got '
        f'shape {images.shape}.')
  if 0 in images.shape[1:3]:
    raise errors.InputError(
        f'Images of shape {images.shape} have no pixels (height or width 0).')
  if images.dtype != np.uint8 and images.size:
    if not np.all(np.isfinite(images)):
      raise errors.InputError('Images contain NaN or infinite values.')
    low, high = float(images.min()), float(images.max())
    tol = _FLOAT_RANGE_TOLERANCE
    if low < -tol or high > 1 + tol:
      raise errors.InputError(
          f'Float images must be in [0, 1], got values in [{low:.4g}, '
          f'{high:.4g}]; divide 0..255 values by 255, or pass uint8.')


def _to_rgb_255(images: ArrayLike) -> jax.Array:
  """[N, H, W], [N, H, W, 1] or [N, H, W, 3] -> float32 [N, H, W, 3], 0..255."""
  if not isinstance(images, jax.core.Tracer):
    check_images(np.asarray(images))
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32)
  else:
    images = images.astype(jnp.float32) * 255.0
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return images


def center_crop_window(height: int, width: int, size: int,
                       padding: int) -> tuple[int, int, int]:
  """Square central crop (top, left, side) for the 'aspect' eval geometry.

  The side is size / (size + padding) of the shorter image side (rounded
  down, as in the reference release), so the crop keeps the same fraction of
  the image as 'resize_crop' does on a square. The tf.data path computes the
  same window.
  """
  side = max(1, int(size / (size + padding) * min(height, width)))
  return (height - side + 1) // 2, (width - side + 1) // 2, side


def preprocess_for_eval(images: ArrayLike,
                        data_config: ml_collections.ConfigDict,
                        resize_method: Optional[str] = None) -> jax.Array:
  """The eval pipeline's geometry and normalization for in-memory images.

  Lets `predict` on arbitrary images see exactly what evaluation sees.

  Args:
    images: uint8 (0..255) or floating (0..1) images, [N, H, W], [N, H, W, 1]
      or [N, H, W, 3]; grayscale is replicated to RGB. `check_images` says
      what is refused.
    data_config: the `config.data` group (eval_image_size, eval_crop,
      crop_padding and the data set's statistics).
    resize_method: overrides the data set's resize method.

  Returns:
    float32 [N, S, S, 3] normalized images, S = data_config.eval_image_size.
  """
  spec = get_spec(data_config.dataset)
  method = resize_method or spec.resize_method
  method = {'bicubic': 'cubic'}.get(method, method)
  size = data_config.eval_image_size
  pad = data_config.crop_padding
  images = _to_rgb_255(images)
  n, h, w, c = images.shape
  crop = eval_crop(data_config)
  # antialias=False matches tf.image.resize's default used by the tf.data
  # eval pipeline.
  if crop == 'resize':
    images = jax.image.resize(images, (n, size, size, c), method,
                              antialias=False)
  elif crop == 'resize_crop':
    big = size + pad
    images = jax.image.resize(images, (n, big, big, c), method,
                              antialias=False)
    top = (big - size + 1) // 2
    images = images[:, top:top + size, top:top + size]
  elif crop == 'aspect':
    top, left, side = center_crop_window(h, w, size, pad)
    images = images[:, top:top + side, left:left + side]
    images = jax.image.resize(images, (n, size, size, c), method,
                              antialias=False)
  else:
    raise ValueError(f'eval_crop must be one of {EVAL_CROPS}, got {crop!r}.')
  if method == 'cubic':
    # Cubic overshoots; the tf.data path clips to the valid pixel range too.
    images = jnp.clip(images, 0.0, 255.0)
  return normalize(images, data_config)
