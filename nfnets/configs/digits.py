r"""A small NFNet on scikit-learn's bundled 8x8 digits: the default config.

NFNet-F0 at 1/8 width (about 1.1M parameters) on the digits upsampled to
32x32, 1437 training and 360 held-out test images, 10 classes; no download.

  python -m nfnets.experiment --workdir=runs/digits           # or `make demo`
  python -m nfnets.experiment --config=experiments/digits.py:runlocal \
      --workdir=/tmp/digits_smoke                             # 10 steps

It has no `runlocal,imagenet` form, and refuses ImageNet-only data options
such as `--config.data.data_dir`; the ImageNet recipes' `runlocal,imagenet`
(e.g. `experiments/nfnet_f0.py:runlocal,imagenet`) is the ImageNet smoke run.

Expected cost: a few minutes on 2 CPU cores, to >= 97% test top-1.
"""
from typing import Optional

import ml_collections

from nfnets.configs import common


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return common.digits_config(arg)
