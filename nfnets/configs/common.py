"""The recipes every config file is built from.

`imagenet_config(model)` is the paper's ImageNet recipe for a registered
model, with the per-variant values read from the model registry's spec;
`nfnet_config(model)` adds the NFNets' stochastic depth; `rmsprop_config(model)`
is the RMSProp recipe of MnasNet and EfficientNet; `digits_config()` is the
CPU-sized demo. The config files beside this one (and the
`experiments/*.py` files users type) are a few lines over these; every field
of the schema is `nfnets.train.config.base_config()`.

Config strings after the file name (`--config=experiments/nfnet_f0.py:ARG`)
are comma-separated flags. `runlocal` shrinks an ImageNet recipe to a smoke
test on the bundled digits that runs on a laptop CPU in about a minute;
`runlocal,imagenet` shrinks it just as far but keeps the tfds ImageNet
pipeline (decode, random crop, RandAugment, MixUp/CutMix, eval), for a
smoke run on ImageNet prepared in `--config.data.data_dir`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import ml_collections

from nfnets import data
from nfnets import models
from nfnets.train import config as config_lib

# [NFNet] sec. 6 / appendix: RandAugment with 4 layers, CutMix (alpha 1.0) and
# MixUp (alpha 0.2) each applied to half of the batch.
_RANDAUGMENT_LAYERS = 4
# For models whose paper gives no magnitude (NF-ResNets, NF-RegNets).
_DEFAULT_RANDAUGMENT_MAGNITUDE = 10
_MIXUP_ALPHA = 0.2
_CUTMIX_ALPHA = 1.0
# [NFNet] appendix: stochastic depth 0.25 for every F variant.
_NFNET_STOCHDEPTH = 0.25

# Flags of the ImageNet recipes' config strings.
RUNLOCAL_FLAGS = ('runlocal', 'imagenet')
# `runlocal,imagenet`: train px per side, and the slice of the 50,000
# validation images evaluated (decoding full-size JPEGs dominates a CPU
# eval; 1% is 500 images).
_SMOKE_IMAGE_SIZE = 32
_SMOKE_EVAL_SPLIT = 'validation[:1%]'
# Records held for shuffling: the default 10k would read ~1 GB of JPEGs
# before a smoke run's first step.
_SMOKE_SHUFFLE_BUFFER = 256


def parse_arg(arg: Optional[str],
              known: Sequence[str] = RUNLOCAL_FLAGS) -> set[str]:
  """The flags of a config string such as 'runlocal' or 'runlocal,imagenet'.

  The flags of the ImageNet recipes:
    runlocal: a CPU smoke test of the recipe on the bundled digits (tiny
      model, 32 px, 20 steps; no data to prepare).
    runlocal,imagenet: the same tiny model and length, on the tfds ImageNet
      pipeline at 32 px (see `runlocal`); needs ImageNet prepared in
      `--config.data.data_dir`.
  'digits' (the MBConv recipes' digits-scale config) stands alone.

  Args:
    arg: the text after the config file's ':' (None or '' for none).
    known: the flags the config accepts.

  Returns:
    The set of flags.

  Raises:
    ValueError: an unknown flag, 'imagenet' without 'runlocal', or
      'digits' with another flag.
  """
  flags = {a.strip() for a in (arg or '').split(',') if a.strip()}
  unknown = sorted(flags - set(known))
  if unknown == ['imagenet']:
    raise ValueError("This config has no 'imagenet' form; for an ImageNet "
                     "smoke run use an ImageNet recipe's 'runlocal,imagenet', "
                     'e.g. --config=experiments/nfnet_f0.py:runlocal,imagenet.')
  if unknown:
    raise ValueError(f'Unknown config argument(s) {unknown}; known: '
                     f'{", ".join(known)}.')
  if 'digits' in flags and len(flags) > 1:
    raise ValueError(f"'digits' is a config of its own and takes no other "
                     f'flags, got {sorted(flags)}.')
  if 'imagenet' in flags and 'runlocal' not in flags:
    raise ValueError("'imagenet' selects the data of a 'runlocal' smoke run "
                     "(the full recipe already trains on ImageNet); use "
                     "'runlocal,imagenet'.")
  return flags


def split_variant(arg: Optional[str], variants: Sequence[str], default: str,
                  family: str, flags: Sequence[str] = RUNLOCAL_FLAGS
                  ) -> tuple[str, set[str]]:
  """(variant, flags) of a config string 'VARIANT,FLAG,...'.

  The variant word is optional (`default` when the string starts with a
  flag or is empty), e.g. 'b3,runlocal', 'b3,runlocal,imagenet', 'runlocal'
  or 'b3'. The flags are checked by `parse_arg`: 'runlocal' is the digits
  smoke run, 'runlocal,imagenet' the ImageNet one.

  Raises:
    ValueError: an unknown variant or flag (the message lists the known
      ones), or flags `parse_arg` refuses together.
  """
  words = [w.strip() for w in (arg or '').split(',') if w.strip()]
  variant = default
  if words and words[0] not in flags:
    variant = words.pop(0).lower()
  if variant not in variants:
    raise ValueError(f'Unknown {family} variant {variant!r}; known: '
                     f'{", ".join(variants)}.')
  return variant, parse_arg(','.join(words), flags)


def imagenet_config(model: str, arg: Optional[str] = None, *,
                    num_epochs: float = 360.0,
                    randaugment_layers: int = _RANDAUGMENT_LAYERS,
                    mixup_alpha: float = _MIXUP_ALPHA,
                    cutmix_alpha: float = _CUTMIX_ALPHA,
                    **model_kwargs) -> ml_collections.ConfigDict:
  """The [NFNet] ImageNet recipe for a registered model.

  Batch 4096 for 360 epochs, LR 0.1 x B / 256 with a 5-epoch linear warmup
  then cosine decay to 0, Nesterov momentum 0.9, weight decay 2e-5, AGC at
  0.01 (not on the classifier), label smoothing 0.1, EMA 0.99999,
  RandAugment (4 layers, the variant's magnitude), CutMix and MixUp on halves
  of each batch, bfloat16 compute; train/test resolution, dropout and
  RandAugment magnitude from the model registry.

  Args:
    model: a registered model name (`nfnets.models.list_models()`).
    arg: config string (`parse_arg`): 'runlocal' gives a CPU-sized smoke
      test on digits, 'runlocal,imagenet' one on ImageNet.
    num_epochs: training length.
    randaugment_layers: RandAugment ops per image (0: crop and flip only).
    mixup_alpha: MixUp Beta parameter (0: off).
    cutmix_alpha: CutMix Beta parameter (0: off).
    **model_kwargs: constructor overrides beyond the registry's dropout.

  Returns:
    The config.
  """
  flags = parse_arg(arg)
  spec = models.get_spec(model)
  config = config_lib.base_config()
  config.model.name = model
  kwargs = dict(drop_rate=spec.drop_rate)
  if 'remat' in models.accepted_overrides(model):
    # Listed so that `--config.model.kwargs.remat=True` can switch it on.
    kwargs['remat'] = False
  config.model.kwargs = ml_collections.ConfigDict(dict(kwargs, **model_kwargs))

  config.data.image_size = spec.train_imsize
  config.data.eval_image_size = spec.test_imsize
  config.data.randaugment_layers = randaugment_layers
  config.data.randaugment_magnitude = float(
      spec.randaugment_magnitude or _DEFAULT_RANDAUGMENT_MAGNITUDE)
  config.data.mixup_alpha = mixup_alpha
  config.data.cutmix_alpha = cutmix_alpha

  config.training.num_epochs = num_epochs
  config.optimizer.warmup_epochs = 5.0

  if 'runlocal' in flags:
    runlocal(config, imagenet='imagenet' in flags)
  return config


def nfnet_config(model: str, arg: Optional[str] = None
                 ) -> ml_collections.ConfigDict:
  """`imagenet_config` for an NFNet F-variant: adds stochastic depth 0.25."""
  return imagenet_config(model, arg, stochdepth_rate=_NFNET_STOCHDEPTH)


def rmsprop_config(model: str, arg: Optional[str] = None, *,
                   randaugment_layers: int = 0,
                   **model_kwargs) -> ml_collections.ConfigDict:
  """The [MnasNet] / [EfficientNet] ImageNet recipe for a registered model.

  Batch 4096 for 350 epochs, TensorFlow's RMSProp (decay 0.9, momentum 0.9,
  eps 1e-3), LR 0.016 x B / 256 (0.256 at 4096) with a 5-epoch linear warmup,
  then x 0.97 every 2.4 epochs, weight decay 1e-5 (not on BatchNorm, gains or
  biases), no AGC, label smoothing 0.1, EMA 0.9999, no MixUp or CutMix,
  bfloat16 compute; resolution and dropout from the model registry.

  Args:
    model: a registered model name.
    arg: config string (`parse_arg`): 'runlocal' gives a CPU-sized smoke
      test on digits, 'runlocal,imagenet' one on ImageNet.
    randaugment_layers: RandAugment ops per image (0: crop and flip only),
      at the spec's magnitude or 10.
    **model_kwargs: constructor overrides beyond the registry's dropout.

  Returns:
    The config.
  """
  config = imagenet_config(model, None, num_epochs=350.0,
                           randaugment_layers=randaugment_layers,
                           mixup_alpha=0.0, cutmix_alpha=0.0, **model_kwargs)
  opt = config.optimizer
  opt.name = 'rmsprop'
  opt.base_lr = 0.016
  opt.momentum = 0.9
  opt.rmsprop_decay = 0.9
  opt.rmsprop_eps = 1e-3
  opt.weight_decay = 1e-5
  opt.clipping = 0.0
  opt.schedule = 'exponential'
  opt.decay_rate = 0.97
  opt.decay_epochs = 2.4
  config.training.ema_decay = 0.9999
  flags = parse_arg(arg)
  if 'runlocal' in flags:
    runlocal(config, imagenet='imagenet' in flags)
  return config


def rmsprop_digits_config(model: str, **model_kwargs
                          ) -> ml_collections.ConfigDict:
  """`rmsprop_config`'s recipe at digits scale for a 4-stage, 1/4-width model.

  `digits_config` (batch 64, 450 steps, 32 px, EMA 0.999) with the model's
  first four stages at depth (1, 2, 2, 2) and width 0.25, and the RMSProp
  recipe's optimizer: peak LR 0.016 x 64 / 256 after 30 warmup steps, x 0.97
  every 0.3 epochs (about 70 decays, as a long run sees), weight decay 1e-5,
  no AGC.
  """
  config = digits_config()
  config.model.name = model
  kwargs = dict(depth=(1, 2, 2, 2),
                widths=models.get_spec(model).widths[:4], width=0.25,
                drop_rate=0.1, stochdepth_rate=0.0)
  config.model.kwargs = ml_collections.ConfigDict(dict(kwargs, **model_kwargs))
  recipe = rmsprop_config(model).optimizer
  recipe.warmup_steps = 30
  recipe.decay_epochs = 0.3
  config.optimizer = recipe
  return config


def runlocal(config: ml_collections.ConfigDict, *,
             imagenet: bool = False) -> None:
  """Shrinks an ImageNet recipe in place to a smoke test for one CPU.

  Keeps the recipe's machinery (augmentation, mixing, EMA, AGC, schedule) and
  the model family, but trains a 1/8-width model at 32 px for 20 steps of
  16 images, in float32, evaluating at the end.

  Args:
    config: an `imagenet_config` / `rmsprop_config` recipe.
    imagenet: False: train on the bundled digits, so the run needs neither
      ImageNet nor an accelerator (about a minute). True: keep the tfds
      ImageNet pipeline (decode, random crop, RandAugment, MixUp/CutMix as
      the recipe has them) with one block per stage, evaluating on
      `validation[:1%]` at the recipe's train/test resolution ratio; ImageNet
      must be prepared in `config.data.data_dir`. NFNet-F0's took 63 s on 2
      busy CPU cores, 45 s of it starting up and compiling.
  """
  if imagenet:
    _smoke_imagenet(config)
  else:
    dataset = data.default_config('digits')
    for field in ('randaugment_layers', 'randaugment_magnitude',
                  'mixup_alpha', 'cutmix_alpha'):
      dataset[field] = config.data[field]
    config.data = dataset
  config.model.kwargs.width = 0.125
  config.training.batch_size = 16
  config.training.num_epochs = None
  config.training.num_steps = 20
  config.optimizer.warmup_steps = 5
  config.training.compute_dtype = 'float32'
  config.training.log_every = 5
  config.eval.batch_size = 120
  config.eval.every_steps = 0
  config.checkpoint.every_steps = 10


def _smoke_imagenet(config: ml_collections.ConfigDict) -> None:
  """The data and depth of `runlocal(config, imagenet=True)`."""
  spec = models.get_spec(config.model.name)
  # One block per stage: real decoding, RandAugment and a 1000-class head
  # make each step dearer than on digits, and XLA's CPU compile time grows
  # with depth.
  config.model.kwargs.depth = (1,) * len(spec.depth)
  dc = config.data
  eval_size = round(_SMOKE_IMAGE_SIZE * dc.eval_image_size / dc.image_size)
  # Crop the same fraction of the eval image as at the recipe's resolution.
  dc.crop_padding = max(1, round(dc.crop_padding * eval_size
                                 / dc.eval_image_size))
  dc.image_size, dc.eval_image_size = _SMOKE_IMAGE_SIZE, eval_size
  dc.eval_split = _SMOKE_EVAL_SPLIT
  dc.shuffle_buffer = _SMOKE_SHUFFLE_BUFFER


def digits_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """A small NFNet on scikit-learn's bundled digits (the default config).

  NFNet-F0 at 1/8 width (about 1.1M parameters) on 32 px upsampled digits,
  with random translations, trained from scratch with the same optimizer
  (AGC + Nesterov SGD, warmup + cosine), label smoothing and EMA as the
  ImageNet recipe. At batch 64 the clipping threshold is looser than the
  paper's 0.01 at batch 4096 ([NFNet] sec. 4.1: smaller batches tolerate
  larger thresholds). 'runlocal' shortens it to a few steps; there is no
  ImageNet form (use an ImageNet recipe's 'runlocal,imagenet').
  """
  flags = parse_arg(arg, known=('runlocal',))
  config = config_lib.base_config()
  config.model.name = 'nfnet_f0'
  config.model.kwargs = ml_collections.ConfigDict(dict(
      width=0.125, drop_rate=0.1, stochdepth_rate=0.0))
  config.data = data.default_config('digits')
  config.training.batch_size = 64
  config.training.num_steps = 450  # 20 epochs of the 1437 training digits.
  config.training.compute_dtype = 'float32'
  # The average spans ~1000 steps, so it tracks a short run's late weights.
  config.training.ema_decay = 0.999
  config.training.log_every = 50
  config.eval.batch_size = 120
  config.eval.every_steps = 150
  config.checkpoint.every_steps = 150
  # Peak LR = base_lr * 64 / 256 = 0.1, after 50 warmup steps.
  config.optimizer.base_lr = 0.4
  config.optimizer.warmup_steps = 50
  config.optimizer.clipping = 0.1
  if 'runlocal' in flags:
    config.training.num_steps = 10
    config.optimizer.warmup_steps = 2
    config.training.log_every = 5
    config.eval.every_steps = 0
    config.checkpoint.every_steps = 5
  return config
