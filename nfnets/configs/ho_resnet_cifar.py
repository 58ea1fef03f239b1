r"""High-order CIFAR ResNets ([HO-ResNet] Luo et al. 2021) on CIFAR-10/100.

  python -m nfnets.experiment --config=ho_resnet_cifar:scheme=rk4 \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment \
      --config=experiments/ho_resnet_cifar.py:scheme=rk8,dataset=cifar100 \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=ho_resnet_cifar:scheme=rk4,runlocal \
      --workdir=/tmp/ho_smoke  # 1/8 width, digits, 20 steps: 25 s on CPU
  python -m nfnets.experiment --config=ho_resnet_cifar:scheme=midpoint,digits \
      --workdir=runs/ho_digits  # full width on digits, 450 steps: 2-3 min

The config string is comma-separated `key=value` settings and flags:
  scheme=NAME   euler, midpoint, rk4 (default), rk8 or rk8_authors
                (`nfnets.layers.high_order.TABLEAUX`);
  layers=L      6 m + 2 layers, m sub-blocks per stage (26 or 86; default
                26, or 86 for the 14-stage rk8 schemes); each stage holds
                m / (the scheme's stages) blocks, so equal L means equal
                parameters whatever the scheme;
  dataset=NAME  cifar10 (default) or cifar100;
  runlocal      a CPU smoke test of the recipe on the bundled digits;
  digits        the full-width network and this optimizer on the bundled
                digits (450 steps of 64; no data to prepare).

| layers | schemes (blocks per stage) | params (CIFAR-10) | MACs at 32 px |
|---|---|---|---|
| 26 | euler (4), midpoint (2), rk4 (1) | 366,842 | 13.7M |
| 86 | euler (14), midpoint (7), rk8, rk8_authors (1) | 1,339,002 | 49.1M |

The network is the released code's (`nfnets.models.ho_resnet`), including
its stride-2 stem (a 4x4 map before pooling);
`--config.model.kwargs.stem_stride=1` gives He et al.'s 32 px stages
(8x8 before pooling), the same parameters and 4x the multiply-adds.

Recipe: batch 128, SGD with momentum 0.9 (not Nesterov), learning rate 0.1
at batch 128 decayed by a cosine to 0 over 200 epochs without warmup,
weight decay 5e-4 on every weight and normalization parameter (biases
exempt), no label smoothing, no EMA of the weights, no AGC, float32; the
standard CIFAR augmentation (4 px zero-padded random crops and horizontal
flips, `nfnets.data.cifar`).

Verified: the network, its initialization and the parameter counts, against
the released HO-ResNet.py. Not verified: every training setting above. The
released repository holds no training script (only the models, a FLOPs
counter and a copy of the `torch_backend.py` helpers of the cifar10-fast
code, i.e. SGD with momentum and weight decay and half-precision batches),
and the paper's text could not be consulted here; the recipe is the common
CIFAR ResNet one. No CIFAR run of this config has been made.

Expected cost: 200 epochs of 50,000 images (78,125 steps of 128);
ho_resnet26 is 13.7M multiply-adds per 32 px image forward (ho_resnet86
49.1M; not timed on an accelerator here); CIFAR prepared once for
tensorflow-datasets in
TFDS_DIR (a run without it stops before writing anything and prints the
command, which downloads ~160 MB).
"""
from __future__ import annotations

import difflib
from typing import Optional

import ml_collections

from nfnets import data
from nfnets import errors
from nfnets.configs import common
from nfnets.layers import high_order
from nfnets.train import config as config_lib

_DATASETS = ('cifar10', 'cifar100')
_FLAGS = ('runlocal', 'digits')
_KEYS = ('scheme', 'layers', 'dataset')
_DEFAULTS = {'scheme': 'rk4', 'dataset': 'cifar10'}
_STAGES = 3
# Layers of the registered pairs (6 m + 2): m = 4 and m = 14 sub-blocks.
_REGISTERED_LAYERS = (26, 86)
_BATCH = 128
_EPOCHS = 200.0
_EVAL_EPOCHS = 10
# `digits`: the length and batch of `common.digits_config`.
_DIGITS_BATCH = 64
_DIGITS_STEPS = 450


class ConfigArgError(errors.UserError, ValueError):
  """A config string this recipe does not understand."""


def _nearest(word: str, known) -> str:
  close = difflib.get_close_matches(word, list(known), n=1)
  return f' Did you mean {close[0]!r}?' if close else ''


def parse(arg: Optional[str]) -> tuple[dict[str, str], set[str]]:
  """({key: value}, flags) of a config string such as 'scheme=rk4,runlocal'.

  Raises:
    ConfigArgError: an unknown key, flag, scheme or data set (naming the
      nearest), a malformed layers count, or 'runlocal' with 'digits'.
  """
  settings, flags = dict(_DEFAULTS), set()
  for word in (w.strip() for w in (arg or '').split(',')):
    if not word:
      continue
    key, eq, value = word.partition('=')
    if not eq:
      if word not in _FLAGS:
        raise ConfigArgError(
            f'Unknown config flag {word!r}; flags: {", ".join(_FLAGS)}, '
            f'settings: {", ".join(k + "=" for k in _KEYS)}.'
            f'{_nearest(word, _FLAGS + _KEYS)}')
      flags.add(word)
    elif key not in _KEYS:
      raise ConfigArgError(f'Unknown config setting {key!r}; settings: '
                           f'{", ".join(_KEYS)}.{_nearest(key, _KEYS)}')
    else:
      settings[key] = value.strip()
  high_order.get_tableau(settings['scheme'])  # Names the nearest scheme.
  if settings['dataset'] not in _DATASETS:
    raise ConfigArgError(
        f'Unknown dataset {settings["dataset"]!r}; use one of '
        f'{", ".join(_DATASETS)}.{_nearest(settings["dataset"], _DATASETS)}')
  if flags == set(_FLAGS):
    raise ConfigArgError("'runlocal' and 'digits' are two different runs; "
                         'pass one of them.')
  return settings, flags


def _depth(scheme: str, layers: Optional[str]) -> tuple[int, int]:
  """(layers, blocks per stage) of `scheme` at `layers` = 6 m + 2."""
  stages = high_order.get_tableau(scheme).num_stages
  if layers is None:
    # The first registered size whose m the scheme's stages divide.
    total = next(n for n in _REGISTERED_LAYERS
                 if (n - 2) // (2 * _STAGES) % stages == 0)
  else:
    try:
      total = int(layers)
    except ValueError:
      total = -1
  m, rest = divmod(total - 2, 2 * _STAGES)
  if total < 8 or rest or m % stages:
    raise ConfigArgError(
        f'layers={layers} does not fit scheme {scheme!r}: layers must be '
        f'6 m + 2 with m, the sub-blocks per stage, a multiple of its '
        f'{stages} stages (e.g. layers={6 * stages + 2}).')
  return total, m // stages


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe for the scheme, size and data set named in `arg`."""
  settings, flags = parse(arg)
  scheme = settings['scheme']
  layers, blocks = _depth(scheme, settings.get('layers'))
  config = config_lib.base_config()
  # The registered variant's name when there is one (the table's pairs);
  # the kwargs set the scheme and depth either way.
  name = f'ho_resnet{layers}_{scheme}'
  config.model.name = name if layers in _REGISTERED_LAYERS else (
      'ho_resnet26_euler')
  config.model.kwargs = ml_collections.ConfigDict(dict(
      stacking=scheme, depth=(blocks,) * _STAGES))
  config.data = data.default_config(settings['dataset'])
  tc = config.training
  tc.batch_size = _BATCH
  tc.num_epochs = _EPOCHS
  tc.label_smoothing = 0.0
  tc.ema_decay = 0.0
  tc.compute_dtype = 'float32'
  # From the table, not the prepared data: building a config reads nothing.
  steps_per_epoch = data.get_spec(settings['dataset']).splits['train'] // (
      _BATCH)
  config.eval.batch_size = 1000
  config.eval.every_steps = _EVAL_EPOCHS * steps_per_epoch
  config.checkpoint.every_steps = _EVAL_EPOCHS * steps_per_epoch
  opt = config.optimizer
  opt.name = 'sgd'
  opt.base_lr = 0.1
  opt.lr_batch_reference = _BATCH
  opt.momentum = 0.9
  opt.nesterov = False
  opt.weight_decay = 5e-4
  # PyTorch's SGD decays every parameter it is given, BatchNorm's too.
  opt.weight_decay_norm_params = True
  opt.clipping = 0.0  # No AGC: a BatchNorm network.
  opt.schedule = 'cosine'
  opt.end_lr = 0.0
  opt.warmup_epochs = 0.0
  if 'runlocal' in flags:
    common.runlocal(config)
    config.optimizer.warmup_steps = 0
  elif 'digits' in flags:
    config.data = data.default_config('digits')
    tc.batch_size = _DIGITS_BATCH
    tc.num_epochs = None
    tc.num_steps = _DIGITS_STEPS
    tc.log_every = 50
    config.eval.batch_size = 120
    config.eval.every_steps = _DIGITS_STEPS // 3
    config.checkpoint.every_steps = _DIGITS_STEPS // 3
  return config
