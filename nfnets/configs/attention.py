r"""Residual Attention Networks (Attention-56, -92) on ImageNet, [RAN] recipe.

  python -m nfnets.experiment --config=attention:56 \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=attention:92,runlocal \
      --workdir=/tmp/attention_smoke  # 1/8 width, digits data, 20 steps, CPU
  python -m nfnets.experiment --config=attention:56,runlocal,imagenet \
      --workdir=/tmp/attention_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one module per stage
  python -m nfnets.experiment --config=attention:56,digits \
      --workdir=runs/attention_digits  # 3 stages at 1/16 width on digits

(`--config=nfnets/configs/attention.py:56` names the same file by path.)

The variant is the config string's first word (`56` or `92`, default 56),
then the flags `runlocal` (digits smoke run), `runlocal,imagenet` (ImageNet
smoke run) or `digits`.

| variant | params | MACs at 224 px | train / test px | published top-1 error |
|---|---|---|---|---|
| 56 | 31.81M | 6.27G | 224 / 224 | 21.76% |
| 92 | 52.47M | 10.53G | 224 / 320 | 19.5% (at 320 px) |

Recipe ([RAN] sec. 4.2): batch 256, SGD with momentum 0.9, LR 0.1 divided
by 10 every 200k iterations, 530k iterations (106 epochs), weight decay
1e-4, no warmup, no label smoothing, scale and aspect-ratio crops and
flips (no RandAugment, MixUp or CutMix), BatchNorm statistics as moving
averages.

Not verified here: Nesterov momentum (off; the paper names it for CIFAR
only) and the weight decay, which could not be checked against the paper's
ImageNet text; if the paper divides the LR a third time at 500k, this
schedule differs there (it stays at 1e-3 from 400k to 530k: the shared
optimizer offers cosine or staircase-exponential schedules, and the
exponential one, x0.1 every 200k steps, gives the 200k and 400k drops).
The EMA of the weights is the shared recipe's extra evaluation, not the
paper's. No ImageNet run of this config has been made; the `digits` form
is what has been trained (docs/attention_masks.py).

Expected cost: 530,000 steps of 256 images (136M images seen; Attention-56
is 6.27 GMACs per image forward) on an accelerator pod; ImageNet prepared
for tensorflow-datasets in TFDS_DIR.
"""
from typing import Optional

import ml_collections

from nfnets import models
from nfnets.configs import common

# Config variant -> registered model.
_MODELS = {'56': 'attention56', '92': 'attention92'}
_BATCH_SIZE = 256
_NUM_STEPS = 530_000
# LR x 0.1 every 200k steps: the drops at 200k and 400k.
_DECAY_STEPS = 200_000
_WEIGHT_DECAY = 1e-4
# `digits`: three attention stages at 1/16 width (16, 32, 64 channels).
_DIGITS_WIDTH = 1 / 16
_DIGITS_STAGES = 3


def _step_sgd(opt: ml_collections.ConfigDict, decay_steps: int) -> None:
  """[RAN]'s optimizer, in place: momentum SGD, LR / 10 every decay_steps."""
  opt.name = 'sgd'
  opt.momentum = 0.9
  opt.nesterov = False
  opt.base_lr = 0.1  # At the reference batch of 256.
  opt.weight_decay = _WEIGHT_DECAY
  opt.clipping = 0.0  # No AGC: a BatchNorm network.
  opt.schedule = 'exponential'
  opt.decay_rate = 0.1
  opt.decay_steps = decay_steps


def digits_config(variant: str = '56') -> ml_collections.ConfigDict:
  """The recipe at digits scale: the variant's first three stages at 1/16 width.

  `common.digits_config` (batch 64, 450 steps, 32 px, EMA 0.999) with the
  variant's modules per stage (1, 1, 1 or 1, 2, 3) and [RAN]'s optimizer
  scaled to the run: peak LR 0.1 x 64 / 256, divided by 10 at the same
  fractions of training as 200k and 400k of 530k, no warmup.
  """
  config = common.digits_config()
  model = _MODELS[variant]
  spec = models.get_spec(model)
  config.model.name = model
  config.model.kwargs = ml_collections.ConfigDict(dict(
      depth=spec.depth[:_DIGITS_STAGES], widths=spec.widths[:_DIGITS_STAGES],
      width=_DIGITS_WIDTH, drop_rate=0.0))
  steps = config.training.num_steps
  _step_sgd(config.optimizer, round(steps * _DECAY_STEPS / _NUM_STEPS))
  config.optimizer.warmup_steps = 0
  config.training.label_smoothing = 0.0
  return config


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe of the variant named first in `arg` ('56' by default)."""
  variant, flags = common.split_variant(
      arg, list(_MODELS), '56', 'Residual Attention',
      flags=(*common.RUNLOCAL_FLAGS, 'digits'))
  if 'digits' in flags:
    return digits_config(variant)
  config = common.imagenet_config(_MODELS[variant], ','.join(sorted(flags)),
                                  randaugment_layers=0, mixup_alpha=0.0,
                                  cutmix_alpha=0.0)
  _step_sgd(config.optimizer, _DECAY_STEPS)
  config.training.label_smoothing = 0.0
  if 'runlocal' not in flags:
    # `runlocal` has shrunk batch, length and warmup; the full recipe's:
    config.training.batch_size = _BATCH_SIZE
    config.training.num_epochs = None
    config.training.num_steps = _NUM_STEPS
    config.optimizer.warmup_epochs = 0.0
  return config
