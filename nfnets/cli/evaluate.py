r"""Evaluate a checkpoint of a training run from the command line.

  python -m nfnets.evaluate --workdir=runs/digits
  python -m nfnets.evaluate --checkpoint=runs/digits/checkpoints/450 --raw

Prints top-1/top-5 and the number of images; for data sets with few classes,
such as the embedded digits, also writes a confusion-matrix PNG outside the
work directory. Nothing in the work directory is written.
"""
from __future__ import annotations

import pathlib
from typing import Any, Optional, Sequence

from absl import app
from absl import flags

from nfnets import errors
from nfnets import evaluate
from nfnets.cli import common


def define_flags(flag_values: flags.FlagValues = flags.FLAGS
                 ) -> dict[str, Any]:
  """Defines the evaluation flags in `flag_values`; returns their holders."""
  define = lambda kind, *args: getattr(flags, f'DEFINE_{kind}')(
      *args, flag_values=flag_values)
  return {
      'workdir': define('string', 'workdir', None, 'Work directory of a '
                        'training run (newest checkpoint unless --step).'),
      'checkpoint': define('string', 'checkpoint', None,
                           'One checkpoint: WORKDIR/checkpoints/<step>.'),
      'step': define('integer', 'step', None,
                     'Saved step to evaluate (default: newest).'),
      'raw': define('bool', 'raw', False,
                    'Evaluate the raw weights instead of the EMA ones.'),
      'split': define('string', 'split', None,
                      "Eval split (default: the config's)."),
      'batch_size': define('integer', 'batch_size', None,
                           "Eval batch size (default: the config's)."),
      'confusion_png': define(
          'string', 'confusion_png', None, 'Where to write the confusion '
          'matrix (default: WORKDIR_eval/confusion_step<N>_<ema|raw>.png); '
          f'only for data sets with <= {evaluate.MAX_CONFUSION_CLASSES} '
          'classes.'),
      'no_progress': define('bool', 'no_progress', False,
                            'Hide the progress bar.'),
  }


def main(argv: Sequence[str], defined: dict[str, Any]) -> evaluate.EvalResult:
  """Evaluates the checkpoint the flags name; returns the result."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  value = {name: holder.value for name, holder in defined.items()}
  if bool(value['workdir']) == bool(value['checkpoint']):
    raise errors.InputError('Pass exactly one of --workdir and --checkpoint.')
  ckpt = evaluate.load_checkpoint(value['workdir'] or value['checkpoint'],
                                  value['step'], use_ema=not value['raw'])
  path = None
  if ckpt.num_classes <= evaluate.MAX_CONFUSION_CLASSES:
    path = pathlib.Path(value['confusion_png'] or
                        evaluate.default_confusion_path(ckpt))
    workdir = ckpt.path.parent.parent
    if path.absolute().is_relative_to(workdir):
      raise errors.InputError(
          f'{path} is inside the work directory {workdir}, which evaluation '
          'never writes to; pass another --confusion_png.')
    # Before the evaluation, which can take long: where it goes must work.
    errors.check_writable(path, f'the confusion matrix {path}')
  result = evaluate.evaluate(ckpt, batch_size=value['batch_size'],
                             split=value['split'],
                             progress=not value['no_progress'])
  weights = 'EMA' if ckpt.use_ema else 'raw'
  print(f'{ckpt.config.model.name} step {ckpt.step} ({weights} weights) on '
        f'{ckpt.config.data.dataset}/{result.split}: '
        f'top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  '
        f'images {result.num_images}')
  if path is not None:
    evaluate.save_confusion_png(result.confusion, path, title=(
        f'{ckpt.config.model.name} step {ckpt.step} ({weights}), '
        f'top-1 {result.top1:.3f}'))
    print(f'confusion matrix: {path}')
  return result


def parse_and_run(argv: Sequence[str]) -> evaluate.EvalResult:
  """`main` on `argv` (without the program name), parsed into fresh flags.

  For calling the command line from Python: user errors raise as they do in
  the library, instead of printing and exiting.
  """
  values = flags.FlagValues()
  defined = define_flags(values)
  values(['evaluate', *argv])
  return main(['evaluate'], defined)


def run(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m nfnets.evaluate`: flags, then `main`; user errors as one line.

  Args:
    argv: the command line without the program name (default: sys.argv's).
  """
  common.run(main, define_flags, argv=argv)


if __name__ == '__main__':
  run()
