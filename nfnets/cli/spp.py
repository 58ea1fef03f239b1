r"""Signal Propagation Plots from the command line.

A 600-layer comparison, small enough for a CPU:

  python -m nfnets.spp --models=bn_relu_conv,relu_bn_conv,nf_resnet_he,nf_resnet_ws \
      --depth=600 --width=0.0625 --image_size=32 --batch_size=8 --out=spp.png

writes spp.png and spp.csv.
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags

from nfnets import spp
from nfnets.cli import common

_MODELS = flags.DEFINE_list(
    'models', list(spp.SHORT_NAMES),
    f'Short names {list(spp.SHORT_NAMES)} or registered models.')
_DEPTH = flags.DEFINE_integer('depth', 600, 'Depth used with the short names.')
_OUT = flags.DEFINE_string('out', 'spp.png',
                           'Output PNG; the CSV goes beside it.')
_WIDTH = flags.DEFINE_float('width', 0.25, 'Channel multiplier.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32,
                                   'Input resolution in pixels.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8,
                                   'Number of Gaussian inputs.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of inputs and initialization.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  results = spp.run(_MODELS.value, _DEPTH.value, _OUT.value,
                    width=_WIDTH.value, image_size=_IMAGE_SIZE.value,
                    batch_size=_BATCH_SIZE.value, seed=_SEED.value)
  for name, stats in results.items():
    print(f'{name}: final mean_sq={stats.mean_sq[-1]:.4g} '
          f'variance={stats.variance[-1]:.4g} '
          f'residual_variance={stats.residual_variance[-1]:.4g}')
  print(f'Wrote {_OUT.value} and {os.path.splitext(_OUT.value)[0]}.csv')


def run() -> None:
  """`python -m nfnets.spp`: parses the flags and runs `main`."""
  common.run(main)


if __name__ == '__main__':
  run()
