r"""Evaluate a checkpoint of a training run from the command line.

  python -m nfnets.evaluate --workdir=runs/digits
  python -m nfnets.evaluate --checkpoint=runs/digits/checkpoints/600 --raw

Prints top-1/top-5 and the number of images; for data sets with few classes,
such as the embedded digits, also writes a confusion-matrix PNG outside the
work directory. Nothing in the work directory is written.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

from nfnets import evaluate
from nfnets import pretrained


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m nfnets.evaluate',
      description='Evaluate a checkpoint of a training run on its eval split.')
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--workdir', help='work directory of a training run '
                     '(newest checkpoint unless --step)')
  where.add_argument('--checkpoint', help='one checkpoint: '
                     'WORKDIR/checkpoints/<step>')
  parser.add_argument('--step', type=int, default=None,
                      help='saved step to evaluate (default: newest)')
  parser.add_argument('--raw', action='store_true',
                      help='evaluate the raw weights instead of the EMA ones')
  parser.add_argument('--split', default=None,
                      help='eval split (default: the config\'s)')
  parser.add_argument('--batch_size', type=int, default=None,
                      help='eval batch size (default: the config\'s)')
  parser.add_argument('--confusion_png', default=None,
                      help='where to write the confusion matrix (default: '
                      'WORKDIR_eval/confusion_step<N>_<ema|raw>.png); only '
                      f'for data sets with <= {evaluate.MAX_CONFUSION_CLASSES} classes')
  parser.add_argument('--no_progress', action='store_true',
                      help='hide the progress bar')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> evaluate.EvalResult:
  """Command line entry point; returns the result (exits 1 on a bad input)."""
  args = _parse(argv)
  try:
    ckpt = evaluate.load_checkpoint(args.workdir or args.checkpoint, args.step,
                           use_ema=not args.raw)
  except (evaluate.CheckpointError, pretrained.WeightsMismatchError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  result = evaluate.evaluate(ckpt, batch_size=args.batch_size, split=args.split,
                    progress=not args.no_progress)
  weights = 'EMA' if ckpt.use_ema else 'raw'
  print(f'{ckpt.config.model.name} step {ckpt.step} ({weights} weights) on '
        f'{ckpt.config.data.dataset}/{result.split}: '
        f'top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  '
        f'images {result.num_images}')
  if ckpt.num_classes <= evaluate.MAX_CONFUSION_CLASSES:
    path = pathlib.Path(args.confusion_png or evaluate.default_confusion_path(ckpt))
    workdir = ckpt.path.parent.parent
    if path.absolute().is_relative_to(workdir):
      print(f'error: {path} is inside the work directory {workdir}, which '
            'evaluation never writes to.', file=sys.stderr)
      sys.exit(1)
    evaluate.save_confusion_png(result.confusion, path, title=(
        f'{ckpt.config.model.name} step {ckpt.step} ({weights}), '
        f'top-1 {result.top1:.3f}'))
    print(f'confusion matrix: {path}')
  return result


def run() -> None:
  """`python -m nfnets.evaluate`: `main` on the process's arguments."""
  main()


if __name__ == '__main__':
  run()
