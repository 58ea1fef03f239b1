"""ImageNet (ILSVRC-2012) through tensorflow-datasets and tf.data.

Train: inception-style random crop (decoding only the crop), resize to
`image_size`, horizontal flip, optional RandAugment, normalization, then
CutMix/MixUp per batch. Eval: full decode, then the geometry
`data.eval_crop` names (see `nfnets.data.base.preprocess_for_eval`, which
reproduces it for in-memory images).

Reading, sharding, seeding, resuming and eval padding are
`nfnets.data.tfds_common`'s: each process reads its own contiguous share of
the split (`tfds.even_splits`, what `tfds.split_for_jax_process` does), so
multi-host runs read disjoint examples; an epoch's file order and shuffle use
seeds derived from (seed, process_index, epoch), and every example's
augmentation a stateless seed from (seed, process_index, epoch, position in
the epoch). An epoch is `min_p(shard_p) // batch_size` steps on every
process. Resuming at step k rebuilds epoch k // steps_per_epoch and skips
the first (k mod steps_per_epoch) * batch_size records *before* decoding:
the cost is reading (not decoding) at most one epoch of this process's
records, about 1/process_count of the 140 GB train set, and a new epoch
starts a fresh pipeline (one shuffle-buffer fill of stall per epoch).
"""
import ml_collections
import tensorflow as tf

from nfnets.data import augment
from nfnets.data import base
from nfnets.data import tfds_common

# Three lines: what is missing and where the archives come from, then the
# command (the archives cannot be downloaded for the user).
_PREPARE_HELP = """\
The tfds data set {name!r} is not prepared in {data_dir}. Put \
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org in a \
directory M and prepare it once (hours; ~300 GB free):
python -c "import tensorflow_datasets as tfds; \
tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare(\
download_config=tfds.download.DownloadConfig(manual_dir='M'))\""""


# What an unprepared ImageNet raises (shared by every tfds data set).
DataNotPreparedError = tfds_common.DataNotPreparedError


def _train_example(index: tf.Tensor, example: dict[str, tf.Tensor], *,
                   epoch_seed: int, data_config: ml_collections.ConfigDict
                   ) -> dict[str, tf.Tensor]:
  """Encoded record -> {'images': float32 [S, S, 3], 'labels': int32 []}."""
  spec = base.get_spec(data_config.dataset)
  crop_seed, flip_seed, ra_seed = tfds_common.train_seeds(epoch_seed, index)
  image = augment.decode_and_random_crop(example['image'], crop_seed)
  image = tfds_common.resize(image, data_config.image_size, spec.resize_method)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tfds_common.finish_train_example(image, example['label'], ra_seed,
                                          data_config)


def eval_image(image_bytes: tf.Tensor,
               data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """Encoded image -> float32 [S, S, 3] unnormalized, on 0..255.

  Same geometry as `base.preprocess_for_eval`.
  """
  spec = base.get_spec(data_config.dataset)
  size, pad = data_config.eval_image_size, data_config.crop_padding
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  crop = base.eval_crop(data_config)
  if crop == 'resize':
    return tfds_common.resize(image, size, spec.resize_method)
  if crop == 'resize_crop':
    image = tfds_common.resize(image, size + pad, spec.resize_method)
    top = (pad + 1) // 2
    return image[top:top + size, top:top + size]
  # 'aspect': the window of base.center_crop_window, in tensors.
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  shorter = tf.cast(tf.minimum(height, width), tf.float64)
  side = tf.maximum(tf.cast(size / (size + pad) * shorter, tf.int32), 1)
  top, left = (height - side + 1) // 2, (width - side + 1) // 2
  return tfds_common.resize(image[top:top + side, left:left + side], size,
                            spec.resize_method)


# The module contract of `nfnets.data` for this data set.
_PIPELINE = tfds_common.TfdsPipeline(
    train_example=_train_example, eval_image=eval_image,
    prepare_help=_PREPARE_HELP)
check_available = _PIPELINE.check_available
num_examples = _PIPELINE.num_examples
build_train = _PIPELINE.build_train
build_eval = _PIPELINE.build_eval
