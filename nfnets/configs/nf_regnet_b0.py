r"""NF-RegNet-B0 on ImageNet with the NFNet recipe at its own resolution.

8.6M parameters; 192 px train, 224 px test; dropout 0.2; stochastic depth
0.1 ([NF-ResNet] sec. 5 regularizes the NF-RegNets like EfficientNets).

  python -m nfnets.experiment --config=experiments/nf_regnet_b0.py \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=experiments/nf_regnet_b0.py:runlocal \
      --workdir=/tmp/nf_regnet_b0_smoke   # 1/8 width, digits, 20 steps, CPU
  python -m nfnets.experiment \
      --config=experiments/nf_regnet_b0.py:runlocal,imagenet \
      --workdir=/tmp/nf_regnet_b0_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one block per stage

Recipe: batch 4096 for 360 epochs, LR 0.1 x B / 256 with 5 warmup epochs
then cosine decay to 0, Nesterov 0.9, weight decay 2e-5, AGC 0.01
(classifier unclipped), label smoothing 0.1, EMA 0.99999, RandAugment with
4 layers at magnitude 10, no CutMix or MixUp, bfloat16 compute.

Expected cost: 112,603 steps of 4096 images (461M images seen) on an
accelerator pod; ImageNet prepared for tensorflow-datasets in TFDS_DIR.
"""
from typing import Optional

import ml_collections

from nfnets.configs import common


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return common.imagenet_config(
      'nf_regnet_b0', arg, mixup_alpha=0.0, cutmix_alpha=0.0,
      stochdepth_rate=0.1)
