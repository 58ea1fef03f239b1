"""Input pipelines: one module per data set, named in `DATASETS`.

* 'imagenet2012' (`imagenet`) and 'cifar10' / 'cifar100' (`cifar`) read
  tensorflow-datasets from `data.data_dir` through the shared tf.data
  plumbing of `tfds_common` (reading, per-process shards, seeded resumable
  epochs, padded eval).
* 'digits' (`digits`): scikit-learn's bundled 8x8 digits, held in memory.
* 'synthetic' (`synthetic`): one batch of normal noise made per process and
  yielded every step, for timing the device step without input cost; its
  train split has ImageNet's size so epoch-based schedules match ImageNet's.

Contract with the runner:

* `default_config(dataset='digits')` -> the `config.data` ConfigDict (typed
  fields; None placeholders mean "the data set's own default").
  `validate(config.data)` raises on unknown data sets, splits, crops or
  negative strengths without reading data.
* `check_available(config.data)` raises a `nfnets.errors.UserError` with
  the prepare command when the data is missing, reading no examples.
* `num_examples(config.data, split)`, `num_classes(config.data)`,
  `train_split` / `eval_split` / `eval_crop(config.data)` (resolved defaults).
* `build_train(config.data, *, batch_size, seed, start_step=0,
  process_index=0, process_count=1)` yields this process's batches forever:
  `{'images': float32 [B, H, W, 3] normalized, 'labels': int32 [B]}`, plus
  `'mix_labels': int32 [B]` and `'mix_ratio': float32 [B]` when MixUp or
  CutMix is on (target = r * onehot(labels) + (1 - r) * onehot(mix_labels)).
  Digits: the stream is a function of (seed, global example index): every
  random draw for an example (shift, RandAugment, its MixUp/CutMix pair
  2k, 2k + 1 and that pair's ratio/box) depends on (seed, its position in
  the stream), never on process_index or process_count, so the per-process
  batches concatenated in process order are the same global batch for any
  number of processes (mixing then needs an even per-process batch).
  tfds ImageNet and CIFAR: each process reads its own share of the files
  and seeds its shuffle and augmentation with its process_index, so the
  stream is a function of (seed, process_index, process_count). Synthetic:
  example i is a function of (seed, i), as for digits, and every step
  repeats step 0's batch. In every case, starting at `start_step=k` gives
  exactly the batches a fresh stream gives after k batches, and processes
  read disjoint examples.
* `build_eval(config.data, *, batch_size, process_index=0,
  process_count=1)` yields one pass over the eval split as
  `{'images', 'labels', 'mask': bool [B]}`; the last batch is padded to B with
  mask=False rows, and all processes yield the same number of batches.
* `prefetch_to_devices(batches, sharding)` turns per-process host batches
  into global sharded `jax.Array`s, a few batches ahead.
* `normalize(images, config.data)` and `preprocess_for_eval(images,
  config.data)` apply the eval normalization/geometry to in-memory uint8
  (0..255) or float (0..1) images of any size, for `predict`.
* `digits.raw_images('test')` returns the raw uint8 8x8 digits and labels.
"""
from nfnets.data import digits
from nfnets.data.base import check_images
from nfnets.data.base import DATASETS
from nfnets.data.base import default_config
from nfnets.data.base import eval_crop
from nfnets.data.base import eval_split
from nfnets.data.base import get_spec
from nfnets.data.base import mean_std
from nfnets.data.base import normalize
from nfnets.data.base import num_classes
from nfnets.data.base import preprocess_for_eval
from nfnets.data.base import train_split
from nfnets.data.base import validate
from nfnets.data.pipeline import build_eval
from nfnets.data.pipeline import check_batch
from nfnets.data.pipeline import check_available
from nfnets.data.pipeline import build_train
from nfnets.data.pipeline import num_examples
from nfnets.data.pipeline import prefetch_to_devices
