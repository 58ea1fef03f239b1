r"""ECA-NFNet-L0 ... L3 on ImageNet: the [NFNet] recipe at timm's resolutions.

  python -m nfnets.experiment --config=experiments/eca_nfnet_l0.py \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=experiments/eca_nfnet_l0.py:runlocal \
      --workdir=/tmp/eca_nfnet_smoke  # 1/8 width, digits data, 20 steps, CPU
  python -m nfnets.experiment \
      --config=experiments/eca_nfnet_l0.py:runlocal,imagenet \
      --workdir=/tmp/eca_nfnet_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one block per stage

The variant is the config string's first word (`l0` ... `l3`, default l0),
then the flags `runlocal` (digits smoke run) or `runlocal,imagenet`
(ImageNet smoke run); `experiments/eca_nfnet_lN.py` fix the variant.

From timm (`nfnet.py`'s default_cfgs and the released L0-L2 weights): the
train / test resolutions (L0 224 / 288, L1 256 / 320, L2 320 / 384, L3 352
/ 448) and the evaluation at crop 1.0 (the central square of the shorter
side resized to the test resolution, bicubic: `eval_crop='aspect'` with no
padding). timm's published top-1 at the test resolution: L0 82.59, L1
84.06, L2 84.71.

Not verified here: timm publishes no training command for these weights
(the weight names say 'ra2' / 'ra3', timm's RandAugment recipes); its
optimizer, learning rate, batch, length, dropout, stochastic depth and
augmentation strengths are unknown to this config. Everything else is
therefore `common.nfnet_config`'s [NFNet] recipe, as for NFNet-F: batch
4096 for 360 epochs, LR 0.1 x B / 256 with 5 warmup epochs then cosine
decay, Nesterov 0.9, weight decay 2e-5, AGC 0.01 (classifier unclipped),
label smoothing 0.1, EMA 0.99999, RandAugment (4 layers), CutMix and MixUp
on halves of each batch, stochastic depth 0.25, bfloat16 compute; dropout
and RandAugment magnitude of the F-variant with the same depths (L0 as F0:
0.2 and 5). No ImageNet run of this config has been made.

Expected cost: 112,603 steps of 4096 images (360 epochs of ImageNet's
1,281,167 training images; an L0 forward is 4.29 GMACs per image at 224
px) on an accelerator pod; ImageNet prepared for tensorflow-datasets in
TFDS_DIR.
"""
from typing import Callable, Optional

import ml_collections

from nfnets.configs import common

ConfigFn = Callable[[Optional[str]], ml_collections.ConfigDict]
# Config variant -> registered model.
_MODELS = {f'l{i}': f'eca_nfnet_l{i}' for i in range(4)}


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe of the variant named first in `arg` ('l0' by default)."""
  variant, flags = common.split_variant(arg, list(_MODELS), 'l0',
                                        'ECA-NFNet')
  config = common.nfnet_config(_MODELS[variant], ','.join(sorted(flags)))
  if config.data.dataset == 'imagenet2012':
    # timm's crop_pct 1.0: the whole central square, no border cropped.
    config.data.eval_crop = 'aspect'
    config.data.crop_padding = 0
  return config


def variant(name: str) -> ConfigFn:
  """`get_config` with the variant fixed, e.g. `variant('l1')`."""
  return lambda arg=None: get_config(','.join(filter(None, [name, arg])))
