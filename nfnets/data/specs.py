"""The data set table: one `DatasetSpec` row per data set.

Per-data-set facts (class count, split sizes, normalization statistics, eval
resizing, pipeline module, the options its pipeline reads) live here; code
reads them through `nfnets.data.base` and never branches on a data set's
name. A new data set is its pipeline module plus its row in `DATASETS`.
"""
import dataclasses

EVAL_CROPS = ('resize', 'resize_crop', 'aspect')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about one data set.

  Attributes:
    num_classes: number of labels.
    splits: split name -> number of examples.
    train_split: split used for training unless the config names another.
    eval_split: split used for evaluation unless the config names another.
    mean: per-channel pixel mean on the 0..255 scale, [3].
    std: per-channel pixel standard deviation on the 0..255 scale, [3].
    resize_method: `jax.image.resize` / `tf.image.resize` method name.
    eval_crop: default eval geometry, one of `EVAL_CROPS`.
    eval_crops: the eval geometries its pipeline implements.
    image_size: default train resolution (pixels per side).
    eval_image_size: default eval resolution (pixels per side).
    source: 'tfds' (read through tensorflow-datasets from `data_dir`),
      'bundled' (ships inside a Python package; needs no download) or
      'synthetic' (generated in memory from the seed; reads nothing).
    module: its pipeline, the module `nfnets.data.<module>` (imported when
      first used, so TensorFlow is imported only by pipelines that need it).
    options: the fields of `DATASET_OPTIONS` its pipeline reads; the others
      must keep their defaults (`validate`).
    stand_in: it stands in for whatever data set a recipe names, for timing:
      the recipe's `DATASET_OPTIONS` and `eval_crop` are accepted and not
      read, so that `--config.data.dataset=synthetic` alone
      switches any recipe over.
  """
  num_classes: int
  splits: dict[str, int]
  train_split: str
  eval_split: str
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  resize_method: str
  eval_crop: str
  eval_crops: tuple[str, ...]
  image_size: int
  eval_image_size: int
  source: str
  module: str
  options: tuple[str, ...]
  stand_in: bool = False


# Fields of `config.data` that only some pipelines read. A field the
# configured data set does not read must keep its `default_config` value:
# a value the pipeline would ignore is a mistake, not a setting.
DATASET_OPTIONS = ('data_dir', 'crop_padding', 'shuffle_buffer', 'prefetch',
                   'max_shift', 'randaugment_layers')


DATASETS: dict[str, DatasetSpec] = {
    # sklearn's bundled 8x8 digits, split 80/20 stratified with a fixed seed.
    # Statistics are those of the native 8x8 training pixels (0..16 scaled to
    # 0..255); the mean does not change under bilinear upsampling, the std
    # shrinks by ~14% at 32 px, which only rescales the input.
    'digits': DatasetSpec(
        num_classes=10,
        splits={'train': 1437, 'test': 360},
        train_split='train',
        eval_split='test',
        mean=(77.8856,) * 3,
        std=(95.8691,) * 3,
        resize_method='bilinear',
        eval_crop='resize',
        eval_crops=('resize',),
        image_size=32,
        eval_image_size=32,
        source='bundled',
        module='digits',
        # Held in memory and cut by index (no tf.data); eval is a plain
        # resize, so crop_padding has nothing to pad.
        options=('max_shift', 'randaugment_layers'),
    ),
    # ILSVRC-2012 through tensorflow-datasets; the usual torchvision/TF-slim
    # normalization constants, as used by the reference NFNet release.
    'imagenet2012': DatasetSpec(
        num_classes=1000,
        splits={'train': 1_281_167, 'validation': 50_000},
        train_split='train',
        eval_split='validation',
        mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
        std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
        resize_method='bicubic',
        eval_crop='resize_crop',
        eval_crops=EVAL_CROPS,
        image_size=192,
        eval_image_size=256,
        source='tfds',
        module='imagenet',
        options=('data_dir', 'crop_padding', 'shuffle_buffer', 'prefetch',
                 'randaugment_layers'),
    ),
    # CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) through tensorflow-datasets
    # (CIFAR-100's 'label' is the fine label). Statistics: the per-channel
    # mean and std of the training pixels as the CIFAR literature uses them,
    # e.g. szagoruyko/wide-residual-networks (pytorch/main.py) and
    # uoguelph-mlrg/Cutout (train.py) for CIFAR-10, and 255 x (0.5071,
    # 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761) of
    # weiaicunzai/pytorch-cifar100 (conf/global_settings.py) for CIFAR-100.
    # Eval is the 32 px image itself (resized only if eval_image_size is
    # not 32), so crop_padding has nothing to pad.
    'cifar10': DatasetSpec(
        num_classes=10,
        splits={'train': 50_000, 'test': 10_000},
        train_split='train',
        eval_split='test',
        mean=(125.3, 123.0, 113.9),
        std=(63.0, 62.1, 66.7),
        resize_method='bilinear',
        eval_crop='resize',
        eval_crops=('resize',),
        image_size=32,
        eval_image_size=32,
        source='tfds',
        module='cifar',
        options=('data_dir', 'shuffle_buffer', 'prefetch',
                 'randaugment_layers'),
    ),
    'cifar100': DatasetSpec(
        num_classes=100,
        splits={'train': 50_000, 'test': 10_000},
        train_split='train',
        eval_split='test',
        mean=(129.3, 124.1, 112.4),
        std=(68.2, 65.4, 70.4),
        resize_method='bilinear',
        eval_crop='resize',
        eval_crops=('resize',),
        image_size=32,
        eval_image_size=32,
        source='tfds',
        module='cifar',
        options=('data_dir', 'shuffle_buffer', 'prefetch',
                 'randaugment_layers'),
    ),
    # Normal noise made once per process, for timing the device step alone.
    # The train split has ImageNet's size, so schedules given in epochs
    # behave as on ImageNet; the eval split is a few batches' worth, enough
    # for the runner's eval path. ImageNet's statistics and bicubic resize
    # serve `preprocess_for_eval` on real images; the batches themselves are
    # already standardized.
    'synthetic': DatasetSpec(
        num_classes=1000,
        splits={'train': 1_281_167, 'validation': 2048},
        train_split='train',
        eval_split='validation',
        mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
        std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
        resize_method='bicubic',
        eval_crop='resize',
        eval_crops=('resize',),
        image_size=224,
        eval_image_size=224,
        source='synthetic',
        module='synthetic',
        # Augmentation of noise would only add host work; MixUp/CutMix stay
        # (their targets change the step's loss).
        options=(),
        stand_in=True,
    ),
}
