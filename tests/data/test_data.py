"""Tests for nfnets.data: config, digits pipeline, mixing, tfds ImageNet."""
import itertools

import jax
import numpy as np
import pytest

from nfnets import data
from nfnets.data import digits


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


# ---------------------------------------------------------------- config


def test_default_config_is_typed():
  config = data.default_config('imagenet2012')
  with pytest.raises(TypeError):
    config.image_size = 'big'
  with pytest.raises(TypeError):
    config.data_dir = 3
  config.data_dir = '/tmp/tfds'  # A placeholder accepts its declared type.
  assert config.data_dir == '/tmp/tfds'
  data.validate(config)


def test_unknown_dataset_lists_known_ones():
  config = data.default_config()
  config.dataset = 'svhn'
  with pytest.raises(ValueError, match='cifar10, cifar100, digits, '
                     'imagenet2012, synthetic'):
    data.validate(config)
  with pytest.raises(ValueError, match='known data sets'):
    next(data.build_train(config, batch_size=2, seed=0))
  with pytest.raises(ValueError, match='known data sets'):
    data.default_config('svhn')
  with pytest.raises(ValueError, match="did you mean 'cifar100'"):
    data.default_config('cifar-100')


@pytest.mark.parametrize('field,value,message', [
    ('eval_split', 'validation', 'known splits: train, test'),
    ('eval_crop', 'resize_crop', 'eval_crop'),
    ('mixup_alpha', -1.0, 'mixup_alpha'),
    ('randaugment_layers', -2, 'randaugment_layers'),
])
def test_validate_rejects_bad_fields(field, value, message):
  config = data.default_config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    data.validate(config)


def test_splits_and_classes_follow_the_dataset():
  config = data.default_config('imagenet2012')
  assert data.num_classes(config) == 1000
  assert data.num_examples(config, 'validation') == 50_000
  assert data.num_examples(config) == 1_281_167
  config = data.default_config()
  assert data.num_classes(config) == 10
  assert data.num_examples(config, 'train') + data.num_examples(
      config, 'test') == 1797
  config.num_classes = 12
  assert data.num_classes(config) == 12


# ---------------------------------------------------------------- digits


def test_digits_split_is_stratified_and_complete():
  train_x, train_y = digits.raw_images('train')
  test_x, test_y = digits.raw_images('test')
  assert train_x.dtype == np.uint8 and train_x.shape[1:] == (8, 8)
  assert len(train_y) == 1437 and len(test_y) == 360
  assert train_x.max() == 255 and train_x.min() == 0
  # Stratified: each class is ~20% of its examples in the test split.
  per_class = np.bincount(test_y, minlength=10) / (
      np.bincount(test_y, minlength=10) + np.bincount(train_y, minlength=10))
  np.testing.assert_allclose(per_class, 0.2, atol=0.01)
  # Together the splits hold every example sklearn ships, once.
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  ref = np.round(datasets.load_digits().images * 255 / 16).astype(np.uint8)
  ours = np.concatenate([train_x, test_x]).reshape(len(ref), -1)
  key = lambda a: sorted(map(bytes, a))
  assert key(ours) == key(ref.reshape(len(ref), -1))


def test_digits_normalization_constants_match_train_pixels():
  train_x, _ = digits.raw_images('train')
  mean, std = data.mean_std(data.default_config())
  np.testing.assert_allclose(mean, train_x.mean(), rtol=1e-4)
  np.testing.assert_allclose(std, train_x.std(), rtol=1e-4)


def test_digits_train_batches_shapes_and_ranges():
  config = data.default_config()
  config.image_size = 16
  batch = next(data.build_train(config, batch_size=32, seed=0))
  assert set(batch) == {'images', 'labels'}
  assert batch['images'].shape == (32, 16, 16, 3)
  assert batch['images'].dtype == np.float32
  assert batch['labels'].dtype == np.int32
  assert batch['labels'].min() >= 0 and batch['labels'].max() < 10
  mean, std = data.mean_std(config)
  lo, hi = (0 - mean[0]) / std[0], (255 - mean[0]) / std[0]
  assert batch['images'].min() >= lo - 1e-5
  assert batch['images'].max() <= hi + 1e-5
  # Grayscale replicated to RGB.
  np.testing.assert_array_equal(batch['images'][..., 0],
                                batch['images'][..., 2])


def test_digits_train_is_deterministic_and_resumable():
  config = data.default_config()
  config.mixup_alpha = 0.2
  config.cutmix_alpha = 1.0
  kwargs = dict(batch_size=16, seed=3, process_index=1, process_count=2)
  first = _take(data.build_train(config, **kwargs), 100)
  again = _take(data.build_train(config, **kwargs), 100)
  resumed = _take(data.build_train(config, start_step=77, **kwargs), 23)
  for a, b in zip(first, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(first[77:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other_seed = next(data.build_train(config, **{**kwargs, 'seed': 4}))
  assert not np.array_equal(other_seed['labels'], first[0]['labels'])


def test_digits_processes_read_disjoint_examples_covering_an_epoch():
  config = data.default_config()
  config.max_shift = 0
  n = data.num_examples(config, 'train')
  images, _ = digits._upsampled('train', config.image_size)
  # 1437 = 3 * 479: one global step of three processes is exactly an epoch.
  batch_size, steps = 479, 1
  # Identify examples by their pixels; comparing multisets stays exact even
  # if two scans coincide.
  stored = sorted(im.tobytes() for im in digits._normalize(images, config))
  seen = []
  for p in range(3):
    for batch in _take(data.build_train(config, batch_size=batch_size, seed=0,
                                        process_index=p, process_count=3),
                       steps):
      seen.extend(im.tobytes() for im in batch['images'])
  assert len(seen) == n
  assert sorted(seen) == stored


def test_digits_shift_is_a_bounded_translation():
  config = data.default_config()
  config.max_shift = 2
  shifted = next(data.build_train(config, batch_size=8, seed=0))
  config.max_shift = 0
  plain = next(data.build_train(config, batch_size=8, seed=0))
  np.testing.assert_array_equal(shifted['labels'], plain['labels'])
  mean, std = data.mean_std(config)
  background = -mean[0] / std[0]
  moved = 0
  for s, p in zip(shifted['images'][..., 0], plain['images'][..., 0]):
    padded = np.pad(p, 2, constant_values=background)
    matches = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.allclose(padded[dy:dy + 32, dx:dx + 32], s, atol=1e-5)]
    assert matches, 'shifted image is not a translation within 2 px'
    moved += (2, 2) not in matches
  assert moved > 0


def test_digits_eval_pads_the_last_batch_and_matches_predict_preprocessing():
  config = data.default_config()
  config.eval_image_size = 24
  batches = list(data.build_eval(config, batch_size=100))
  assert len(batches) == 4
  for b in batches:
    assert b['images'].shape == (100, 24, 24, 3)
    assert b['mask'].dtype == bool
  assert [int(b['mask'].sum()) for b in batches] == [100, 100, 100, 60]
  images = np.concatenate([b['images'][b['mask']] for b in batches])
  labels = np.concatenate([b['labels'][b['mask']] for b in batches])
  raw_x, raw_y = digits.raw_images('test')
  np.testing.assert_array_equal(labels, raw_y)
  # preprocess_for_eval (jax.image.resize) reproduces the NumPy pipeline
  # from the raw uint8 images, given as grayscale or as floats in [0, 1].
  np.testing.assert_allclose(data.preprocess_for_eval(raw_x, config), images,
                             atol=1e-5)
  np.testing.assert_allclose(
      data.preprocess_for_eval(raw_x[..., None] / 255.0, config), images,
      atol=1e-4)


def test_digits_eval_shards_line_up_across_processes():
  config = data.default_config()
  shards = [list(data.build_eval(config, batch_size=64, process_index=p,
                                 process_count=3)) for p in range(3)]
  assert len({len(s) for s in shards}) == 1
  labels = np.concatenate([b['labels'][b['mask']] for s in shards for b in s])
  np.testing.assert_array_equal(np.sort(labels),
                                np.sort(digits.raw_images('test')[1]))


# ---------------------------------------------------------------- mixing


def _np_cutmix_box(ratio, height, width, cy, cx):
  """CutMix's box from its definition (Yun et al., 2019), in NumPy."""
  cut = np.sqrt(1.0 - ratio)
  cut_h, cut_w = int(height * cut), int(width * cut)
  return (int(np.clip(cy - cut_h // 2, 0, height)),
          int(np.clip(cx - cut_w // 2, 0, width)),
          int(np.clip(cy + cut_h // 2, 0, height)),
          int(np.clip(cx + cut_w // 2, 0, width)))


def test_mixup_matches_its_formula(tf_augment):
  tf, augment = tf_augment
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 5, 5, 3)).astype(np.float32)
  labels = np.arange(4, dtype=np.int32)
  mixed, mix_labels, ratio = (np.asarray(x) for x in augment.mixup(
      tf.constant(images), tf.constant(labels), 0.3))
  for i in range(4):
    np.testing.assert_allclose(
        mixed[i], 0.3 * images[i] + 0.7 * images[3 - i], rtol=1e-6)
  np.testing.assert_array_equal(mix_labels, [3, 2, 1, 0])
  np.testing.assert_allclose(ratio, 0.3)


def test_cutmix_ratio_is_the_fraction_of_original_pixels(tf_augment):
  tf, augment = tf_augment
  images = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones(
      (4, 10, 12, 1), np.float32)
  labels = np.arange(4, dtype=np.int32)
  for ratio, cy, cx in [(0.5, 5, 6), (0.9, 0, 0), (0.1, 9, 11), (1.0, 3, 3)]:
    box = augment.cutmix_box(tf.constant(ratio), 10, 12, tf.constant(cy),
                             tf.constant(cx))
    mixed, mix_labels, kept = (np.asarray(x) for x in augment.cutmix(
        tf.constant(images), tf.constant(labels), box))
    original = (mixed == images).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(kept, original, rtol=1e-6)
    np.testing.assert_array_equal(mix_labels, labels[::-1])
  # Away from the border the pasted area is (1 - ratio) up to rounding.
  top, left, bottom, right = np.asarray(augment.cutmix_box(
      tf.constant(0.75), 100, 100, tf.constant(50), tf.constant(50)))
  assert (bottom - top) * (right - left) == 50 * 50


def test_cutmix_matches_numpy_pasting(tf_augment):
  tf, augment = tf_augment
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 9, 11, 3)).astype(np.float32)
  labels = np.arange(6, dtype=np.int32)
  # Inside, clipped at each border, empty, and whole-image boxes.
  for ratio, cy, cx in [(0.4, 2, 8), (0.5, 0, 10), (0.3, 8, 0), (1.0, 4, 4),
                        (0.0, 4, 5)]:
    box = augment.cutmix_box(tf.constant(ratio), 9, 11, tf.constant(cy),
                             tf.constant(cx))
    np.testing.assert_array_equal(box, _np_cutmix_box(ratio, 9, 11, cy, cx))
    top, left, bottom, right = np.asarray(box)
    expected = images.copy()
    expected[:, top:bottom, left:right] = images[::-1, top:bottom, left:right]
    mixed, _, kept = augment.cutmix(tf.constant(images), tf.constant(labels),
                                    box)
    np.testing.assert_array_equal(np.asarray(mixed), expected)
    np.testing.assert_allclose(
        kept, 1 - (bottom - top) * (right - left) / 99, rtol=1e-6)


def test_mix_batch_cutmixes_first_half_and_mixes_up_second(tf_augment):
  tf, augment = tf_augment
  rng = np.random.default_rng(1)
  images = rng.normal(size=(8, 6, 6, 1)).astype(np.float32)
  labels = np.arange(8, dtype=np.int32)
  out = augment.mix_batch(
      {'images': tf.constant(images), 'labels': tf.constant(labels)},
      tf.constant([0, 0], tf.int64), 0.2, 1.0)
  out = {k: np.asarray(v) for k, v in out.items()}
  np.testing.assert_array_equal(out['mix_labels'], [3, 2, 1, 0, 7, 6, 5, 4])
  # CutMix half: every pixel comes from the image or its partner.
  for i in range(4):
    own = out['images'][i] == images[i]
    partner = out['images'][i] == images[3 - i]
    assert np.all(own | partner)
    np.testing.assert_allclose(out['mix_ratio'][i], own.mean(), rtol=1e-6)
  # MixUp half: a convex combination with the stated weight.
  r = out['mix_ratio'][4]
  for i in range(4, 8):
    np.testing.assert_allclose(
        out['images'][i], r * images[i] + (1 - r) * images[11 - i],
        rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- devices


def test_prefetch_to_devices_round_trips_values():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec('data'))
  config = data.default_config()
  host = _take(data.build_train(config, batch_size=8, seed=0), 3)
  placed = list(data.prefetch_to_devices(iter(host), sharding, size=2))
  assert len(placed) == 3
  for h, d in zip(host, placed):
    assert isinstance(d['images'], jax.Array)
    assert d['images'].sharding == sharding
    np.testing.assert_array_equal(np.asarray(d['images']), h['images'])


# ---------------------------------------------------------------- augment ops
# Imported lazily: TensorFlow takes seconds to import and the tests above do
# not need it.


@pytest.fixture(scope='module')
def tf_augment():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from nfnets.data import augment  # pylint: disable=g-import-not-at-top
  return tf, augment


@pytest.fixture(scope='module')
def tf_image_ops():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from nfnets.data import image_ops  # pylint: disable=g-import-not-at-top
  return tf, image_ops


def _photo(seed=0, shape=(23, 31, 3)):
  """A smooth-ish random uint8 image (PIL references need uint8)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (shape[0] // 4 + 2, shape[1] // 4 + 2, 3))
  image = np.kron(coarse, np.ones((4, 4, 1)))[:shape[0], :shape[1]]
  noise = rng.integers(-20, 21, shape)
  return np.clip(image + noise, 10, 230).astype(np.uint8)


def test_pixel_ops_match_numpy(tf_image_ops):
  tf, image_ops = tf_image_ops
  image = _photo()
  x = tf.constant(image, tf.float32)
  f = image.astype(np.float32)
  np.testing.assert_array_equal(image_ops.invert(x), 255 - f)
  np.testing.assert_array_equal(image_ops.solarize(x, 128.0),
                                np.where(f < 128, f, 255 - f))
  np.testing.assert_array_equal(image_ops.posterize(x, tf.constant(3)),
                                image & 0b11100000)
  np.testing.assert_array_equal(
      image_ops.solarize_add(x, 50.0), np.where(f < 128,
                                              np.minimum(f + 50, 255), f))


def test_colour_ops_match_pil(tf_image_ops):
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from PIL import ImageEnhance
  from PIL import ImageOps
  # pylint: enable=g-import-not-at-top
  tf, image_ops = tf_image_ops
  image = _photo(1)
  pil = Image.fromarray(image)
  x = tf.constant(image, tf.float32)
  cases = [
      (image_ops.autocontrast(x), ImageOps.autocontrast(pil)),
      (image_ops.equalize(x), ImageOps.equalize(pil)),
      (image_ops.color(x, 0.3), ImageEnhance.Color(pil).enhance(0.3)),
      (image_ops.contrast(x, 1.7),
       ImageEnhance.Contrast(pil).enhance(1.7)),
      (image_ops.brightness(x, 0.6),
       ImageEnhance.Brightness(pil).enhance(0.6)),
      (image_ops.sharpness(x, 1.8),
       ImageEnhance.Sharpness(pil).enhance(1.8)),
  ]
  for ours, ref in cases:
    # PIL rounds through uint8 at each stage; allow 2 grey levels.
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref, np.float32),
                               atol=2.0)


def test_geometric_ops_move_pixels_as_stated(tf_image_ops):
  tf, image_ops = tf_image_ops
  image = _photo(2, (16, 16, 3))
  x = tf.constant(image, tf.float32)
  # +90 degrees turns a square image clockwise as displayed (rows down).
  np.testing.assert_array_equal(image_ops.rotate(x, 90.0),
                                np.rot90(image, k=-1))
  shifted = np.full_like(image, 128)
  shifted[:, 3:] = image[:, :-3]
  np.testing.assert_array_equal(image_ops.translate_x(x, 3.0), shifted)
  shifted = np.full_like(image, 128)
  shifted[:-2] = image[2:]
  np.testing.assert_array_equal(image_ops.translate_y(x, -2.0), shifted)
  # Shear: output (y, x) reads input (y, x + s * y), nearest pixel.
  out = np.asarray(image_ops.shear_x(x, 0.25))
  for y in range(16):
    for col in range(16):
      src = int(np.floor(col + 0.25 * y + 0.5))
      want = image[y, src] if src < 16 else 128
      np.testing.assert_array_equal(out[y, col], want)


def test_geometric_ops_match_tensorflows_projective_transform(tf_image_ops):
  # The warps gather whole pixels; TensorFlow's own kernel is the reference,
  # also in a traced function of unknown image size (as in the pipeline),
  # where graph rewrites could change the float rounding. At magnitude 10
  # rotations are +-30 degrees, whose coordinates hit many exact halves.
  tf, image_ops = tf_image_ops
  sig = [tf.TensorSpec([None, None, 3], tf.float32),
         tf.TensorSpec([8], tf.float32)]
  warp = image_ops._transform  # pylint: disable=protected-access
  ours = tf.function(lambda x, t: warp(x, tf.unstack(t)[:6]),
                     input_signature=sig)
  reference = lambda x, t: tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=t[None], output_shape=tf.shape(x)[:2],
      fill_value=128.0, interpolation='NEAREST', fill_mode='CONSTANT')[0]
  rng = np.random.default_rng(5)
  for shape, degrees in [((37, 53, 3), -30.0), ((20, 61, 3), 30.0),
                         ((24, 24, 3), 17.0)]:
    image = tf.constant(_photo(6, shape), tf.float32)
    theta = np.deg2rad(degrees)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    c, s = np.cos(theta), np.sin(theta)
    transforms = [[c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy],
                  [1, rng.uniform(-0.3, 0.3), 0, 0, 1, 0],
                  [1, 0, 0, rng.uniform(-0.3, 0.3), 1, 0],
                  [1, 0, -0.45 * shape[1], 0, 1, 0],
                  [1, 0, 0, 0, 1, 2.5]]
    for t in transforms:
      t = tf.constant(list(t) + [0, 0], tf.float32)
      np.testing.assert_array_equal(ours(image, t), reference(image, t))


def test_histogram_ops_keep_a_constant_channel_like_pil(tf_image_ops):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  tf, image_ops = tf_image_ops
  image = _photo(7)
  image[..., 1] = 90
  pil = Image.fromarray(image)
  x = tf.constant(image, tf.float32)
  np.testing.assert_array_equal(image_ops.autocontrast(x),
                                np.asarray(ImageOps.autocontrast(pil)))
  np.testing.assert_array_equal(image_ops.equalize(x),
                                np.asarray(ImageOps.equalize(pil)))


def test_randaugment_is_seeded_and_stays_in_range(tf_augment):
  tf, augment = tf_augment
  x = tf.constant(_photo(3, (24, 24, 3)), tf.float32)
  outs = [augment.randaugment(x, tf.constant([7, i], tf.int64), 3, 15.0)
          for i in range(12)]
  again = augment.randaugment(x, tf.constant([7, 0], tf.int64), 3, 15.0)
  np.testing.assert_array_equal(outs[0], again)
  for out in outs:
    assert out.shape == (24, 24, 3)
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255
  changed = sum(not np.array_equal(o, x) for o in outs)
  distinct = len({np.asarray(o).tobytes() for o in outs})
  assert changed >= 6 and distinct >= 6


def test_random_crop_respects_area_and_aspect(tf_augment):
  tf, augment = tf_augment
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(_photo(4, (60, 80, 3))).save(buf, 'JPEG')
  jpeg = tf.constant(buf.getvalue())
  sizes = []
  for i in range(30):
    crop = augment.decode_and_random_crop(jpeg, tf.constant([1, i], tf.int64))
    h, w = crop.shape[:2]
    sizes.append((h, w))
    fallback = (h, w) == (52, 52)  # 0.875 of the shorter side, centred.
    if not fallback:
      assert 0.08 * 4800 * 0.9 <= h * w <= 4800
      assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
  assert len(set(sizes)) > 10
  again = augment.decode_and_random_crop(jpeg, tf.constant([1, 0], tf.int64))
  assert again.shape[:2] == sizes[0]


def test_tf_mix_batch_halves_and_ratio_distribution(tf_augment):
  tf, augment = tf_augment
  images = tf.constant(np.random.default_rng(0).normal(
      size=(8, 10, 10, 1)).astype(np.float32))
  labels = tf.range(8)
  ratios = []
  for i in range(200):
    out = augment.mix_batch({'images': images, 'labels': labels},
                            tf.constant([3, i], tf.int64), 0.2, 1.0)
    ratios.append(out['mix_ratio'].numpy())
  out = {k: v.numpy() for k, v in out.items()}
  np.testing.assert_array_equal(out['mix_labels'], [3, 2, 1, 0, 7, 6, 5, 4])
  ratios = np.array(ratios)
  # MixUp ratios ~ Beta(a, a), a = 0.2: mean 1/2, variance 1 / (4 (2a + 1)).
  mixup = ratios[:, 4]
  assert abs(mixup.mean() - 0.5) < 0.08
  np.testing.assert_allclose(mixup.var(), 1 / (4 * (2 * 0.2 + 1)), rtol=0.2)
  # CutMix keeps a whole-pixel fraction of each image.
  cut = ratios[:, 0] * 100
  np.testing.assert_allclose(cut, np.round(cut), atol=1e-3)


# ---------------------------------------------------------------- ImageNet


def _imagenet_config(data_dir, **overrides):
  config = data.default_config('imagenet2012')
  config.data_dir = str(data_dir)
  config.image_size = 32
  config.eval_image_size = 24
  config.shuffle_buffer = 16
  config.update(overrides)
  return config


def test_imagenet_mock_train_batches(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = _imagenet_config(tmp_path, randaugment_layers=2,
                            randaugment_magnitude=10.0, mixup_alpha=0.2,
                            cutmix_alpha=1.0)
  mean, std = data.mean_std(config)
  with tfds.testing.mock_data(num_examples=40):
    kwargs = dict(batch_size=4, seed=5, process_index=1, process_count=2)
    first = _take(data.build_train(config, **kwargs), 4)
    # A second stream with the same seed, started at step 2: checks both
    # determinism and resuming.
    resumed = _take(data.build_train(config, start_step=2, **kwargs), 2)
    other = next(data.build_train(config, **{**kwargs, 'seed': 6}))
  batch = first[0]
  assert set(batch) == {'images', 'labels', 'mix_labels', 'mix_ratio'}
  assert batch['images'].shape == (4, 32, 32, 3)
  assert batch['images'].dtype == np.float32
  assert batch['labels'].dtype == np.int32
  assert batch['mix_labels'].dtype == np.int32
  assert batch['mix_ratio'].dtype == np.float32
  for b in first:
    assert np.all((b['labels'] >= 0) & (b['labels'] < 1000))
    assert np.all((b['mix_ratio'] >= 0) & (b['mix_ratio'] <= 1))
    for c in range(3):
      channel = b['images'][..., c]
      assert channel.min() >= (0 - mean[c]) / std[c] - 1e-4
      assert channel.max() <= (255 - mean[c]) / std[c] + 1e-4
  for a, b in zip(first[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(other['images'], first[0]['images'])


def test_imagenet_mock_eval_batches(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = _imagenet_config(tmp_path)
  with tfds.testing.mock_data(num_examples=10):
    batches = list(data.build_eval(config, batch_size=4))
  assert len(batches) == 3
  assert [int(b['mask'].sum()) for b in batches] == [4, 4, 2]
  for b in batches:
    assert b['images'].shape == (4, 24, 24, 3)
    assert b['labels'].dtype == np.int32
  np.testing.assert_array_equal(batches[-1]['images'][2:], 0)


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
  """A real, prepared imagenet2012 of 4 classes x 12 train and 16 val JPEGs.

  Built offline from tars laid out like ILSVRC2012_img_{train,val}.tar, so
  the tfds reading, slicing and sharding paths run as on the real data.
  """
  import io  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('imagenet')
  manual, data_dir = root / 'manual', root / 'data'
  manual.mkdir()
  rng = np.random.default_rng(0)

  def add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))

  def jpeg():
    h, w = rng.integers(20, 60, 2)
    buf = io.BytesIO()
    Image.fromarray(_photo(int(rng.integers(1 << 30)), (h, w, 3))).save(
        buf, 'JPEG')
    return buf.getvalue()

  labels_file = os.path.join(os.path.dirname(tfds.__file__), 'datasets',
                             'imagenet2012', 'labels.txt')
  synsets = open(labels_file).read().split()[:4]
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as outer:
    for synset in synsets:
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode='w') as inner:
        for i in range(12):
          add(inner, f'{synset}_{i}.JPEG', jpeg())
      add(outer, f'{synset}.tar', inner_buf.getvalue())
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as tar:
    for i in range(16):
      add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', jpeg())
  tfds.builder('imagenet2012', data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=str(manual), try_download_gcs=False))
  return data_dir


def test_imagenet_unprepared_error_says_how_to_prepare(tmp_path):
  config = _imagenet_config(tmp_path / 'empty')
  for build in (lambda: data.build_train(config, batch_size=2, seed=0),
                lambda: data.build_eval(config, batch_size=2)):
    with pytest.raises(FileNotFoundError) as error:
      build()
    message = str(error.value)
    for needle in ('download_and_prepare', 'manual_dir',
                   'ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar',
                   str(tmp_path / 'empty')):
      assert needle in message


def test_imagenet_sizes_come_from_the_prepared_metadata(tiny_imagenet):
  config = _imagenet_config(tiny_imagenet)
  assert data.num_examples(config, 'train') == 48
  assert data.num_examples(config, 'validation') == 16
  assert data.num_examples(config, 'train[:25%]') == 12


def test_imagenet_processes_read_disjoint_shards(tiny_imagenet):
  config = _imagenet_config(tiny_imagenet)
  single = list(data.build_eval(config, batch_size=16))[0]
  per_process = [list(data.build_eval(config, batch_size=3, process_index=p,
                                      process_count=2)) for p in range(2)]
  assert [len(s) for s in per_process] == [3, 3]
  keys = [[im.tobytes() for b in s for im in b['images'][b['mask']]]
          for s in per_process]
  assert len(keys[0]) == len(keys[1]) == 8
  assert not set(keys[0]) & set(keys[1])
  assert sorted(keys[0] + keys[1]) == sorted(
      im.tobytes() for im in single['images'])
  # One train epoch (24 per shard = 4 steps of 6) over both processes visits
  # every training example once: 12 per class.
  labels = np.concatenate([
      b['labels'] for p in range(2) for b in _take(data.build_train(
          config, batch_size=6, seed=0, process_index=p, process_count=2), 4)])
  np.testing.assert_array_equal(np.bincount(labels), [12, 12, 12, 12])


def test_imagenet_resumes_across_epochs(tiny_imagenet):
  config = _imagenet_config(tiny_imagenet, mixup_alpha=0.2)
  # 48 examples / batch 10 -> 4 steps per epoch; step 6 is inside epoch 1.
  fresh = _take(data.build_train(config, batch_size=10, seed=1), 9)
  resumed = _take(data.build_train(config, batch_size=10, seed=1,
                                   start_step=6), 3)
  for a, b in zip(fresh[6:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Epochs are reshuffled, not replayed.
  assert not np.array_equal(fresh[0]['labels'], fresh[4]['labels'])


@pytest.mark.parametrize('crop', ['resize', 'resize_crop', 'aspect'])
def test_imagenet_eval_matches_preprocess_for_eval(tiny_imagenet, crop):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = _imagenet_config(tiny_imagenet, eval_crop=crop)
  batches = list(data.build_eval(config, batch_size=16))
  records = tfds.builder('imagenet2012', data_dir=str(tiny_imagenet)
                         ).as_dataset(split='validation')
  _, std = data.mean_std(config)
  # Six images of different sizes (each size compiles a resize).
  for record, image, label in zip(
      tfds.as_numpy(records.take(6)), batches[0]['images'],
      batches[0]['labels']):
    assert record['label'] == label
    ours = data.preprocess_for_eval(record['image'][None], config)[0]
    # TF's and JAX's bicubic kernels agree to well under a grey level.
    np.testing.assert_allclose(ours, image, atol=0.5 / std.min())


def test_digits_randaugment_is_seeded_resumable_and_stays_gray():
  config = data.default_config()
  config.randaugment_layers = 2
  config.randaugment_magnitude = 10.0
  stream = _take(data.build_train(config, batch_size=8, seed=0), 3)
  resumed = next(data.build_train(config, batch_size=8, seed=0, start_step=2))
  np.testing.assert_array_equal(stream[2]['images'], resumed['images'])
  images = stream[0]['images']
  np.testing.assert_array_equal(images[..., 0], images[..., 1])
  config.randaugment_layers = 0
  plain = next(data.build_train(config, batch_size=8, seed=0))
  changed = [not np.allclose(a, b) for a, b in zip(images, plain['images'])]
  assert any(changed)
