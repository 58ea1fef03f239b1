r"""Attention masks M(x) of a small Residual Attention Network on digits.

  .venv/bin/python docs/attention_masks.py      # about 3 min on 2 CPU cores
  .venv/bin/python docs/attention_masks.py --steps 100 --out /tmp/masks.png

Trains the `digits` form of Attention-56 (`nfnets/configs/attention.py:
56,digits`: one Attention Module in each of three stages, 16 / 32 / 64
channels, 450 steps of 64 images at 32 px, [RAN]'s momentum SGD with the
LR divided by 10 twice) through the runner, `nfnets.train.train_and_evaluate`,
and reloads the final (non-EMA) weights. For a few test digits it draws each
module's mask ([N, H, W, C], from `return_activations=True`) as its mean over
channels and as the two channels whose masks vary most over the digits
shown: the masks differ between channels as well as between positions
([RAN] sec. 3.2, mixed attention). Below each module: the mean over
positions and digits of the masks' standard deviation across channels, and
the mean over channels and digits of their standard deviation across
positions. At 32 px the modules' maps are 8x8, 4x4 and 2x2 pixels, drawn
without interpolation; single channels share the 0..1 color scale, channel
means are stretched to their own range (in the title).

Writes docs/figures/attention_masks.png and prints the test top-1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from nfnets import evaluate
from nfnets import train
from nfnets.configs import attention as attention_config
from nfnets.data import digits

_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'figures',
                    'attention_masks.png')
# Test digits drawn, one per row: the first test example of each class.
_CLASSES = (0, 2, 4, 7)
_CHANNELS_SHOWN = 2


def train_digits(workdir: str, steps: int, seed: int) -> dict[str, float]:
  """Trains the digits form in `workdir`; returns the runner's final metrics."""
  config = attention_config.get_config('56,digits')
  config.training.num_steps = steps
  config.training.seed = seed
  # Keep the LR drops at the recipe's fractions of a shortened run.
  config.optimizer.decay_steps = max(1, round(steps * 200 / 530))
  config.eval.every_steps = 0
  config.checkpoint.every_steps = steps
  return train.train_and_evaluate(config, workdir)


def masks_of(workdir: str, images: np.ndarray) -> dict[str, np.ndarray]:
  """Each module's mask [N, H, W, C] for raw digits [N, 8, 8].

  The run's final weights, not their EMA.
  """
  ckpt = evaluate.load_checkpoint(workdir, use_ema=False)
  x = ckpt.preprocess(images)
  (_, acts), _ = ckpt.model.apply(ckpt.params, ckpt.state, None, x,
                                  is_training=False, return_activations=True)
  return {k: np.asarray(v) for k, v in sorted(acts.masks.items())}


def plot(images: np.ndarray, labels: np.ndarray,
         masks: dict[str, np.ndarray], top1: float, out: str) -> None:
  """Input, channel mean and two single channels per module, a row per digit.

  Single channels share one color scale (0..1); each module's channel mean,
  which averages towards 0.5, is stretched to its own range (in its title).
  """
  cols = 1 + len(masks) * (1 + _CHANNELS_SHOWN)
  fig, axes = plt.subplots(len(images), cols, figsize=(1.3 * cols, 6.0),
                           squeeze=False, layout='constrained')
  for row, (image, label) in enumerate(zip(images, labels)):
    axes[row, 0].imshow(image, cmap='gray_r', interpolation='nearest')
    axes[row, 0].set_ylabel(f'digit {label}', fontsize=8)
  axes[0, 0].set_title('input\n8x8, shown at 32 px', fontsize=7)
  col = 1
  for key, mask in masks.items():  # [N, H, W, C]
    stage = key.split('/')[0]
    h, w, c = mask.shape[1:]
    # The channels whose masks vary most over the digits and positions shown.
    spread = mask.reshape(-1, c).std(axis=0)
    channels = np.argsort(spread)[::-1][:_CHANNELS_SHOWN]
    mean = mask.mean(axis=-1)
    lo, hi = float(mean.min()), float(mean.max())
    panels = [(f'{stage}: mean of {c} ch\n{h}x{w}, range {lo:.2f}-{hi:.2f}',
               mean, lo, hi)] + [
                   (f'{stage}: ch {ch}\n0-1', mask[..., ch], 0.0, 1.0)
                   for ch in channels]
    for j, (title, maps, vmin, vmax) in enumerate(panels):
      for row in range(len(images)):
        im = axes[row, col + j].imshow(maps[row], cmap='viridis', vmin=vmin,
                                       vmax=vmax, interpolation='nearest')
      axes[0, col + j].set_title(title, fontsize=7)
    axes[-1, col].set_xlabel(
        f'sd over ch {mask.std(axis=-1).mean():.2f}\n'
        f'sd over x, y {mask.std(axis=(1, 2)).mean():.2f}', fontsize=7)
    col += len(panels)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label='M(x), channels')
  fig.suptitle('Residual Attention masks M(x) of the Attention-56 digits form '
               f'(test top-1 {100 * top1:.1f}%)', fontsize=9)
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  fig.savefig(out, dpi=90)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=450)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=_OUT)
  parser.add_argument('--workdir', default=None,
                      help='keep the run here (default: a temporary one)')
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix='attention_masks_')
  try:
    metrics = train_digits(workdir, args.steps, args.seed)
    raw, labels = digits.raw_images('test')
    rows = [int(np.flatnonzero(labels == c)[0]) for c in _CLASSES]
    masks = masks_of(workdir, raw[rows])
    plot(raw[rows], labels[rows], masks, metrics['eval/top1'], args.out)
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f"steps {int(metrics['step'])}: test top-1 "
        f"{100 * metrics['eval/top1']:.1f}% (EMA "
        f"{100 * metrics['eval/ema_top1']:.1f}%); wrote {args.out}")


if __name__ == '__main__':
  main()
