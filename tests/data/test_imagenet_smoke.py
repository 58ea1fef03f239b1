"""The ImageNet smoke run end to end, and data options a data set ignores.

`fake_imagenet` writes a tiny ImageNet in the layout of the real downloads
(ILSVRC2012_img_train.tar of per-synset tars, ILSVRC2012_img_val.tar) and
prepares it offline with tfds' own imagenet2012 builder
(`benchmarks.fake_imagenet`), so the class ids come from the labels.txt and
validation_labels.txt that tfds ships. Every class has its own colour, so an
image paired with another class's label is visible in its pixels.
"""
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from benchmarks import fake_imagenet as fake_imagenet_lib
from nfnets import configs
from nfnets import data
from nfnets import errors
from nfnets import train
from nfnets.train import checkpoint
from nfnets.train import config as train_config
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parents[2]
# tfds gives the k-th validation file (sorted by name) the synset on line k
# of validation_labels.txt, so N validation files carry that file's first N
# synsets; the classes here are those (6 distinct ones), one image each.
NUM_VAL = 6
TRAIN_PER_CLASS = 4
# One saturated colour per class, far apart in RGB.
COLOURS = np.array([(230, 30, 30), (30, 200, 30), (30, 30, 230),
                    (230, 220, 30), (220, 30, 220), (30, 220, 220)],
                   np.float64)
# The runner's flags beyond the user's command: two steps (one of warmup),
# and the whole validation split (the smoke config's `validation[:1%]` of 6
# images is empty; `test_an_empty_eval_slice_is_a_user_error` checks the
# message).
SMOKE_FLAGS = ('--config.training.num_steps=2',
               '--config.optimizer.warmup_steps=1',
               '--config.data.eval_split=validation')


def _jpeg(colour: np.ndarray, rng: np.random.Generator) -> bytes:
  """A JPEG of random size, mostly `colour` over a blocky texture."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = rng.integers(40, 80, 2)
  coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3))
  texture = np.kron(coarse, np.ones((8, 8, 1)))[:h, :w]
  image = np.clip(0.8 * colour + 0.2 * texture, 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'JPEG', quality=90)
  return buf.getvalue()


def _nearest_colour(images: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] on 0..255 -> [N] index of the nearest class colour."""
  means = images.reshape(len(images), -1, 3).mean(axis=1)
  return np.argmin(((means[:, None] - COLOURS[None]) ** 2).sum(-1), axis=1)


@pytest.fixture(scope='module')
def fake_imagenet(tmp_path_factory) -> dict:
  """A prepared imagenet2012 of 6 real synsets: 4 train, 1 val image each.

  Returns:
    {'data_dir': the tfds data directory, 'synsets': the classes' synsets in
    colour order, 'val_synsets': validation file name -> intended synset}.
  """
  synsets, _ = fake_imagenet_lib.choose_synsets(len(COLOURS), NUM_VAL)
  built = fake_imagenet_lib.build(
      tmp_path_factory.mktemp('fake_imagenet'), num_classes=len(COLOURS),
      train_per_class=TRAIN_PER_CLASS, num_val=NUM_VAL, extract=False,
      # A validation image shows its synset's class colour.
      make_image=lambda c, rng: _jpeg(COLOURS[c], rng))
  assert built.synsets == synsets
  assert sorted(built.val_synsets.values()) == sorted(synsets)
  return {'data_dir': built.data_dir, 'synsets': built.synsets,
          'val_synsets': built.val_synsets}


# ------------------------------------------- the prepared data's labels


@pytest.mark.slow
def test_prepared_labels_are_the_encoded_synsets(fake_imagenet):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  class_ids = fake_imagenet_lib.class_ids()
  synsets = fake_imagenet['synsets']
  builder = tfds.builder('imagenet2012',
                         data_dir=str(fake_imagenet['data_dir']))
  for split, size in (('train', len(synsets) * TRAIN_PER_CLASS),
                      ('validation', NUM_VAL)):
    records = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert len(records) == size
    for r in records:
      name = r['file_name'].decode()
      synset = (fake_imagenet['val_synsets'][name] if split == 'validation'
                else name.split('_')[0])
      assert r['label'] == class_ids[synset], name
      colour = _nearest_colour(r['image'][None].astype(np.float64))[0]
      assert synsets[colour] == synset, name


# ------------------------------------------------- the smoke run, as a user


def _cli(module: str, *args: str, env: dict) -> subprocess.CompletedProcess:
  return subprocesses.run([sys.executable, '-m', module, *args], cwd=REPO,
                        capture_output=True, text=True, env=dict(os.environ, **env))


@pytest.mark.slow
def test_smoke_run_trains_and_evaluates_on_imagenet(
    fake_imagenet, tmp_path, compilation_cache_env):
  data_dir, synsets = fake_imagenet['data_dir'], fake_imagenet['synsets']
  workdir = tmp_path / 'run'
  result = _cli('nfnets.experiment',
                '--config=experiments/nfnet_f0.py:runlocal,imagenet',
                f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
                *SMOKE_FLAGS, env=compilation_cache_env)
  assert result.returncode == 0, result.stderr[-3000:]
  config = checkpoint.load_config(workdir)
  # The recipe's ImageNet pipeline ran, at CPU size.
  assert config.data.dataset == 'imagenet2012'
  assert config.data.data_dir == str(data_dir)
  assert config.data.image_size == 32
  assert config.data.randaugment_layers == 4
  assert (config.data.mixup_alpha, config.data.cutmix_alpha) == (0.2, 1.0)
  records = [json.loads(l) for l in
             (workdir / 'metrics.jsonl').read_text().splitlines()]
  final = {k: v for r in records for k, v in r.items()}
  assert final['step'] == 2
  # 1000 classes at initialization: the loss is close to log(1000).
  assert abs(final['train/loss'] - np.log(1000)) < 1.0
  assert 0 <= final['eval/top1'] <= final['eval/top5'] <= 1

  # The evaluate command line on the run's checkpoint reads the same images.
  evaluated = _cli('nfnets.evaluate', f'--workdir={workdir}', '--no_progress',
                   env=compilation_cache_env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  line = re.search(r'nfnet_f0 step 2 \((EMA|raw) weights\) on '
                   r'imagenet2012/validation: top-1 ([\d.]+)  top-5 ([\d.]+)'
                   r'  images (\d+)', evaluated.stdout)
  assert line, evaluated.stdout
  assert int(line.group(4)) == NUM_VAL
  assert 0 <= float(line.group(2)) <= float(line.group(3)) <= 1

  # The pipeline the run used pairs each validation image with its label:
  # the label is the class whose colour the pixels show.
  batches = list(data.build_eval(config.data, batch_size=4))
  images = np.concatenate([b['images'][b['mask']] for b in batches])
  labels = np.concatenate([b['labels'][b['mask']] for b in batches])
  mean, std = data.mean_std(config.data)
  colours = _nearest_colour(images * std + mean)
  class_ids = fake_imagenet_lib.class_ids()
  np.testing.assert_array_equal(
      labels, [class_ids[synsets[c]] for c in colours])
  assert sorted(labels) == sorted(class_ids[s] for s in synsets)


@pytest.mark.slow
def test_an_empty_eval_slice_is_a_user_error(fake_imagenet):
  # The smoke config evaluates on validation[:1%], which a 6-image set
  # rounds to nothing; the runner checks this before compiling anything.
  config = configs.nfnet_config('nfnet_f0', 'runlocal,imagenet')
  config.data.data_dir = str(fake_imagenet['data_dir'])
  with pytest.raises(errors.InputError,
                     match=r"'validation\[:1%\]'.*no examples.*has 6.*"
                           r'--config\.data\.eval_split'):
    data.check_available(config.data)
  config.data.eval_split = 'validation'
  data.check_available(config.data)


# ------------------------------------- data that is missing or ignored


def test_check_available_gives_the_prepare_command(tmp_path):
  config = configs.nfnet_config('nfnet_f0', 'runlocal,imagenet')
  config.data.data_dir = str(tmp_path / 'empty')
  train_config.validate_config(config, num_devices=1)
  with pytest.raises(errors.UserError) as error:
    data.check_available(config.data)
  assert isinstance(error.value, FileNotFoundError)
  message = str(error.value)
  assert len(message.splitlines()) <= 3, message
  for needle in ("tfds.builder('imagenet2012'", 'download_and_prepare',
                 'manual_dir', 'ILSVRC2012_img_train.tar',
                 'ILSVRC2012_img_val.tar', f"data_dir='{tmp_path / 'empty'}'"):
    assert needle in message, needle


def _data(dataset: str, **fields) -> ml_collections.ConfigDict:
  config = data.default_config(dataset)
  config.update(fields)
  return config


@pytest.mark.parametrize('dataset, field, value, message', [
    ('digits', 'data_dir', '/data/tfds',
     r"data\.data_dir is only read by tfds data sets \(imagenet2012, "
     r"cifar10, cifar100\); this config uses 'digits'.*leave it unset.*"
     r":runlocal,imagenet"),
    ('digits', 'crop_padding', 8, r"data\.crop_padding.*tfds.*default \(32\)"),
    ('digits', 'shuffle_buffer', 100, r'data\.shuffle_buffer.*tfds'),
    ('digits', 'prefetch', 4, r'data\.prefetch.*tfds'),
    ('imagenet2012', 'max_shift', 2,
     r"data\.max_shift is only read by 'digits'; this config uses "
     r"'imagenet2012'.*default \(0\)"),
])
def test_an_option_the_data_set_ignores_is_an_error(dataset, field, value,
                                                    message):
  config = _data(dataset, **{field: value})
  with pytest.raises(ValueError, match=message):
    data.validate(config)
  # The runner's check says the same, as a config error.
  run_config = configs.digits_config()
  run_config.data = config
  with pytest.raises(train.ConfigError, match=message):
    train_config.validate_config(run_config, num_devices=1)


def test_options_the_data_set_reads_are_accepted():
  data.validate(_data('digits', max_shift=0))
  data.validate(_data('digits', max_shift=4))
  data.validate(_data('imagenet2012', data_dir='/data/tfds', crop_padding=8,
                      shuffle_buffer=100, prefetch=4))
  # A recipe switched to digits carries the tfds fields' defaults, which
  # are no one's setting.
  config = configs.nfnet_config('nfnet_f0')
  config.data.dataset = 'digits'
  data.validate(config.data)
  # Configs saved before the check existed still load and validate.
  data.validate(checkpoint.load_config(
      REPO / 'tests' / 'fixtures' / 'legacy_run').data)


def test_digits_switched_to_imagenet_names_the_digits_option():
  config = configs.digits_config()
  config.data.dataset = 'imagenet2012'
  with pytest.raises(ValueError, match=r'data\.max_shift=2: use its default'):
    data.validate(config.data)
  config.data.max_shift = 0
  data.validate(config.data)


def test_digits_run_with_a_data_dir_fails_in_one_line(tmp_path):
  workdir = tmp_path / 'run'
  result = _cli('nfnets.experiment', f'--workdir={workdir}',
                f'--config.data.data_dir={tmp_path}', env={})
  assert result.returncode != 0
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) <= 3, result.stderr
  assert 'data.data_dir is only read by tfds data sets' in result.stderr
  assert 'runlocal,imagenet' in result.stderr
  assert not workdir.exists()
