r"""ShuffleNet v1 and v2 on ImageNet with the papers' recipe, one file for all.

  python -m nfnets.experiment --config=experiments/shufflenet_v1_g3.py \
      --workdir=DIR --config.data.data_dir=TFDS_DIR
  python -m nfnets.experiment \
      --config=nfnets/configs/shufflenet.py:v2_x1_0,runlocal \
      --workdir=/tmp/shufflenet_smoke   # 1/8 width, digits data, 20 steps, CPU
  python -m nfnets.experiment \
      --config=experiments/shufflenet_v2_x1_0.py:runlocal,imagenet \
      --workdir=/tmp/shufflenet_inet --config.data.data_dir=TFDS_DIR
      # the same on the tfds ImageNet pipeline at 32 px, one unit per stage

The variant is the config string's first word (`v1_g1`, `v1_g2`, `v1_g3`,
`v1_g4`, `v1_g8` for ShuffleNet v1 1x with that many groups; `v2_x0_5`,
`v2_x1_0`, `v2_x1_5`, `v2_x2_0` for ShuffleNet v2; default v2_x1_0), then
the flags `runlocal` (digits smoke run) or `runlocal,imagenet` (ImageNet
smoke run); `experiments/shufflenet_*.py` fix the variant. All train and
test at 224 px; v2 2.0x drops out 20% of the pooled features, as the authors'
code does.

| variant | params | MACs (224 px, convs + classifier) |
|---|---|---|
| v1_g1 | 1.53M | 143M |
| v1_g2 | 1.73M | 141M |
| v1_g3 | 1.87M | 137M |
| v1_g4 | 1.97M | 134M |
| v1_g8 | 2.43M | 138M |
| v2_x0_5 | 1.37M | 40M |
| v2_x1_0 | 2.28M | 145M |
| v2_x1_5 | 3.50M | 296M |
| v2_x2_0 | 7.39M | 583M |

Recipe ([ShuffleNet] sec. 4, [ShuffleNetV2] sec. 5, and the authors'
megvii-model/ShuffleNet-Series train.py): batch 1024 for 300,000 steps (240
epochs), SGD with momentum 0.9 (not Nesterov), learning rate 0.5 at batch
1024 decaying linearly to 0 with no warmup (lr = 0.5 (1 - step / 300k)),
weight decay 4e-5 on convolution and classifier weights only (not on
BatchNorm or biases), label smoothing 0.1, no EMA of the weights, no AGC,
random-resized crops and flips, evaluation on the central 224/256 of the
shorter side; BatchNorm momentum 0.1 (decay 0.9), bfloat16 compute.

Not verified here: the authors' code also jitters brightness, contrast and
saturation by 0.4 (this pipeline has no colour jitter), and v1's paper uses
"less aggressive scale augmentation" without saying how much (this config
keeps the pipeline's default crop scales); their code ends with a pass that
re-estimates the BatchNorm statistics, which this runner does not do; they
train in float32. No ImageNet run of this config has been made.

Expected cost: 300,000 steps of 1024 images on an accelerator pod;
ImageNet prepared for tensorflow-datasets in TFDS_DIR.
"""
from typing import Callable, Optional

import ml_collections

from nfnets.configs import common

ConfigFn = Callable[[Optional[str]], ml_collections.ConfigDict]
# Config variant -> registered model.
_MODELS = {**{f'v1_{g}': f'shufflenet_v1_{g}'
              for g in ('g1', 'g2', 'g3', 'g4', 'g8')},
           **{f'v2_{x}': f'shufflenet_v2_{x}'
              for x in ('x0_5', 'x1_0', 'x1_5', 'x2_0')}}
# [ShuffleNet] sec. 4: 3 x 10^5 iterations of batch 1024 (240 epochs).
_STEPS = 300_000
_BATCH = 1024


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The recipe of the variant named first in `arg` ('v2_x1_0' by default)."""
  variant, flags = common.split_variant(arg, list(_MODELS), 'v2_x1_0',
                                        'ShuffleNet')
  config = common.imagenet_config(_MODELS[variant], None,
                                  randaugment_layers=0, mixup_alpha=0.0,
                                  cutmix_alpha=0.0)
  config.data.eval_crop = 'aspect'
  config.data.crop_padding = 32  # 224 of 256 px.
  tc = config.training
  tc.batch_size = _BATCH
  tc.num_epochs = None
  tc.num_steps = _STEPS
  tc.label_smoothing = 0.1
  tc.ema_decay = 0.0
  opt = config.optimizer
  opt.name = 'sgd'
  # 0.5 at the papers' batch of 1024, scaled linearly at other batches.
  opt.base_lr = 0.5
  opt.lr_batch_reference = _BATCH
  opt.momentum = 0.9
  opt.nesterov = False
  opt.weight_decay = 4e-5
  opt.clipping = 0.0
  opt.schedule = 'linear'
  opt.end_lr = 0.0
  opt.warmup_epochs = 0.0
  if 'runlocal' in flags:
    common.runlocal(config, imagenet='imagenet' in flags)
  return config


def variant(name: str) -> ConfigFn:
  """`get_config` with the variant fixed, e.g. `variant('v1_g3')`."""
  return lambda arg=None: get_config(','.join(filter(None, [name, arg])))
