"""CIFAR-10 and CIFAR-100 through tensorflow-datasets and tf.data.

The standard CIFAR pipeline (He et al., 2016, Sec. 4.2; the torchvision
`RandomCrop(32, padding=4)` + `RandomHorizontalFlip` recipe):

* Train: zero-pad the 32x32 image by 4 px on each side (to 40x40, pixel
  value 0 before normalization), take a random 32x32 crop, flip
  horizontally with probability 1/2, optionally RandAugment, normalize with
  the data set's per-channel statistics (`DATASETS`), then CutMix/MixUp per
  batch as on ImageNet (`nfnets.data.augment`).
* Eval: the 32 px image, normalized.
* `image_size` / `eval_image_size` other than 32 resize the crop (train) or
  the image (eval) bilinearly to that size, e.g. to fine-tune an ImageNet
  model at its own resolution or to run a smoke test at 16 px; the
  augmentation itself is always done at the native 32 px.
  `base.preprocess_for_eval` reproduces the eval pixels for in-memory images.

Reading, sharding, seeding, resuming and eval padding are
`nfnets.data.tfds_common`'s, so the guarantees are ImageNet's: each process
reads its own contiguous share of the split (disjoint examples); the stream
is a function of (seed, process_index, process_count), every example's crop,
flip and RandAugment drawing from a stateless seed of (seed, process_index,
epoch, position in the epoch); and `start_step=k` gives exactly the batches a
fresh stream gives after k batches, skipping records before decoding (at
most one epoch of ~50,000 records of ~2.5 KB: about a second).
"""
import ml_collections
import tensorflow as tf

from nfnets.data import base
from nfnets.data import tfds_common

# Native resolution and the random crop's zero padding per side (the
# standard 4 px of He et al., 2016).
NATIVE_SIZE = 32
PADDING = 4

_PREPARE_HELP = """\
The tfds data set {name!r} is not prepared in {data_dir}. Prepare it once \
(downloads ~160 MB):
python -c "import tensorflow_datasets as tfds; \
tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare()\""""

# What an unprepared CIFAR raises (shared by every tfds data set).
DataNotPreparedError = tfds_common.DataNotPreparedError


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
  """Encoded PNG -> uint8 [32, 32, 3]."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [NATIVE_SIZE, NATIVE_SIZE, 3])


def _to_size(image: tf.Tensor, size: int,
             data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 or float [32, 32, 3] -> float32 [size, size, 3] on 0..255."""
  if size == NATIVE_SIZE:
    return tf.cast(image, tf.float32)
  return tfds_common.resize(image, size,
                            base.get_spec(data_config.dataset).resize_method)


def pad_and_crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random 32x32 crop of the image zero-padded by `PADDING` px per side.

  Args:
    image: [32, 32, 3] image.
    seed: [2] int stateless seed.

  Returns:
    [32, 32, 3], the image shifted by up to `PADDING` px along each axis
    (offsets uniform in [-PADDING, PADDING]), with zeros where it moved out.
  """
  padded = tf.pad(image, [[PADDING, PADDING], [PADDING, PADDING], [0, 0]])
  return tf.image.stateless_random_crop(
      padded, [NATIVE_SIZE, NATIVE_SIZE, 3], seed)


def _train_example(index: tf.Tensor, example: dict[str, tf.Tensor], *,
                   epoch_seed: int, data_config: ml_collections.ConfigDict
                   ) -> dict[str, tf.Tensor]:
  """Encoded record -> {'images': float32 [S, S, 3], 'labels': int32 []}."""
  crop_seed, flip_seed, ra_seed = tfds_common.train_seeds(epoch_seed, index)
  image = pad_and_crop(_decode(example['image']), crop_seed)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = _to_size(image, data_config.image_size, data_config)
  return tfds_common.finish_train_example(image, example['label'], ra_seed,
                                          data_config)


def eval_image(image_bytes: tf.Tensor,
               data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """Encoded image -> float32 [S, S, 3] unnormalized, on 0..255.

  The 32 px image, resized bilinearly only if `eval_image_size` is not 32
  (what `base.preprocess_for_eval` does with eval_crop 'resize').
  """
  return _to_size(_decode(image_bytes), data_config.eval_image_size,
                  data_config)


# The module contract of `nfnets.data` for this data set.
_PIPELINE = tfds_common.TfdsPipeline(
    train_example=_train_example, eval_image=eval_image,
    prepare_help=_PREPARE_HELP)
check_available = _PIPELINE.check_available
num_examples = _PIPELINE.num_examples
build_train = _PIPELINE.build_train
build_eval = _PIPELINE.build_eval
