r"""NFNet-F0 ... F7 on ImageNet with the paper's recipe, one file for all.

  python -m nfnets.experiment --config=experiments/nfnet_f1.py --workdir=DIR \
      --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=experiments/nfnet_f1.py:runlocal \
      --workdir=/tmp/nfnet_f1_smoke   # 1/8 width, digits data, 20 steps, CPU
  python -m nfnets.experiment \
      --config=experiments/nfnet_f1.py:runlocal,imagenet \
      --workdir=/tmp/nfnet_f1_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one block per stage

The variant is the config string's first word, e.g. `nfnet.py:f3` or
`nfnet.py:f3,runlocal` (default f0; `f0_plus` ... `f7_plus` are the wider
"+" models); `experiments/nfnet_fN.py` fix it. `runlocal` is a smoke run on
the bundled digits (about a minute on a laptop CPU); `runlocal,imagenet`
keeps the recipe's ImageNet pipeline (decode, random crop, RandAugment,
MixUp/CutMix) at 32 px (eval at the recipe's train/test ratio: 43 px for F0)
on `validation[:1%]`, for 20 steps of 16 images
(`nfnets.configs.common.runlocal`): about a minute on 2 CPU cores, most of
it starting up and compiling. Per variant ([NFNet] Table 1):

| variant | params | train / test px | RandAugment magnitude | dropout |
|---|---|---|---|---|
| F0 | 71.5M | 192 / 256 | 5 | 0.2 |
| F1 | 132.6M | 224 / 320 | 10 | 0.3 |
| F2 | 193.8M | 256 / 352 | 10 | 0.4 |
| F3 | 254.9M | 320 / 416 | 15 | 0.4 |
| F4 | 316.1M | 384 / 512 | 15 | 0.5 |
| F5 | 377.2M | 416 / 544 | 15 | 0.5 |
| F6 | 438.4M | 448 / 576 | 15 | 0.5 |
| F7 | 499.5M | 480 / 608 | 15 | 0.5 |

Recipe ([NFNet] sec. 6 and appendix): batch 4096 for 360 epochs, LR
0.1 x B / 256 with 5 warmup epochs then cosine decay to 0, Nesterov 0.9,
weight decay 2e-5, AGC 0.01 (classifier unclipped), label smoothing 0.1, EMA
0.99999, RandAugment with 4 layers, CutMix and MixUp on halves of each batch,
stochastic depth 0.25, bfloat16 compute.

Expected cost: 112,603 steps of 4096 images (461M images seen; 360 epochs
of ImageNet's 1,281,167 training images) on an accelerator pod; ImageNet
prepared for tensorflow-datasets in TFDS_DIR.
"""
from typing import Callable, Optional

import ml_collections

from nfnets import models
from nfnets.configs import common

ConfigFn = Callable[[Optional[str]], ml_collections.ConfigDict]


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe of the variant named first in `arg` ('f0' by default)."""
  known = [m[len('nfnet_'):] for m in models.list_models()
           if m.startswith('nfnet_')]
  variant, flags = common.split_variant(arg, known, 'f0', 'NFNet')
  return common.nfnet_config(f'nfnet_{variant}', ','.join(sorted(flags)))


def variant(name: str) -> ConfigFn:
  """`get_config` with the variant fixed, e.g. `variant('f1')`."""
  return lambda arg=None: get_config(','.join(filter(None, [name, arg])))
