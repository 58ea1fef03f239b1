"""The embedded default data set: scikit-learn's bundled 8x8 digits.

1797 real grayscale scans (10 classes) ship inside scikit-learn, so a run
needs no download. Images are upsampled bilinearly to `image_size`,
replicated to RGB (every model sees 3 channels) and held in memory as NumPy;
batches are cut by index and resuming is free.

Host invariance: the training stream is one sequence of examples, a
function of the seed alone. Every random draw for the example at global
position i (its shift, its RandAugment ops) depends only on (seed, i), and
MixUp/CutMix mix positions 2k and 2k + 1 with a ratio/box drawn from
(seed, k). A global batch of G examples is positions [step * G,
(step + 1) * G), and process p of P takes the p-th of its P slices, so the
concatenated per-process batches are the same for any process count.

Augmentation: random shifts (`max_shift`) in NumPy and, when enabled, the
tf.data pipelines' own RandAugment and MixUp/CutMix (`nfnets.data.augment`)
run eagerly on each batch (TensorFlow is then imported; RandAugment costs
about 0.5 ms per 32 px image on this 2-core machine after a one-off ~5 s
trace), so CPU smoke runs of an ImageNet recipe exercise its augmentation.
"""
import functools
from typing import Iterator, Optional

import ml_collections
import numpy as np

from nfnets import errors
from nfnets.data import base

# Fixed split: 20% stratified test set, drawn once with this seed.
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0
# Second entropy words naming each random stream. Epoch permutations use
# (seed, epoch); these sit far above any epoch count, so no two streams share
# a NumPy SeedSequence.
_SHIFT_STREAM = 0x53484654
_RANDAUGMENT_STREAM = 0x52414e44
_MIX_STREAM = 0x4d495846
_SUBSET_STREAM = 0x53554253


@functools.lru_cache(maxsize=1)
def _raw() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """split -> (uint8 [N, 8, 8] images on 0..255, int32 [N] labels)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  # Pixel values are counts 0..16 of a 4x4 block; map them onto 0..255.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(labels)), test_size=_TEST_FRACTION, stratify=labels,
      random_state=_SPLIT_SEED)
  return {
      'train': (images[train_idx], labels[train_idx]),
      'test': (images[test_idx], labels[test_idx]),
  }


def raw_images(split: str = 'test') -> tuple[np.ndarray, np.ndarray]:
  """The unprocessed images of a split, for display and `predict`.

  Args:
    split: 'train' or 'test'.

  Returns:
    (uint8 [N, 8, 8] grayscale images on 0..255, int32 [N] labels), in the
    order `build_eval` visits them.
  """
  if split not in _raw():
    raise ValueError(f'Unknown digits split {split!r}; known splits: '
                     f'{", ".join(_raw())}.')
  images, labels = _raw()[split]
  return images.copy(), labels.copy()


@functools.lru_cache(maxsize=8)
def _train_subset(num_train: int) -> np.ndarray:
  order = np.random.default_rng([_SPLIT_SEED, _SUBSET_STREAM]).permutation(
      len(_raw()['train'][1]))
  labels = _raw()['train'][1][order]
  # Rank of each example within its class in the shuffled order; taking
  # examples by (rank, position) deals them out to the classes in turn.
  rank = np.empty(len(order), np.int64)
  for c in np.unique(labels):
    rank[labels == c] = np.arange(np.sum(labels == c))
  chosen = order[np.lexsort((np.arange(len(order)), rank))[:num_train]]
  return np.sort(chosen)


def train_subset(num_train: int) -> np.ndarray:
  """Indices into the train split of a fixed class-balanced subset.

  The subset is the same for every seed and process, the class counts
  differ by at most one, and a smaller subset is part of every larger one,
  so few-example studies vary only initialization and data order.

  Args:
    num_train: examples to keep, 1 to 1437 (the whole train split).

  Returns:
    Sorted int [num_train] positions in `raw_images('train')`.

  Raises:
    InputError: num_train outside 1..1437.
  """
  total = len(_raw()['train'][1])
  if not 1 <= num_train <= total:
    raise errors.InputError(
        f'train_examples={num_train}: the digits train split has {total} '
        f'images; use 1 to {total} (or None for all).')
  return _train_subset(int(num_train)).copy()


def _resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] bilinear weights, half-pixel centres, edge clamp.

  The same convention as `tf.image.resize` and `jax.image.resize`
  (antialias=False), so `base.preprocess_for_eval` reproduces these pixels.
  """
  src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
  src = np.clip(src, 0, size_in - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  weights = np.zeros((size_out, size_in))
  np.add.at(weights, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), hi), frac)
  return weights


@functools.lru_cache(maxsize=4)
def _upsampled(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [N, size, size] on 0..255, int32 [N] labels)."""
  images, labels = raw_images(split)
  weights = _resize_matrix(images.shape[1], size)
  up = np.einsum('oh,nhw,pw->nop', weights, images.astype(np.float64),
                 weights)
  return up.astype(np.float32), labels


def _normalize(images: np.ndarray,
               data_config: ml_collections.ConfigDict) -> np.ndarray:
  """float [N, H, W] on 0..255 -> normalized float32 RGB [N, H, W, 3]."""
  mean, std = base.mean_std(data_config)
  rgb = np.repeat(images[..., None], 3, axis=-1)
  return ((rgb - mean) / std).astype(np.float32)


def _stream_word(seed: int, stream: int) -> int:
  """A 31-bit word naming (seed, stream), for stateless TF seeds."""
  return int(np.random.default_rng([seed, stream]).integers(1 << 31))


def _shift(images: np.ndarray, max_shift: int, seed: int,
           positions: np.ndarray) -> np.ndarray:
  """Translates each [H, W] image by up to max_shift px; fills with 0 (no ink).

  The offsets of the image at global position i come from (seed, i) alone.
  """
  _, height, width = images.shape
  padded = np.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2))
  offsets = [np.random.default_rng([seed, _SHIFT_STREAM, int(i)]).integers(
      0, 2 * max_shift + 1, size=2) for i in positions]
  return np.stack([padded[i, dy:dy + height, dx:dx + width]
                   for i, (dy, dx) in enumerate(offsets)])


@functools.lru_cache(maxsize=2)
def _randaugment_fn(num_layers: int, magnitude: float):
  """A tf.function: (float32 [B, H, W, 3], int64 [B, 2] seeds) -> images."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from nfnets.data import augment  # pylint: disable=g-import-not-at-top

  @tf.function
  def apply(images, seeds):
    return tf.map_fn(
        lambda args: augment.randaugment(args[0], args[1], num_layers,
                                         magnitude),
        (images, seeds), fn_output_signature=tf.float32)

  return apply


def _randaugment(images: np.ndarray, data_config: ml_collections.ConfigDict,
                 seed: int, positions: np.ndarray) -> np.ndarray:
  """RandAugment on float [N, H, W] grayscale images on 0..255.

  The image at global position i gets the stateless seed (word(seed), i).
  """
  fn = _randaugment_fn(data_config.randaugment_layers,
                       float(data_config.randaugment_magnitude))
  seeds = np.stack([
      np.full(len(images), _stream_word(seed, _RANDAUGMENT_STREAM), np.int64),
      positions.astype(np.int64)], axis=1)
  rgb = np.repeat(images[..., None], 3, axis=-1).astype(np.float32)
  # Every op treats channels alike, so gray stays gray: keep one channel.
  return fn(rgb, seeds).numpy()[..., 0]


def _mixing(data_config: ml_collections.ConfigDict) -> bool:
  return data_config.mixup_alpha > 0 or data_config.cutmix_alpha > 0


@functools.lru_cache(maxsize=2)
def _mix_pairs_fn(mixup_alpha: float, cutmix_alpha: float):
  """A tf.function mixing examples (2j, 2j + 1) of a batch with each other.

  (float32 [B, H, W, C] images, int32 [B] labels, int64 [B / 2, 2] pair
  seeds, bool [B / 2] use-CutMix) -> (images, mix_labels, mix_ratio). A pair
  is `augment.mixup` or `augment.cutmix` on a batch of two, with its own
  ratio (and box) from its seed.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from nfnets.data import augment  # pylint: disable=g-import-not-at-top

  def mix_pair(args):
    images, labels, seed, use_cutmix = args  # [2, H, W, C], [2], [2], []
    ratio_seed, box_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))

    def cut():
      return augment.cutmix(images, labels, augment.random_cutmix_box(
          ratio_seed, box_seed, cutmix_alpha, images.shape[1],
          images.shape[2]))

    def blend():
      return augment.mixup(images, labels,
                           augment.sample_beta(ratio_seed, mixup_alpha))

    if mixup_alpha <= 0:
      return cut()
    if cutmix_alpha <= 0:
      return blend()
    return tf.cond(use_cutmix, cut, blend)

  @tf.function
  def apply(images, labels, seeds, use_cutmix):
    pairs = (tf.reshape(images, [-1, 2, *images.shape[1:]]),
             tf.reshape(labels, [-1, 2]), seeds, use_cutmix)
    mixed, mix_labels, ratios = tf.map_fn(
        mix_pair, pairs,
        fn_output_signature=(tf.float32, labels.dtype, tf.float32))
    return (tf.reshape(mixed, tf.shape(images)), tf.reshape(mix_labels, [-1]),
            tf.reshape(ratios, [-1]))

  return apply


def _mix(images: np.ndarray, labels: np.ndarray,
         data_config: ml_collections.ConfigDict, seed: int,
         positions: np.ndarray) -> dict[str, np.ndarray]:
  """MixUp/CutMix as configured, pairing global positions (2k, 2k + 1).

  Pair k's ratio (and CutMix box) comes from (seed, k) alone; with both on,
  even pairs are CutMixed and odd pairs MixUped, so each kind gets half the
  pairs of any stretch of the stream. `positions` must start even and have
  even length (`check_batch`).
  """
  if not _mixing(data_config):
    return {'images': images, 'labels': labels}
  pairs = positions[::2] // 2
  seeds = np.stack([np.full(len(pairs), _stream_word(seed, _MIX_STREAM),
                            np.int64), pairs.astype(np.int64)], axis=1)
  fn = _mix_pairs_fn(float(data_config.mixup_alpha),
                     float(data_config.cutmix_alpha))
  mixed, mix_labels, ratios = fn(images, labels, seeds, pairs % 2 == 0)
  return {'images': mixed.numpy(), 'labels': labels,
          'mix_labels': mix_labels.numpy().astype(np.int32),
          'mix_ratio': ratios.numpy()}


def check_batch(data_config: ml_collections.ConfigDict,
                 batch_size: int) -> None:
  """Raises if `batch_size` per process cannot be used.

  Mixed pairs must not straddle processes or steps: with MixUp/CutMix the
  batch must be even.
  """
  if _mixing(data_config) and batch_size % 2:
    raise errors.InputError(
        f'MixUp/CutMix on digits mixes examples in pairs, so the per-process '
        f'batch (training.batch_size / processes) must be even; got '
        f'{batch_size}. Use an even per-process batch or turn mixing off.')


def check_available(data_config: ml_collections.ConfigDict) -> None:
  """The digits ship with scikit-learn: always available."""
  del data_config


def _split_name(split: str) -> str:
  if split not in ('train', 'test'):
    raise ValueError(f'Unknown digits split {split!r}; known splits: '
                     'train, test.')
  return split


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  del data_config  # The split is fixed.
  return len(_raw()[_split_name(split)][1])


def build_train(data_config: ml_collections.ConfigDict, *, batch_size: int,
                seed: int, start_step: int = 0, process_index: int = 0,
                process_count: int = 1, train_examples: Optional[int] = None
                ) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-process training batches; see `nfnets.data` for the contract.

  Global batch `step` covers positions [step * G, (step + 1) * G) of the
  concatenation of per-epoch permutations (G = batch_size * process_count);
  process p takes the p-th slice of it, so processes see disjoint examples
  and any step can be produced directly. Each example's augmentation depends
  only on (seed, its position), so the global batches do not depend on
  process_count.

  `train_examples` (not a config field; for few-example studies) draws the
  stream from `train_subset(train_examples)` instead of the whole split.

  Raises:
    InputError: (at the call, not the first batch) if mixing is on and
      batch_size is odd, or train_examples is out of range.
  """
  check_batch(data_config, batch_size)
  images, labels = _upsampled(_split_name(base.train_split(data_config)),
                              data_config.image_size)
  if train_examples is not None:
    keep = train_subset(train_examples)
    images, labels = images[keep], labels[keep]
  n = len(labels)
  global_batch = batch_size * process_count
  perms = {}

  def permutation(epoch: int) -> np.ndarray:
    if epoch not in perms:
      perms.clear()  # Batches span at most two consecutive epochs.
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    return perms[epoch]

  def batches() -> Iterator[dict[str, np.ndarray]]:
    step = start_step
    while True:
      start = step * global_batch + process_index * batch_size
      positions = np.arange(start, start + batch_size)
      epochs, offsets = np.divmod(positions, n)
      idx = np.empty(batch_size, np.int64)
      for epoch in np.unique(epochs):
        sel = epochs == epoch
        idx[sel] = permutation(int(epoch))[offsets[sel]]
      batch_images = images[idx]
      if data_config.max_shift:
        batch_images = _shift(batch_images, data_config.max_shift, seed,
                              positions)
      if data_config.randaugment_layers:
        batch_images = _randaugment(batch_images, data_config, seed,
                                    positions)
      yield _mix(_normalize(batch_images, data_config), labels[idx],
                 data_config, seed, positions)
      step += 1

  return batches()


def build_eval(data_config: ml_collections.ConfigDict, *, batch_size: int,
               process_index: int = 0, process_count: int = 1
               ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split, last batch padded with mask=False rows.

  Every process yields the same number of batches (that of the largest
  shard) so jitted eval steps line up across processes.
  """
  images, labels = _upsampled(_split_name(base.eval_split(data_config)),
                              data_config.eval_image_size)
  shards = np.array_split(np.arange(len(labels)), process_count)
  idx = shards[process_index]
  num_batches = -(-max(len(s) for s in shards) // batch_size)
  for b in range(num_batches):
    part = idx[b * batch_size:(b + 1) * batch_size]
    pad = batch_size - len(part)
    batch_images = _normalize(images[part], data_config)
    yield {
        'images': np.pad(batch_images, ((0, pad), (0, 0), (0, 0), (0, 0))),
        'labels': np.pad(labels[part], (0, pad)).astype(np.int32),
        'mask': np.arange(batch_size) < len(part),
    }
