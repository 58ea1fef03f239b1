"""A fake ImageNet in the layout of the real downloads, built offline.

`write_manual_dir` writes ILSVRC2012_img_train.tar (a tar of per-synset tars
`nXXXXXXXX.tar`) and ILSVRC2012_img_val.tar, and `prepare` runs tfds' own
`imagenet2012` builder on them, so class ids come from the `labels.txt` and
validation labels from the `validation_labels.txt` that tfds ships: the k-th
validation file in name order gets the synset on line k. `build` makes a
whole data set of photo-like JPEGs for the input-pipeline benchmark;
tests pass their own image maker (e.g. one colour per class).

The photos are the real ones scikit-image ships (astronaut, coffee, chelsea,
rocket, ...), randomly cropped, flipped, rescaled, lightly noised and
re-encoded by Pillow at varied sizes, JPEG qualities and chroma subsampling,
so that no two files are equal and the sizes are about ImageNet's
(~400 x 350 px and ~110 KB on average; `FakeImageNet.stats` gives the actual
figures).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import tarfile
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from nfnets import errors

# Makes one JPEG of class `class_index` (position in the class list).
ImageMaker = Callable[[int, np.random.Generator], bytes]

# Marks a finished build; holds its parameters and size statistics.
_MARKER = 'fake_imagenet.json'
# Train JPEGs' width (px) and the aspect ratios (width / height) with their
# frequencies: means ~400 x 340 px, about ImageNet's.
_WIDTH_RANGE = (300, 500)
_ASPECTS = ((4 / 3, 0.5), (3 / 2, 0.2), (1.0, 0.15), (3 / 4, 0.15))
# Pillow quality, Gaussian noise (grey levels) standing in for sensor noise
# and fine texture, and the fraction encoded with full-resolution chroma
# (4:4:4); the rest is 4:2:0. Together they give ImageNet's ~110 KB mean.
_QUALITY_RANGE = (90, 97)
_NOISE_RANGE = (6.0, 14.0)
_FULL_CHROMA_FRACTION = 0.5


class FakeImageNetError(errors.UserError):
  """A directory cannot hold (or does not hold) the fake ImageNet asked for."""


def tfds_imagenet_file(name: str) -> pathlib.Path:
  """A file tfds ships with its imagenet2012 builder, e.g. 'labels.txt'."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return (pathlib.Path(tfds.__file__).parent / 'datasets' / 'imagenet2012' /
          name)


def read_tfds_list(name: str) -> list[str]:
  """The whitespace-separated entries of a shipped list (one synset a line)."""
  return tfds_imagenet_file(name).read_text().split()


def class_ids() -> dict[str, int]:
  """Synset -> the label tfds gives it (its line in labels.txt)."""
  return {s: i for i, s in enumerate(read_tfds_list('labels.txt'))}


def choose_synsets(num_classes: int, num_val: int) -> tuple[list[str],
                                                           list[str]]:
  """Train classes and the synsets the first `num_val` validation files get.

  The classes are the distinct synsets of the validation labels, in order,
  then further synsets of labels.txt, `num_classes` in all, so that every
  validation image's class has train images when `num_classes` is at least
  the number of distinct validation synsets.

  Returns:
    (train synsets [num_classes], validation synsets [num_val]); the k-th
    validation file in name order carries validation synsets[k].
  """
  val = read_tfds_list('validation_labels.txt')[:num_val]
  synsets = list(dict.fromkeys(val + read_tfds_list('labels.txt')))
  return synsets[:num_classes], val


def validation_file_name(k: int) -> str:
  """The name of the k-th (0-based) validation JPEG, as in the real tar."""
  return f'ILSVRC2012_val_{k + 1:08d}.JPEG'


def add_to_tar(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  """Adds `payload` to `tar` as a regular file called `name`."""
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_manual_dir(manual: os.PathLike, train: Mapping[str, Sequence[bytes]],
                     val: Sequence[bytes]) -> dict[str, str]:
  """Writes the two tars tfds' imagenet2012 builder reads from a manual dir.

  Args:
    manual: directory to write into (created).
    train: synset -> its train JPEGs, named `<synset>_<i>.JPEG`.
    val: validation JPEGs; the k-th becomes `validation_file_name(k)` and is
      labelled with line k of tfds' validation_labels.txt.

  Returns:
    Validation file name -> the synset tfds will label it with.
  """
  manual = pathlib.Path(manual)
  manual.mkdir(parents=True, exist_ok=True)
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as outer:
    for synset, jpegs in train.items():
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode='w') as inner:
        for i, jpeg in enumerate(jpegs):
          add_to_tar(inner, f'{synset}_{i}.JPEG', jpeg)
      add_to_tar(outer, f'{synset}.tar', inner_buf.getvalue())
  labels = read_tfds_list('validation_labels.txt')
  val_synsets = {}
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as tar:
    # Written in reverse so that the builder's sorting, not the archive's
    # order, has to pair names with labels.
    for k in reversed(range(len(val))):
      name = validation_file_name(k)
      val_synsets[name] = labels[k]
      add_to_tar(tar, name, val[k])
  return val_synsets


def prepare(manual: os.PathLike, data_dir: os.PathLike) -> None:
  """Prepares imagenet2012 in `data_dir` from the tars in `manual`, offline."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.builder('imagenet2012', data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=str(manual), try_download_gcs=False))


# ---------------------------------------------------------------- photos


def source_photos() -> list[np.ndarray]:
  """scikit-image's bundled colour photographs, uint8 [H, W, 3], 300-1400 px.
  """
  from skimage import data  # pylint: disable=g-import-not-at-top
  return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
          data.hubble_deep_field(), data.immunohistochemistry(),
          data.retina(), data.stereo_motorcycle()[0]]


def photo_jpeg(photos: Sequence[np.ndarray], rng: np.random.Generator
               ) -> bytes:
  """A JPEG cut from a random photo: random box, flip, size, noise, quality.

  The box has the output's aspect ratio and 50-100% of the largest such
  box's side, so files differ even when cut from the same photo.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photo = photos[rng.integers(len(photos))]
  height, width = photo.shape[:2]
  aspects, weights = zip(*_ASPECTS)
  aspect = aspects[rng.choice(len(aspects), p=weights)]
  out_w = int(rng.integers(_WIDTH_RANGE[0], _WIDTH_RANGE[1] + 1))
  out_h = int(round(out_w / aspect))
  box_w = min(width, height * aspect) * rng.uniform(0.5, 1.0)
  box_h = box_w / aspect
  left = rng.uniform(0, width - box_w)
  top = rng.uniform(0, height - box_h)
  image = Image.fromarray(photo).resize(
      (out_w, out_h), Image.Resampling.BICUBIC,
      box=(left, top, left + box_w, top + box_h))
  pixels = np.asarray(image, np.float32)
  if rng.random() < 0.5:
    pixels = pixels[:, ::-1]
  pixels = pixels + rng.normal(0.0, rng.uniform(*_NOISE_RANGE), pixels.shape)
  image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
  buf = io.BytesIO()
  image.save(buf, 'JPEG',
             quality=int(rng.integers(_QUALITY_RANGE[0],
                                      _QUALITY_RANGE[1] + 1)),
             subsampling=0 if rng.random() < _FULL_CHROMA_FRACTION else 2)
  return buf.getvalue()


def jpeg_stats(jpegs: Sequence[bytes]) -> dict[str, float]:
  """Count, mean width/height (px) and mean/min/max size (bytes) of JPEGs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sizes = np.array([Image.open(io.BytesIO(j)).size for j in jpegs], float)
  nbytes = np.array([len(j) for j in jpegs], float)
  return {'count': len(jpegs), 'mean_width': float(sizes[:, 0].mean()),
          'mean_height': float(sizes[:, 1].mean()),
          'mean_bytes': float(nbytes.mean()), 'min_bytes': int(nbytes.min()),
          'max_bytes': int(nbytes.max())}


# ---------------------------------------------------------------- data sets


@dataclasses.dataclass(frozen=True)
class FakeImageNet:
  """A prepared fake ImageNet.

  Attributes:
    root: the build directory.
    data_dir: the tfds data directory (`--config.data.data_dir`).
    synsets: the train classes, in class-list order.
    val_synsets: validation file name -> its synset.
    train_files: (path, tfds label) of every train JPEG, extracted as an
      ImageFolder-style tree (root/folder/train/<synset>/...), for loaders
      that read files.
    val_files: the same for the validation JPEGs (root/folder/val/...).
    stats: `jpeg_stats` of all the JPEGs, plus the build parameters.
  """
  root: pathlib.Path
  data_dir: pathlib.Path
  synsets: list[str]
  val_synsets: dict[str, str]
  train_files: list[tuple[str, int]]
  val_files: list[tuple[str, int]]
  stats: dict


def _photo_maker() -> ImageMaker:
  photos = source_photos()
  return lambda class_index, rng: photo_jpeg(photos, rng)


def build(root: os.PathLike, *, num_classes: int = 10,
          train_per_class: int = 50, num_val: int = 100, seed: int = 0,
          make_image: Optional[ImageMaker] = None,
          extract: bool = False) -> FakeImageNet:
  """Writes and prepares a fake ImageNet under `root`, or reuses it.

  A directory holding a finished build with the same parameters is reused
  as it is (a build with a custom `make_image` is never reused).

  Args:
    root: build directory: root/manual (the tars), root/data (tfds data
      dir), root/folder (the JPEGs as files, if `extract`).
    num_classes: train classes (`choose_synsets`).
    train_per_class: train JPEGs per class.
    num_val: validation JPEGs.
    seed: seeds every random choice of the images.
    make_image: class index, generator -> JPEG bytes; default `photo_jpeg`
      on scikit-image's photos.
    extract: also write every JPEG as a file (for file-reading loaders).

  Returns:
    The prepared data set.

  Raises:
    FakeImageNetError: if `root` is not empty and holds no build with these
      parameters.
  """
  root = pathlib.Path(root)
  params = {'num_classes': num_classes, 'train_per_class': train_per_class,
            'num_val': num_val, 'seed': seed, 'extract': extract,
            'maker': 'photo_jpeg' if make_image is None else 'custom'}
  marker = root / _MARKER
  if marker.exists() and make_image is None:
    saved = json.loads(marker.read_text())
    if saved['params'] != params:
      raise FakeImageNetError(
          f'{root} holds a fake ImageNet built with {saved["params"]}, not '
          f'{params}; pass another directory, or the same parameters.')
    return _assemble(root, saved)
  if root.exists() and any(root.iterdir()):
    raise FakeImageNetError(
        f'{root} is not empty and holds no finished fake ImageNet; pass an '
        'empty or new directory.')
  make_image = make_image or _photo_maker()
  rng = np.random.default_rng(seed)
  synsets, val_labels = choose_synsets(num_classes, num_val)
  train = {s: [make_image(c, rng) for _ in range(train_per_class)]
           for c, s in enumerate(synsets)}
  val = []
  for synset in val_labels:
    # A validation synset outside the train classes still gets an image.
    c = synsets.index(synset) if synset in synsets else len(synsets)
    val.append(make_image(c, rng))
  val_synsets = write_manual_dir(root / 'manual', train, val)
  prepare(root / 'manual', root / 'data')
  if extract:
    for synset, jpegs in train.items():
      folder = root / 'folder' / 'train' / synset
      folder.mkdir(parents=True)
      for i, jpeg in enumerate(jpegs):
        (folder / f'{synset}_{i}.JPEG').write_bytes(jpeg)
    folder = root / 'folder' / 'val'
    folder.mkdir(parents=True)
    for k, jpeg in enumerate(val):
      (folder / validation_file_name(k)).write_bytes(jpeg)
  saved = {'params': params, 'synsets': synsets, 'val_synsets': val_synsets,
           'stats': jpeg_stats([j for js in train.values() for j in js] +
                               val)}
  marker.write_text(json.dumps(saved, indent=1, sort_keys=True))
  return _assemble(root, saved)


def _assemble(root: pathlib.Path, saved: dict) -> FakeImageNet:
  ids = class_ids()
  params = saved['params']
  train_files, val_files = [], []
  if params['extract']:
    for synset in saved['synsets']:
      for i in range(params['train_per_class']):
        train_files.append((str(root / 'folder' / 'train' / synset /
                                f'{synset}_{i}.JPEG'), ids[synset]))
    for name, synset in sorted(saved['val_synsets'].items()):
      val_files.append((str(root / 'folder' / 'val' / name), ids[synset]))
  return FakeImageNet(
      root=root, data_dir=root / 'data', synsets=saved['synsets'],
      val_synsets=saved['val_synsets'], train_files=train_files,
      val_files=val_files, stats=dict(saved['stats'], **params))
