r"""EfficientNet-B0 ... B7 on ImageNet with the paper's recipe, one file for all.

  python -m nfnets.experiment --config=experiments/efficientnet_b0.py \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=experiments/efficientnet_b0.py:runlocal \
      --workdir=/tmp/effnet_smoke     # 1/8 width, digits data, 20 steps, CPU
  python -m nfnets.experiment \
      --config=experiments/efficientnet_b0.py:runlocal,imagenet \
      --workdir=/tmp/effnet_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one block per stage
  python -m nfnets.experiment --config=nfnets/configs/efficientnet.py:b0,digits \
      --workdir=runs/effnet_digits    # 4 stages at 1/4 width on digits

The variant is the config string's first word (`b0` ... `b7`, default b0;
`nf_b0` is NF-EfficientNet-B0), then the flags `runlocal` (digits smoke
run), `runlocal,imagenet` (ImageNet smoke run) or `digits`;
`experiments/efficientnet_bN.py` fix the variant. Per variant (the TF
reference's compound scaling, [EfficientNet] sec. 3.3):

| variant | params | width | depth | px (train = test) | dropout |
|---|---|---|---|---|---|
| B0 | 5.29M | 1.0 | 1.0 | 224 | 0.2 |
| B1 | 7.79M | 1.0 | 1.1 | 240 | 0.2 |
| B2 | 9.11M | 1.1 | 1.2 | 260 | 0.3 |
| B3 | 12.23M | 1.2 | 1.4 | 300 | 0.3 |
| B4 | 19.34M | 1.4 | 1.8 | 380 | 0.4 |
| B5 | 30.39M | 1.6 | 2.2 | 456 | 0.4 |
| B6 | 43.04M | 1.8 | 2.6 | 528 | 0.5 |
| B7 | 66.35M | 2.0 | 3.1 | 600 | 0.5 |

Recipe ([EfficientNet] sec. 5.2 and the TF reference): batch 4096 for 350
epochs, TensorFlow's RMSProp (decay 0.9, momentum 0.9, eps 1e-3), LR 0.016 x
B / 256 (0.256 at 4096) with 5 warmup epochs, then x 0.97 every 2.4 epochs,
weight decay 1e-5, label smoothing 0.1, EMA 0.9999, drop-connect 0.2,
BatchNorm momentum 0.99 and eps 1e-3, RandAugment with 2 layers at magnitude
10, bfloat16 compute.

Not verified here: the paper trained B0-B7 with AutoAugment, and later TF
reference checkpoints with RandAugment; 2 layers at magnitude 10 are the TF
reference's flag defaults, not a per-variant table, and this codebase's
RandAugment is its own. No ImageNet run of this config has been made; the
`digits` form is what has been trained (see the README).

Expected cost: 109,475 steps of 4096 images (350 epochs of ImageNet's
1,281,167 training images) on an accelerator pod; ImageNet prepared for
tensorflow-datasets in TFDS_DIR.
"""
from typing import Callable, Optional

import ml_collections

from nfnets.configs import common

ConfigFn = Callable[[Optional[str]], ml_collections.ConfigDict]
# Config variant -> registered model.
_MODELS = {**{f'b{i}': f'efficientnet_b{i}' for i in range(8)},
           'nf_b0': 'nf_efficientnet_b0'}
# The reference's drop_connect_rate, listed so that it can be overridden.
_STOCHDEPTH_RATE = 0.2
# RandAugment layers of the TF reference's flags (magnitude 10 by default).
_RANDAUGMENT_LAYERS = 2


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe of the variant named first in `arg` ('b0' by default)."""
  variant, flags = common.split_variant(
      arg, list(_MODELS), 'b0', 'EfficientNet',
      flags=(*common.RUNLOCAL_FLAGS, 'digits'))
  if 'digits' in flags:
    return common.rmsprop_digits_config(_MODELS[variant])
  return common.rmsprop_config(_MODELS[variant], ','.join(flags),
                               randaugment_layers=_RANDAUGMENT_LAYERS,
                               stochdepth_rate=_STOCHDEPTH_RATE)


def variant(name: str) -> ConfigFn:
  """`get_config` with the variant fixed, e.g. `variant('b3')`."""
  return lambda arg=None: get_config(','.join(filter(None, [name, arg])))
