r"""GroupNorm ResNets on ImageNet, the recipe of [GN] Wu & He 2018, sec. 5.1.

  python -m nfnets.experiment --config=resnet_gn --workdir=DIR \
      --config.data.data_dir=TFDS_DIR           # GN-ResNet-50
  python -m nfnets.experiment --config=resnet_gn:101 --workdir=DIR \
      --config.data.data_dir=TFDS_DIR           # GN-ResNet-101
  python -m nfnets.experiment --config=resnet_gn:runlocal \
      --workdir=/tmp/resnet_gn_smoke            # 1/8 width, digits, 20 steps

The variant is the config string's first word (50, 101, 152 or 200; default
50), then the flags `runlocal` or `runlocal,imagenet`.

Model ('resnet{depth}_gn', `nfnets.models.baselines`): post-activation
bottleneck ResNet, GN with 32 groups (eps 1e-5) after every conv including
the projection shortcut, the stride on the 3x3 conv, gamma = 0 in the last
GN of each block and 1 elsewhere, the classifier from N(0, 0.01^2);
25,557,032 parameters at depth 50.

Recipe ([GN] sec. 5.1): 8 workers of 32 images (batch 256), momentum SGD
0.9 (not Nesterov), LR 0.1 x B / 256 divided by 10 at epochs 30, 60 and 90
of 100, weight decay 1e-4 on all weight layers including gamma and beta, no
AGC, no label smoothing, scale and aspect-ratio crops and flips only.

Not the paper's: the EMA of the weights is the shared recipe's extra
evaluation. No ImageNet run of this config has been made here.

Expected cost: 500,400 steps of 256 images (128M images seen; ResNet-50 is
4.1 GMACs per image forward) on an accelerator pod; ImageNet prepared for
tensorflow-datasets in TFDS_DIR.
"""
from typing import Optional

import ml_collections

from nfnets.configs import common

_DEPTHS = ('50', '101', '152', '200')
_BATCH_SIZE = 256  # 32 images on each of 8 GPUs.
_NUM_EPOCHS = 100.0
# LR x 0.1 every 30 epochs: the drops at 30, 60 and 90.
_DECAY_EPOCHS = 30.0
_WEIGHT_DECAY = 1e-4


def gn_sgd(opt: ml_collections.ConfigDict) -> None:
  """[GN]'s optimizer, in place: momentum SGD, LR / 10 every 30 epochs."""
  opt.name = 'sgd'
  opt.momentum = 0.9
  opt.nesterov = False
  opt.base_lr = 0.1  # At the reference batch of 256.
  opt.weight_decay = _WEIGHT_DECAY
  opt.weight_decay_norm_params = True
  opt.clipping = 0.0  # No AGC: a normalized network.
  opt.schedule = 'exponential'
  opt.decay_rate = 0.1
  opt.decay_epochs = _DECAY_EPOCHS


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe of the depth named first in `arg` ('50' by default)."""
  depth, flags = common.split_variant(arg, _DEPTHS, '50', 'GN-ResNet')
  config = common.imagenet_config(
      f'resnet{depth}_gn', ','.join(sorted(flags)), num_epochs=_NUM_EPOCHS,
      randaugment_layers=0, mixup_alpha=0.0, cutmix_alpha=0.0)
  gn_sgd(config.optimizer)
  config.training.label_smoothing = 0.0
  if 'runlocal' not in flags:
    # `runlocal` has shrunk batch, length and warmup; the full recipe's:
    config.training.batch_size = _BATCH_SIZE
    config.optimizer.warmup_epochs = 0.0
  return config
