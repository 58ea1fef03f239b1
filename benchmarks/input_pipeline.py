r"""ImageNet input-pipeline speed per core, stage by stage, against PIL.

    python -m benchmarks.input_pipeline --fake_dir=/tmp/fake_imagenet
    python -m benchmarks.input_pipeline --data_dir=/data/tfds --threads=1,2,4
    python -m benchmarks.input_pipeline --small --no_save   # seconds; a test

Measures images per second of the real tf.data pipelines,
`nfnets.data.build_train` (inception crop, 192 px, RandAugment 4 layers at
magnitude 10, MixUp/CutMix as in the NFNet recipe) and `build_eval`
(256 px, the recipe's resize-and-crop), and of each of their stages:
reading records, decoding (whole image, and only the random crop through
`decode_and_crop_jpeg`), resize and flip, RandAugment, normalization and
batching, MixUp/CutMix, and the host-to-device copy of a batch
(`jax.device_put`). Beside them, on the same JPEGs and cores, a plain
PIL + NumPy loader of the kind PyTorch users run (torchvision's
RandomResizedCrop and flip, a RandAugment with the same 16 ops and
magnitudes through PIL's ImageOps/ImageEnhance, float conversion and
normalization, MixUp/CutMix in NumPy; `--threads` worker processes like a
DataLoader's). A stage row is cumulative (each adds one step to the row
above); its `+ms` column is what that step costs per image and core.

Each setting of `--threads` runs in a fresh worker process pinned to that
many cores (`os.sched_setaffinity`), with TensorFlow's intra- and inter-op
pools and tf.data's private pool of the stage pipelines set to that size,
so the per-core figures are honest on a machine with more cores. On a
shared machine the figures are noisy: the record keeps the load average
(`os.getloadavg()`) around each worker.

Without `--data_dir` the data is a fake ImageNet (`benchmarks.fake_imagenet`:
scikit-image's photographs re-encoded at ImageNet's sizes, ~400 x 340 px and
~110 KB a JPEG), built in `--fake_dir` (kept and reused) or in a temporary
directory. `--data_dir` reads a prepared tfds `imagenet2012` instead. One
JSON line per run is appended to `benchmarks/results/input_pipeline.jsonl`.
Flags are absl's; the dashed spellings (`--fake-dir`) work too.
"""
from __future__ import annotations

import datetime
import io
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable, Iterator, Optional, Sequence

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import flags
import numpy as np

from benchmarks import fake_imagenet

# The workers import only what their loader needs: `_common` (JAX, Haiku,
# the models) is imported by the functions of the parent process.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'input_pipeline.jsonl')

# The NFNet recipe's augmentation ([NFNet] sec. 6 and appendix): RandAugment
# with 4 layers (magnitude per variant; 10 here), CutMix and MixUp on halves
# of each batch.
_RECIPE = dict(randaugment_layers=4, randaugment_magnitude=10.0,
               mixup_alpha=0.2, cutmix_alpha=1.0)
# The ImageNet statistics of `nfnets.data.base.DATASETS['imagenet2012']`.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
_FILL = 128  # RandAugment's grey for pixels geometric ops pull from outside.

# The rows of the table: (loader, split, stage, label, the stage it adds to).
STAGES = (
    ('tf.data', 'train', 'read', 'read records (shuffled)', None),
    ('tf.data', 'train', 'decode_full', 'decode_jpeg, whole image', None),
    ('tf.data', 'train', 'decode_crop', 'decode_and_crop_jpeg (fused)', None),
    ('tf.data', 'train', 'resize', '+ resize and flip', 'decode_crop'),
    ('tf.data', 'train', 'randaugment', '+ RandAugment', 'resize'),
    ('tf.data', 'train', 'batch', '+ normalize and batch', 'randaugment'),
    ('tf.data', 'train', 'mix', '+ MixUp/CutMix', 'batch'),
    ('tf.data', 'train', 'pipeline', 'build_train, end to end', None),
    ('tf.data', 'train', 'device_put', 'host-to-device (device_put)', None),
    ('tf.data', 'eval', 'read', 'read records', None),
    ('tf.data', 'eval', 'decode_full', 'decode_jpeg, whole image', None),
    ('tf.data', 'eval', 'resize_crop', '+ resize and center crop',
     'decode_full'),
    ('tf.data', 'eval', 'batch', '+ normalize and batch', 'resize_crop'),
    ('tf.data', 'eval', 'pipeline', 'build_eval, end to end', None),
    ('pil', 'train', 'decode', 'read file, PIL decode', None),
    ('pil', 'train', 'resize', '+ RandomResizedCrop and flip', 'decode'),
    ('pil', 'train', 'randaugment', '+ RandAugment', 'resize'),
    ('pil', 'train', 'batch', '+ to float, normalize, batch', 'randaugment'),
    ('pil', 'train', 'mix', '+ MixUp/CutMix (whole loader)', 'batch'),
    ('pil', 'eval', 'decode', 'read file, PIL decode', None),
    ('pil', 'eval', 'batch', '+ resize, crop, normalize, batch', 'decode'),
)


# The train pipeline's stages in order, each adding to the one before.
TRAIN_CHAIN = ('decode_crop', 'resize', 'randaugment', 'batch', 'mix')


# ---------------------------------------------------------------- timing


def _timed(run: Callable[[int], int], seconds: float, first: int,
           min_images: int) -> tuple[int, float]:
  """Runs `run(n)` (which processes n units, returning images) until one
  call lasts `seconds`, growing n; returns that call's (images, seconds)."""
  n = first
  while True:
    start = time.perf_counter()
    images = run(n)
    elapsed = time.perf_counter() - start
    if elapsed >= seconds and images >= min_images:
      return images, elapsed
    grow = 1.2 * seconds / max(elapsed, 1e-3)
    n = max(n + 1, math.ceil(n * min(max(grow, 1.0), 50.0)),
            math.ceil(n * min_images / max(images, 1)))


def _pin(threads: int) -> list[int]:
  """Restricts this process to `threads` of its CPUs; returns the CPUs."""
  if not hasattr(os, 'sched_setaffinity'):
    return list(range(min(threads, os.cpu_count() or 1)))
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cpus)
  return cpus


# ---------------------------------------------------------------- tf.data


def _tf_rows(spec: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                            dict[str, Any]]:
  """The tf.data rows of `STAGES`, measured in this (pinned) process."""
  import tensorflow as tf
  threads = spec['threads']
  # Before TensorFlow's runtime starts: its pools take these sizes.
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  import jax
  import tensorflow_datasets as tfds
  from nfnets import data
  from nfnets.data import augment
  from nfnets.data import imagenet
  from nfnets.data import tfds_common

  config = data.default_config('imagenet2012')
  config.data_dir = spec['data_dir']
  config.image_size = spec['image_size']
  config.eval_image_size = spec['eval_image_size']
  for key in _RECIPE:
    config[key] = spec[key]
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.deterministic = True
  size, batch = spec['image_size'], spec['batch']
  method = data.get_spec('imagenet2012').resize_method

  def jpegs(split: str) -> tf.data.Dataset:
    payloads = [open(path, 'rb').read() for path, _ in spec[split]]
    return tf.data.Dataset.from_tensor_slices(payloads).repeat().enumerate()

  def seed(index: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(spec['seed'], tf.int64), index])

  def train_image(index: tf.Tensor, jpeg: tf.Tensor, upto: str) -> tf.Tensor:
    crop_seed, flip_seed, ra_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed(index), 3))
    image = augment.decode_and_random_crop(jpeg, crop_seed)
    if upto == 'decode_crop':
      return image
    image = tfds_common.resize(image, size, method)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if upto == 'resize':
      return image
    if spec['randaugment_layers']:
      image = augment.randaugment(image, ra_seed, spec['randaugment_layers'],
                                  spec['randaugment_magnitude'])
    if upto == 'randaugment':
      return image
    return tfds_common.normalize(image, config)

  def train_stage(stage: str) -> tuple[tf.data.Dataset, int]:
    if stage == 'decode_full':
      return jpegs('train').map(
          lambda i, j: tf.io.decode_jpeg(j, channels=3),
          num_parallel_calls=tf.data.AUTOTUNE), 1
    upto = 'batch' if stage in ('batch', 'mix') else stage
    ds = jpegs('train').map(lambda i, j: train_image(i, j, upto),
                            num_parallel_calls=tf.data.AUTOTUNE)
    if stage not in ('batch', 'mix'):
      return ds, 1
    labels = tf.data.Dataset.from_tensor_slices(
        [label for _, label in spec['train']]).repeat()
    ds = tf.data.Dataset.zip({'images': ds, 'labels': labels}).batch(
        batch, drop_remainder=True)
    if stage == 'mix':
      ds = ds.enumerate().map(
          lambda step, b: augment.maybe_mix(
              b, seed(step), spec['mixup_alpha'], spec['cutmix_alpha']),
          num_parallel_calls=tf.data.AUTOTUNE)
    return ds, batch

  def eval_stage(stage: str) -> tuple[tf.data.Dataset, int]:
    ds = jpegs('val')
    if stage == 'decode_full':
      return ds.map(lambda i, j: tf.io.decode_jpeg(j, channels=3),
                    num_parallel_calls=tf.data.AUTOTUNE), 1
    ds = ds.map(lambda i, j: imagenet.eval_image(j, config),
                num_parallel_calls=tf.data.AUTOTUNE)
    if stage == 'resize_crop':
      return ds, 1
    return ds.map(lambda image: tfds_common.normalize(image, config),
                  num_parallel_calls=tf.data.AUTOTUNE).batch(
                      batch, drop_remainder=True), batch

  def records(split: str) -> tuple[tf.data.Dataset, int]:
    read_config = tfds.ReadConfig(
        shuffle_seed=spec['seed'] if split == 'train' else None,
        interleave_cycle_length=16, interleave_block_length=1)
    ds = tfds.builder('imagenet2012', data_dir=spec['data_dir']).as_dataset(
        split=split, shuffle_files=split == 'train', read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding()})
    if split == 'train':
      ds = ds.shuffle(config.shuffle_buffer, seed=spec['seed'])
    return ds.repeat(), 1

  def measure(ds: tf.data.Dataset, per_element: int) -> tuple[int, float]:
    # One iterator, warmed up first: starting one instantiates the map
    # functions (RandAugment's 16 branches), which takes seconds.
    elements = iter(ds.with_options(options))
    for _ in range(max(2, spec['min_images'] // per_element)):
      next(elements)
    return _steady_rate(((per_element, True) for _ in elements), spec)

  results: dict[tuple[str, str], tuple[int, float]] = {}
  for split, builder in (('train', train_stage), ('eval', eval_stage)):
    for loader, s, stage, _, _ in STAGES:
      if loader != 'tf.data' or s != split or stage in ('pipeline',
                                                         'device_put'):
        continue
      ds, per = (records('train' if split == 'train' else 'validation')
                 if stage == 'read' else builder(stage))
      results[(split, stage)] = measure(ds, per)

  # The real pipelines, in their steady state. A fake epoch or eval pass is
  # a few dozen batches, a real one thousands, so each one's first batch
  # (a fresh pipeline: shuffle-buffer fill, tracing) is timed apart.
  steps_per_epoch = data.num_examples(config, 'train') // batch
  stream = data.build_train(config, batch_size=batch, seed=spec['seed'])
  start = time.perf_counter()
  first = next(stream)
  first_batch_s = time.perf_counter() - start
  for _ in range(2):
    next(stream)

  def train_batches() -> Iterator[tuple[int, bool]]:
    for step in itertools.count(3):
      next(stream)
      yield batch, step % steps_per_epoch != 0 or steps_per_epoch == 1

  results[('train', 'pipeline')] = _steady_rate(train_batches(), spec)

  def eval_batches() -> Iterator[tuple[int, bool]]:
    while True:
      for i, b in enumerate(data.build_eval(config, batch_size=batch)):
        yield int(b['mask'].sum()), i > 0 or len(spec['val']) <= batch

  results[('eval', 'pipeline')] = _steady_rate(eval_batches(), spec)

  device = jax.devices()[0]

  def puts() -> Iterator[tuple[int, bool]]:
    while True:
      jax.block_until_ready(jax.device_put(first, device))
      yield batch, True

  results[('train', 'device_put')] = _steady_rate(puts(), spec)
  rows = [_row('tf.data', split, stage, images, seconds, spec)
          for (split, stage), (images, seconds) in results.items()]
  extra = {'first_batch_s': first_batch_s,
           'steps_per_epoch': steps_per_epoch,
           'batch_bytes': int(sum(v.nbytes for v in first.values())),
           'tensorflow': tf.__version__, 'jax_backend': jax.default_backend()}
  return rows, extra


def _steady_rate(items: Iterator[tuple[int, bool]], spec: dict[str, Any]
                 ) -> tuple[int, float]:
  """Images and seconds of the counted items of `items`.

  Each item is (images, counted); taking it is timed, and counted items add
  their images and time until both `spec['seconds']` and
  `spec['min_images']` are reached.
  """
  images, elapsed = 0, 0.0
  while elapsed < spec['seconds'] or images < spec['min_images']:
    start = time.perf_counter()
    n, counted = next(items)
    took = time.perf_counter() - start
    if counted:
      images, elapsed = images + n, elapsed + took
  return images, elapsed


def _row(loader: str, split: str, stage: str, images: int, seconds: float,
         spec: dict[str, Any]) -> dict[str, Any]:
  cores = len(spec['cpus'])
  rate = images / seconds
  return {'loader': loader, 'split': split, 'stage': stage,
          'threads': spec['threads'], 'cores': cores, 'images': images,
          'seconds': seconds, 'images_per_s': rate,
          'images_per_s_per_core': rate / cores,
          'core_ms_per_image': 1e3 * cores / rate}


# ---------------------------------------------------------------- PIL


def random_resized_crop_box(width: int, height: int,
                            rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box (top, left, height, width).

  Up to 10 tries of an area fraction ~ U(scale) and a width / height ratio
  log-uniform in `ratio`; then the central crop of the image's ratio
  clamped into `ratio`.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


class PilLoader:
  """A PIL + NumPy ImageNet loader of the kind PyTorch users write.

  Train: `Image.open(path).convert('RGB')`, torchvision's RandomResizedCrop
  (scale (0.08, 1), ratio (3/4, 4/3), 10 tries, then a central crop of the
  nearest allowed ratio; bilinear), a horizontal flip with probability 1/2,
  RandAugment with the op set and magnitudes of `nfnets.data.augment`
  (each of `layers` layers picks one of 16 ops and applies it with
  probability 1/2) on uint8 images, conversion to float32 and
  normalization, stacking, and MixUp/CutMix on the batch's halves as in
  `augment.mix_batch`. Eval: decode, bicubic resize to size + padding,
  central crop, normalize.
  """

  def __init__(self, spec: dict[str, Any]):
    self.spec = spec
    frac = spec['randaugment_magnitude'] / 10.0
    self.frac = frac
    add = int(min(110.0 * frac, 255.0))
    self.solarize_add_lut = [min(v + add, 255) if v < 128 else v
                             for v in range(256)] * 3

  # -------------------------------------------------------------- train

  def random_resized_crop(self, image: Any, rng: np.random.Generator) -> Any:
    from PIL import Image
    top, left, h, w = random_resized_crop_box(*image.size, rng)
    size = self.spec['image_size']
    return image.crop((left, top, left + w, top + h)).resize(
        (size, size), Image.Resampling.BILINEAR)

  def randaugment(self, image: Any, rng: np.random.Generator) -> Any:
    from PIL import Image
    from PIL import ImageDraw
    from PIL import ImageEnhance
    from PIL import ImageOps
    frac = self.frac
    width, height = image.size
    fill = (_FILL,) * 3
    for _ in range(self.spec['randaugment_layers']):
      op = int(rng.integers(16))
      if rng.random() >= 0.5:
        continue
      sign = -1.0 if rng.random() < 0.5 else 1.0
      factor = max(1.0 + sign * 0.9 * frac, 0.0)
      affine = lambda m: image.transform(image.size, Image.Transform.AFFINE,
                                         m, fillcolor=fill)
      if op == 0:
        image = ImageOps.autocontrast(image)
      elif op == 1:
        image = ImageOps.equalize(image)
      elif op == 2:
        image = ImageOps.invert(image)
      elif op == 3:
        image = image.rotate(sign * 30.0 * frac, fillcolor=fill)
      elif op == 4:
        image = ImageOps.posterize(image, min(max(8 - int(4 * frac), 1), 8))
      elif op == 5:
        image = ImageOps.solarize(image, max(256.0 * (1 - frac), 0.0))
      elif op == 6:
        image = ImageEnhance.Color(image).enhance(factor)
      elif op == 7:
        image = ImageEnhance.Contrast(image).enhance(factor)
      elif op == 8:
        image = ImageEnhance.Brightness(image).enhance(factor)
      elif op == 9:
        image = ImageEnhance.Sharpness(image).enhance(factor)
      elif op == 10:
        image = affine((1, sign * 0.3 * frac, 0, 0, 1, 0))
      elif op == 11:
        image = affine((1, 0, 0, sign * 0.3 * frac, 1, 0))
      elif op == 12:
        image = affine((1, 0, -sign * 0.45 * frac * width, 0, 1, 0))
      elif op == 13:
        image = affine((1, 0, 0, 0, 1, -sign * 0.45 * frac * height))
      elif op == 14:
        half = int(40 / 224 * frac * height)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        image = image.copy()
        ImageDraw.Draw(image).rectangle(
            (cx - half, cy - half, cx + half - 1, cy + half - 1), fill=fill)
      else:
        image = image.point(self.solarize_add_lut)
    return image

  def train_image(self, path: str, rng: np.random.Generator,
                  upto: str) -> Any:
    from PIL import Image
    with open(path, 'rb') as f:
      image = Image.open(io.BytesIO(f.read())).convert('RGB')
    if upto == 'decode':
      return image
    image = self.random_resized_crop(image, rng)
    if rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if upto == 'resize':
      return image
    if self.spec['randaugment_layers']:
      image = self.randaugment(image, rng)
    if upto == 'randaugment':
      return image
    return (np.asarray(image, np.float32) - _MEAN) / _STD

  def mix(self, images: np.ndarray, labels: np.ndarray,
          rng: np.random.Generator) -> dict[str, np.ndarray]:
    """CutMix on the first half, MixUp on the second, partners reversed."""
    half = len(images) // 2
    height, width = images.shape[1:3]
    out = images.copy()
    ratios = np.ones(len(images), np.float32)
    cut = rng.beta(self.spec['cutmix_alpha'], self.spec['cutmix_alpha'])
    cy, cx = rng.integers(height), rng.integers(width)
    ch, cw = int(height * math.sqrt(1 - cut)), int(width * math.sqrt(1 - cut))
    top, bottom = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
    left, right = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
    out[:half, top:bottom, left:right] = images[:half][::-1, top:bottom,
                                                      left:right]
    ratios[:half] = 1 - (bottom - top) * (right - left) / (height * width)
    lam = rng.beta(self.spec['mixup_alpha'], self.spec['mixup_alpha'])
    out[half:] = lam * images[half:] + (1 - lam) * images[half:][::-1]
    ratios[half:] = lam
    mix_labels = np.concatenate([labels[:half][::-1], labels[half:][::-1]])
    return {'images': out, 'labels': labels, 'mix_labels': mix_labels,
            'mix_ratio': ratios}

  def train_batch(self, index: int, upto: str) -> Any:
    """Batch `index` of the file list (cycled) up to stage `upto`."""
    rng = np.random.default_rng([self.spec['seed'], index])
    files = self.spec['train']
    batch = self.spec['batch']
    picks = [files[(index * batch + i) % len(files)] for i in range(batch)]
    images = [self.train_image(path, rng, upto) for path, _ in picks]
    if upto not in ('batch', 'mix'):
      return batch
    images = np.stack(images)
    labels = np.array([label for _, label in picks], np.int32)
    if upto == 'batch':
      return {'images': images, 'labels': labels}
    return self.mix(images, labels, rng)

  # -------------------------------------------------------------- eval

  def eval_batch(self, index: int, upto: str) -> Any:
    from PIL import Image
    files = self.spec['val']
    batch = self.spec['batch']
    size = self.spec['eval_image_size']
    big = size + self.spec['crop_padding']
    top = (big - size + 1) // 2
    out = []
    for i in range(batch):
      path, _ = files[(index * batch + i) % len(files)]
      with open(path, 'rb') as f:
        image = Image.open(io.BytesIO(f.read())).convert('RGB')
      if upto == 'decode':
        continue
      image = image.resize((big, big), Image.Resampling.BICUBIC).crop(
          (top, top, top + size, top + size))
      out.append((np.asarray(image, np.float32) - _MEAN) / _STD)
    return batch if upto == 'decode' else np.stack(out)


_LOADER: Optional[PilLoader] = None


def _pil_task(task: tuple[str, str, int]) -> int:
  """Makes one batch (up to a stage); returns its image count.

  The batch stays in the worker: a DataLoader hands batches over in shared
  memory, at next to no cost, where pickling them through a pipe made the
  parent copy every batch (at 2 workers on 2 cores the 'batch' row gained
  only 13% over 1 worker). So this baseline is slightly optimistic.
  """
  split, upto, index = task
  if split == 'train':
    _LOADER.train_batch(index, upto)
  else:
    _LOADER.eval_batch(index, upto)
  return _LOADER.spec['batch']


def _pil_rows(spec: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                             dict[str, Any]]:
  """The PIL rows of `STAGES`, in this (pinned) process and its workers."""
  import multiprocessing
  import PIL
  global _LOADER
  _LOADER = PilLoader(spec)
  pool = None
  if spec['threads'] > 1:
    # Forked after the loader exists, like a DataLoader's workers.
    pool = multiprocessing.get_context('fork').Pool(spec['threads'])
  batch = spec['batch']
  counter = [0]
  rows = []
  try:
    for loader, split, stage, _, _ in STAGES:
      if loader != 'pil':
        continue

      def run(n: int, split=split, stage=stage) -> int:
        tasks = [(split, stage, counter[0] + i) for i in range(n)]
        counter[0] += n
        if pool is None:
          for t in tasks:
            _pil_task(t)
        else:
          for _ in pool.imap(_pil_task, tasks):
            pass
        return n * batch

      run(max(1, spec['threads']))
      images, seconds = _timed(run, spec['seconds'], max(1, spec['threads']),
                               spec['min_images'])
      rows.append(_row('pil', split, stage, images, seconds, spec))
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  return rows, {'pillow': PIL.__version__}


# ---------------------------------------------------------------- workers


def _worker(spec_path: str) -> None:
  """Runs one loader at one thread count; writes its rows as JSON."""
  with open(spec_path) as f:
    spec = json.load(f)
  spec['cpus'] = _pin(spec['threads'])
  load_before = os.getloadavg()
  measure = _tf_rows if spec['kind'] == 'tf.data' else _pil_rows
  rows, extra = measure(spec)
  out = {'rows': rows, 'cpus': spec['cpus'], 'load_before': load_before,
         'load_after': os.getloadavg(), **extra}
  with open(spec['out'], 'w') as f:
    json.dump(out, f)


def _run_worker(spec: dict[str, Any], workdir: str) -> dict[str, Any]:
  name = f'{spec["kind"]}_{spec["threads"]}'
  spec = dict(spec, out=os.path.join(workdir, f'{name}.out.json'))
  path = os.path.join(workdir, f'{name}.json')
  with open(path, 'w') as f:
    json.dump(spec, f)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join(
                 filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.input_pipeline',
       f'--worker_spec={path}'], cwd=REPO, env=env, capture_output=True,
      text=True)
  if result.returncode:
    raise RuntimeError(f'The {spec["kind"]} worker with {spec["threads"]} '
                       f'thread(s) failed:\n{result.stderr[-4000:]}')
  with open(spec['out']) as f:
    return dict(json.load(f), wall_s=time.perf_counter() - start)


# ---------------------------------------------------------------- the run


def _sample(data_dir: str, split: str, count: int, folder: str
            ) -> list[tuple[str, int]]:
  """Writes the first `count` JPEGs of a tfds split as files; (path, label).
  """
  import tensorflow_datasets as tfds
  ds = tfds.builder('imagenet2012', data_dir=data_dir).as_dataset(
      split=split, decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  os.makedirs(folder, exist_ok=True)
  out = []
  for i, record in enumerate(tfds.as_numpy(ds.take(count))):
    path = os.path.join(folder, f'{i:06d}.JPEG')
    with open(path, 'wb') as f:
      f.write(record['image'])
    out.append((path, int(record['label'])))
  return out


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Per thread count: the headline rates per core, ratios and targets."""
  out: dict[str, Any] = {}
  by = {(r['loader'], r['split'], r['stage'], r['threads']): r for r in rows}
  for threads in sorted({r['threads'] for r in rows}):
    get = lambda *k: by[(*k, threads)]['images_per_s_per_core']
    train, pil = get('tf.data', 'train', 'pipeline'), get('pil', 'train',
                                                          'mix')
    evaluate = get('tf.data', 'eval', 'pipeline')
    out[str(threads)] = {
        'train_per_core': train, 'pil_train_per_core': pil,
        'train_over_pil': train / pil, 'eval_per_core': evaluate,
        'pil_eval_per_core': get('pil', 'eval', 'batch'),
        'decode_crop_per_core': get('tf.data', 'train', 'decode_crop'),
        'decode_full_per_core': get('tf.data', 'train', 'decode_full'),
        # Where the time goes: the train pipeline's cumulative stages, and
        # the first that runs slower than twice the PIL loader.
        'train_stages_per_core': {
            stage: get('tf.data', 'train', stage) for stage in TRAIN_CHAIN},
        'first_stage_under_2x_pil': next(
            (stage for stage in TRAIN_CHAIN
             if get('tf.data', 'train', stage) < 2 * pil), None),
        'targets_met': {'train_40_per_core': train >= 40,
                        'train_2x_pil': train >= 2 * pil,
                        'eval_150_per_core': evaluate >= 150},
    }
  return out


def print_table(rows: Sequence[dict[str, Any]]) -> None:
  """One line per stage; per thread count img/s and img/s per core, and
  at the first thread count the core-ms per image and the stage's share."""
  threads = sorted({r['threads'] for r in rows})
  by = {(r['loader'], r['split'], r['stage'], r['threads']): r for r in rows}
  header = ['loader', 'split', 'stage']
  for t in threads:
    header += [f'{t}c img/s', f'{t}c /core']
  header += [f'{threads[0]}c ms', '+ms']
  lines = []
  for loader, split, stage, label, base in STAGES:
    if (loader, split, stage, threads[0]) not in by:
      continue
    line = [loader, split, label]
    for t in threads:
      r = by.get((loader, split, stage, t))
      line += ([f'{r["images_per_s"]:.1f}', f'{r["images_per_s_per_core"]:.1f}']
               if r else ['-', '-'])
    r = by[(loader, split, stage, threads[0])]
    line.append(f'{r["core_ms_per_image"]:.2f}')
    if base:
      prev = by[(loader, split, base, threads[0])]
      line.append(f'{r["core_ms_per_image"] - prev["core_ms_per_image"]:+.2f}')
    else:
      line.append('')
    lines.append(line)
  widths = [max(len(h), *(len(l[i]) for l in lines))
            for i, h in enumerate(header)]
  left = 3
  fmt = lambda cells: '  '.join(
      c.ljust(w) if i < left else c.rjust(w)
      for i, (c, w) in enumerate(zip(cells, widths)))
  print(fmt(header))
  for line in lines:
    print(fmt(line))
  sys.stdout.flush()


def _fake_params(args: types.SimpleNamespace) -> dict[str, int]:
  if args.small:
    # Two batches of 4 per class: an epoch is 4 batches, so the steady-state
    # batches of build_train need one fresh pipeline.
    return {'num_classes': 2, 'train_per_class': 8, 'num_val': 4}
  return {'num_classes': args.num_classes,
          'train_per_class': args.train_per_class, 'num_val': args.num_val}


def run(args: types.SimpleNamespace) -> dict[str, Any]:
  """Measures every loader at every thread count; returns (and saves) the
  record."""
  threads = [int(t) for t in str(args.threads).split(',') if t.strip()]
  if args.small:
    threads = [1]
    args = types.SimpleNamespace(**{**vars(args), 'batch': 4})
  if not threads or min(threads) < 1:
    raise SystemExit('--threads must list positive thread counts.')
  if args.batch < 2 or args.batch % 2:
    raise SystemExit('--batch must be even (CutMix and MixUp take halves).')
  import tensorflow_datasets as tfds
  from benchmarks import _common
  tfds.disable_progress_bar()
  load_start = os.getloadavg()
  with tempfile.TemporaryDirectory(prefix='input_pipeline_') as workdir:
    fake_stats = None
    data_dir = args.data_dir
    if not data_dir:
      built = fake_imagenet.build(
          args.fake_dir or os.path.join(workdir, 'fake'), seed=args.seed,
          **_fake_params(args))
      data_dir, fake_stats = str(built.data_dir), built.stats
    sample = 8 if args.small else args.sample
    train = _sample(data_dir, 'train', sample,
                    os.path.join(workdir, 'files', 'train'))
    val = _sample(data_dir, 'validation', sample,
                  os.path.join(workdir, 'files', 'val'))
    spec = {
        'data_dir': data_dir, 'train': train, 'val': val,
        'batch': args.batch, 'image_size': args.image_size,
        'eval_image_size': args.eval_image_size, 'crop_padding': 32,
        'seed': args.seed, 'seconds': 0.0 if args.small else args.seconds,
        'min_images': args.batch if args.small else 4 * args.batch,
        **{k: getattr(args, k) for k in _RECIPE},
    }
    rows, workers = [], []
    for t in threads:
      for kind in ('tf.data', 'pil'):
        print(f'{kind} with {t} thread(s) ...', flush=True)
        out = _run_worker(dict(spec, kind=kind, threads=t), workdir)
        rows += out.pop('rows')
        workers.append(dict(out, kind=kind, threads=t))
  record = {
      'benchmark': 'input_pipeline', 'small': args.small,
      'batch': args.batch, 'image_size': args.image_size,
      'eval_image_size': args.eval_image_size,
      **{k: getattr(args, k) for k in _RECIPE},
      'data': 'fake_imagenet' if fake_stats else data_dir,
      'fake_imagenet': fake_stats, 'sample': len(train),
      'seconds_per_stage': spec['seconds'], 'threads': threads,
      'rows': rows, 'workers': workers, 'summary': summarize(rows),
      'load_start': load_start, 'load_end': os.getloadavg(),
      'machine': _common.machine_description(),
      'timestamp': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'commit': _git_commit(),
  }
  print_table(rows)
  labels = {stage: label for loader, split, stage, label, _ in STAGES
            if (loader, split) == ('tf.data', 'train')}
  for t, s in record['summary'].items():
    print(f'{t} core(s): train {s["train_per_core"]:.1f} img/s per core '
          f'({s["train_over_pil"]:.2f}x PIL\'s {s["pil_train_per_core"]:.1f}),'
          f' eval {s["eval_per_core"]:.1f} img/s per core')
    chain = ', '.join(f'{labels[k]} {v:.0f}'
                      for k, v in s['train_stages_per_core'].items())
    under = s['first_stage_under_2x_pil']
    print(f'  train stages per core: {chain}; 2x PIL needs '
          f'{2 * s["pil_train_per_core"]:.0f}'
          + (f', which "{labels[under]}" falls under' if under else ''))
  loads = [w['load_before'][0] for w in workers]
  print(f'load average (1 min) {load_start[0]:.2f} at start, '
        f'{min(loads):.2f}-{max(loads):.2f} as workers started, on '
        f'{os.cpu_count()} CPUs ({record["machine"]["cpu_model"]})')
  if fake_stats:
    print(f'fake ImageNet: {fake_stats["count"]} JPEGs, mean '
          f'{fake_stats["mean_width"]:.0f} x {fake_stats["mean_height"]:.0f} '
          f'px, {fake_stats["mean_bytes"] / 1e3:.0f} KB')
  if not args.no_save:
    _common.append_result(args.results, record)
  return record


def _git_commit() -> Optional[str]:
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True, check=True,
                          cwd=REPO).stdout.strip()
  except Exception:  # Not a git checkout, or no git.
    return None


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  from benchmarks import _common
  define = _common.definer(flag_values)
  define('string', 'data_dir', '',
         'tfds data dir with a prepared imagenet2012 (default: a fake one).')
  define('string', 'fake_dir', '',
         'Where to build, or reuse, the fake ImageNet (default: a temporary '
         'directory).')
  define('integer', 'num_classes', 20, 'Fake ImageNet: classes.')
  define('integer', 'train_per_class', 64, 'Fake ImageNet: train JPEGs per '
         'class.')
  define('integer', 'num_val', 256, 'Fake ImageNet: validation JPEGs.')
  define('integer', 'sample', 256,
         'JPEGs per split held for the stage rows and the PIL loader.')
  define('string', 'threads', '1,2', 'Comma-separated cores per setting.')
  define('integer', 'batch', 32, 'Batch size (even).')
  define('integer', 'image_size', 192, 'Train resolution (px).')
  define('integer', 'eval_image_size', 256, 'Eval resolution (px).')
  define('integer', 'randaugment_layers', _RECIPE['randaugment_layers'],
         'RandAugment ops per image.')
  define('float', 'randaugment_magnitude', _RECIPE['randaugment_magnitude'],
         'RandAugment magnitude (10: each op at its nominal maximum).')
  define('float', 'mixup_alpha', _RECIPE['mixup_alpha'], 'MixUp Beta alpha.')
  define('float', 'cutmix_alpha', _RECIPE['cutmix_alpha'],
         'CutMix Beta alpha.')
  define('float', 'seconds', 8.0, 'Timed seconds per stage and setting.')
  define('integer', 'seed', 0, 'Seeds the data and the augmentation.')
  define('bool', 'small', False,
         'A few images and batches at 1 thread (seconds; for tests).')
  define('string', 'results', RESULTS,
         'JSON lines file the record is appended to.')
  define('bool', 'no_save', False, 'Do not append the record.')


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  from benchmarks import _common
  return _common.parse_flags(define_flags, argv)


if __name__ == '__main__':
  if len(sys.argv) == 2 and sys.argv[1].startswith('--worker_spec='):
    _worker(sys.argv[1].split('=', 1)[1])
  else:
    from benchmarks import _common
    _common.run_command_line(define_flags, run)
