r"""NF-ResNet-50 with AGC on ImageNet, as in the batch-size study of [NFNet].

25.6M parameters; 224 px train and test; dropout 0.25.

  python -m nfnets.experiment --config=experiments/nf_resnet50.py \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=experiments/nf_resnet50.py:runlocal \
      --workdir=/tmp/nf_resnet50_smoke   # 1/8 width, digits, 20 steps, CPU
  python -m nfnets.experiment \
      --config=experiments/nf_resnet50.py:runlocal,imagenet \
      --workdir=/tmp/nf_resnet50_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one block per stage

Recipe ([NFNet] sec. 4.1): batch 4096 for 90 epochs, LR 0.1 x B / 256 with
5 warmup epochs then cosine decay to 0, Nesterov 0.9, weight decay 2e-5, AGC
0.01 (classifier unclipped), label smoothing 0.1, random crops and flips
only (no RandAugment, CutMix or MixUp); EMA weights are evaluated alongside.

Expected cost: 28,151 steps of 4096 images (115M images seen) on an
accelerator pod; ImageNet prepared for tensorflow-datasets in TFDS_DIR.
"""
from typing import Optional

import ml_collections

from nfnets.configs import common


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return common.imagenet_config(
      'nf_resnet50', arg, num_epochs=90.0, randaugment_layers=0,
      mixup_alpha=0.0, cutmix_alpha=0.0)
