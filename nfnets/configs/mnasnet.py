r"""MnasNet-A1, -B1 and B1's width variants on ImageNet with the paper's recipe.

  python -m nfnets.experiment --config=experiments/mnasnet_b1.py \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=experiments/mnasnet_b1.py:runlocal \
      --workdir=/tmp/mnasnet_smoke    # 1/8 width, digits data, 20 steps, CPU
  python -m nfnets.experiment \
      --config=experiments/mnasnet_b1.py:runlocal,imagenet \
      --workdir=/tmp/mnasnet_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one block per stage
  python -m nfnets.experiment --config=nfnets/configs/mnasnet.py:b1,digits \
      --workdir=runs/mnasnet_digits   # 4 stages at 1/4 width on digits

The variant is the config string's first word (`a1`, `b1`, `050`, `075`,
`130` for B1 at widths 0.5, 0.75, 1.3, or `nf_b1` for NF-MnasNet-B1; default
b1), then the flags `runlocal` (digits smoke run), `runlocal,imagenet`
(ImageNet smoke run) or `digits`. All run at 224 px with dropout
0.2; A1 has 3.89M parameters and B1 4.38M.

Recipe ([MnasNet] sec. 5.1): batch 4096 for 350 epochs, TensorFlow's RMSProp
(decay 0.9, momentum 0.9, eps 1e-3), LR 0.016 x B / 256 (0.256 at 4096)
rising over 5 epochs, then x 0.97 every 2.4 epochs, weight decay 1e-5,
BatchNorm momentum 0.99 and eps 1e-3, Inception crops and flips only,
bfloat16 compute.

Not verified here: the paper states neither label smoothing nor an EMA of
the weights; this config keeps the EfficientNet recipe's (0.1 and 0.9999)
without having checked them against the MnasNet reference's flags. No
ImageNet run of this config has been made; the `digits` form is what has been
trained (see the README).

Expected cost: 109,475 steps of 4096 images (350 epochs of ImageNet) on an
accelerator pod; ImageNet prepared for tensorflow-datasets in TFDS_DIR.
"""
from typing import Callable, Optional

import ml_collections

from nfnets.configs import common

ConfigFn = Callable[[Optional[str]], ml_collections.ConfigDict]
# Config variant -> registered model.
_MODELS = {**{v: f'mnasnet_{v}' for v in ('a1', 'b1', '050', '075', '130')},
           'nf_b1': 'nf_mnasnet_b1'}


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe of the variant named first in `arg` ('b1' by default)."""
  variant, flags = common.split_variant(
      arg, list(_MODELS), 'b1', 'MnasNet',
      flags=(*common.RUNLOCAL_FLAGS, 'digits'))
  if 'digits' in flags:
    return common.rmsprop_digits_config(_MODELS[variant])
  return common.rmsprop_config(_MODELS[variant], ','.join(flags),
                               stochdepth_rate=0.0)


def variant(name: str) -> ConfigFn:
  """`get_config` with the variant fixed, e.g. `variant('a1')`."""
  return lambda arg=None: get_config(','.join(filter(None, [name, arg])))
