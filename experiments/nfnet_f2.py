r"""NFNet-F2 on ImageNet, trained with the paper's recipe.

193.8M parameters; 256 px train, 352 px test; RandAugment magnitude 10;
dropout 0.4.

  python -m nfnets.experiment --config=experiments/nfnet_f2.py --workdir=DIR \
      --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment --config=experiments/nfnet_f2.py:runlocal \
      --workdir=/tmp/nfnet_f2_smoke   # 1/8 width, digits data, 20 steps, CPU

Recipe ([NFNet] sec. 6 and appendix): batch 4096 for 360 epochs, LR
0.1 x B / 256 with 5 warmup epochs then cosine decay to 0, Nesterov 0.9,
weight decay 2e-5, AGC 0.01 (classifier unclipped), label smoothing 0.1, EMA
0.99999, RandAugment with 4 layers, CutMix and MixUp on halves of each batch,
stochastic depth 0.25, bfloat16 compute.

Expected cost: 112,603 steps of 4096 images (461M images seen) on an
accelerator pod; ImageNet prepared for tensorflow-datasets in TFDS_DIR.
"""
from nfnets import configs


def get_config(arg=None):
  return configs.nfnet_config('nfnet_f2', arg)
