r"""Load a training run's checkpoint, evaluate it, and predict on images.

Library:

>>> ckpt = load_checkpoint('runs/digits')             # newest step, EMA weights
>>> probs = ckpt.predict(uint8_images)                 # [N, num_classes]
>>> result = evaluate(ckpt)                            # the config's eval split
>>> result.top1, result.top5, result.num_images

Command line (prints top-1/top-5 and the number of images; for data sets
with few classes, such as the embedded digits, also writes a confusion-matrix
PNG outside the work directory):

  python -m nfnets.evaluate --workdir=runs/digits
  python -m nfnets.evaluate --checkpoint=runs/digits/checkpoints/600 --raw

Checkpoints are those of `nfnets.train_state` (WORKDIR/checkpoints/<step>/
{state,config}); the config a checkpoint was trained with is stored inside
it, so the model, classes and eval preprocessing come from there. Nothing in
the work directory is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Any, Callable, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from nfnets import data
from nfnets import layers
from nfnets import models
from nfnets import pretrained
from nfnets import train_state as ts

PathLike = Union[str, pathlib.Path]

# Confusion matrices are drawn only up to this many classes; beyond it a
# K x K image is unreadable (ImageNet has 1000).
MAX_CONFUSION_CLASSES = 50

CheckpointError = ts.CheckpointError


def _build_model(config: ml_collections.ConfigDict,
                 **overrides: Any) -> hk.TransformedWithState:
  # Deferred: the runner pulls in the optimizer and logging stack.
  from nfnets import experiment  # pylint: disable=g-import-not-at-top
  return experiment.build_model(config, **overrides)


def fold_weight_standardization(
    config: ml_collections.ConfigDict, model: hk.TransformedWithState,
    params: hk.Params) -> tuple[hk.TransformedWithState, hk.Params]:
  """The model and weights to run inference with, Scaled WS computed once.

  Scaled WS depends only on the weights, so every `WSConv2D` kernel is
  standardized here (`layers.standardize_conv_params`) and the returned model
  applies the exported kernels as plain convolutions
  (`layers.PrestandardizedConv2D`); its logits equal `model`'s up to float
  rounding. Models without WSConv2D layers (the normalized baselines), or
  whose config already chooses its own `conv`, come back unchanged.

  Args:
    config: the run's config (model name and constructor arguments).
    model: the model built from `config`.
    params: its weights.

  Returns:
    (model, params) for `model.apply(params, state, None, images,
    is_training=False)`.
  """
  has_ws = any(set(p) == {'w', 'gain', 'bias'} for p in params.values())
  if (not has_ws or 'conv' in config.model.kwargs
      or 'conv' not in models.accepted_overrides(config.model.name)):
    return model, params
  folded = layers.standardize_conv_params(params)
  fast = _build_model(config, conv=layers.PrestandardizedConv2D)
  size = config.data.eval_image_size
  expected, _ = jax.eval_shape(lambda: fast.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), is_training=False))
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  if shapes(expected) != shapes(folded):
    # A WSConv2D built outside the model's `conv` factory keeps its gain;
    # such a model is run as trained.
    return model, params
  return fast, folded


@dataclasses.dataclass
class LoadedCheckpoint:
  """A model and one set of its weights from a checkpoint.

  Attributes:
    config: the config the run was trained with (read from the checkpoint).
    step: the checkpoint's training step.
    path: the checkpoint's step directory.
    use_ema: whether `params`/`state` are the EMA weights (else the raw ones).
    model: the transformed model; `model.apply(params, state, None, images,
      is_training=False)` gives logits.
    params: Haiku params (jax arrays).
    state: Haiku state (empty for the NF models).
  """
  config: ml_collections.ConfigDict
  step: int
  path: pathlib.Path
  use_ema: bool
  model: hk.TransformedWithState
  params: hk.Params
  state: hk.State
  _apply: Optional[Callable[..., jax.Array]] = dataclasses.field(
      default=None, repr=False)
  _inference: Optional[tuple[Callable[..., jax.Array], hk.Params]] = (
      dataclasses.field(default=None, repr=False))

  @property
  def num_classes(self) -> int:
    return data.num_classes(self.config.data)

  @property
  def apply_fn(self) -> Callable[..., jax.Array]:
    """Jitted `(params, state, images) -> logits [N, num_classes]`, eval mode.

    Images are already preprocessed (float32 [N, S, S, 3], normalized).
    """
    if self._apply is None:
      model = self.model
      self._apply = jax.jit(lambda params, state, images: model.apply(
          params, state, None, images, is_training=False)[0])
    return self._apply

  @property
  def inference(self) -> tuple[Callable[..., jax.Array], hk.Params]:
    """(jitted apply, weights) that `logits`, `predict` and `evaluate` use.

    The apply has `apply_fn`'s signature, but the weights have Scaled WS
    folded in once (`fold_weight_standardization`), so no forward pass
    recomputes it.
    """
    if self._inference is None:
      model, params = fold_weight_standardization(self.config, self.model,
                                                  self.params)
      if model is self.model:
        self._inference = self.apply_fn, self.params
      else:
        self._inference = jax.jit(
            lambda params, state, images: model.apply(
                params, state, None, images, is_training=False)[0]), params
    return self._inference

  def logits(self, images: Any) -> jax.Array:
    """Logits [N, num_classes] of preprocessed images [N, S, S, 3]."""
    apply, params = self.inference
    return apply(params, self.state, jnp.asarray(images))

  def preprocess(self, images: Any) -> jax.Array:
    """The eval resize/crop and normalization (`data.preprocess_for_eval`)."""
    return data.preprocess_for_eval(images, self.config.data)

  def predict(self, images: Any, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for raw images.

    Args:
      images: uint8 (0..255) or float (0..1) images of any size, [N, H, W],
        [N, H, W, 1] or [N, H, W, 3]; resized, cropped and normalized as in
        evaluation.
      batch_size: images per forward pass.

    Returns:
      float32 [N, num_classes] softmax probabilities.
    """
    images = np.asarray(images)
    out = []
    for start in range(0, len(images), batch_size):
      x = self.preprocess(images[start:start + batch_size])
      out.append(np.asarray(jax.nn.softmax(self.logits(x), axis=-1)))
    if not out:
      return np.zeros((0, self.num_classes), np.float32)
    return np.concatenate(out)


def _resolve(path: PathLike) -> tuple[pathlib.Path, Optional[int]]:
  """(work directory, step or None) of a work or step directory."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f'No work directory or checkpoint at {path}.')
  if path.parent.name == ts.CHECKPOINT_DIR and path.name.isdigit():
    return path.parent.parent, int(path.name)
  if (path / ts.CHECKPOINT_DIR).is_dir():
    return path, None
  raise CheckpointError(
      f'{path} is neither a work directory (with {ts.CHECKPOINT_DIR}/) nor a '
      f'checkpoint step directory ({ts.CHECKPOINT_DIR}/<step>).')


def load_checkpoint(path: PathLike, step: Optional[int] = None, *,
                    use_ema: bool = True,
                    model_name: Optional[str] = None) -> LoadedCheckpoint:
  """Loads one checkpoint of a training run, read-only.

  Args:
    path: a work directory, or one of its checkpoints
      (WORKDIR/checkpoints/<step>).
    step: which saved step of a work directory (default: the newest).
    use_ema: the EMA weights (what the papers report) or the raw ones.
    model_name: if given, the registry name the checkpoint must hold.

  Returns:
    A `LoadedCheckpoint`.

  Raises:
    CheckpointError: no such directory or step, an unreadable (corrupt)
      checkpoint, or one of another model; the message names the directory.
    pretrained.WeightsMismatchError: the stored arrays do not fit the model
      of the stored config (every mismatch listed).
  """
  workdir, path_step = _resolve(path)
  if step is None:
    step = path_step
  elif path_step is not None and path_step != step:
    raise CheckpointError(f'{path} is step {path_step}, not step {step}.')
  manager = ts.checkpoint_manager(workdir, read_only=True)
  try:
    if step is None:
      step = manager.latest_step()
      if step is None:
        raise CheckpointError(
            f'No checkpoint in {workdir / ts.CHECKPOINT_DIR}.')
    step_dir = workdir / ts.CHECKPOINT_DIR / str(step)
    if step not in manager.all_steps():
      raise CheckpointError(f'No checkpoint at step {step} ({step_dir}); '
                            f'saved steps: {list(manager.all_steps())}.')
    config = ts.restore_config(manager, step)
    if model_name is not None and config.model.name != model_name:
      raise CheckpointError(
          f'{step_dir} holds {config.model.name!r} (per its config), not '
          f'{model_name!r}.')
    try:
      # Restored from the checkpoint's own metadata: evaluation needs no
      # optimizer, and a mismatch is reported below name by name.
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))
    except Exception as e:  # orbax raises many types; all mean the same here.
      raise CheckpointError(
          f'Cannot read the checkpoint {step_dir / "state"}: '
          f'{type(e).__name__}: {e}') from e
  finally:
    manager.close()
  saved = restored.state
  prefix = 'ema_' if use_ema else ''
  try:
    params = saved[f'{prefix}params']
    state = saved['ema_state' if use_ema else 'model_state']
  except (KeyError, TypeError) as e:
    raise CheckpointError(f'{step_dir / "state"} is not a TrainState '
                          f'checkpoint (no {e}).') from e
  model = _build_model(config)
  size = config.data.eval_image_size
  abstract_params, abstract_state = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, size, size, 3)), is_training=False))
  source = f'Checkpoint {step_dir} ({config.model.name} per its config)'
  pretrained.check_params(abstract_params, params, source=source)
  pretrained.check_params(abstract_state, state, source=source + ' state')
  return LoadedCheckpoint(config=config, step=int(step), path=step_dir,
                          use_ema=use_ema, model=model, params=params,
                          state=state)


@dataclasses.dataclass
class EvalResult:
  """Metrics over an eval split.

  Attributes:
    top1: fraction of images whose top class is the label.
    top5: fraction whose label is among the 5 top classes (all classes when
      there are fewer than 5).
    num_images: images counted (padding excluded).
    confusion: int64 [K, K]; row = true class, column = predicted class.
    split: the split evaluated.
  """
  top1: float
  top5: float
  num_images: int
  confusion: np.ndarray
  split: str


def evaluate(ckpt: LoadedCheckpoint, *, batch_size: Optional[int] = None,
             split: Optional[str] = None, progress: bool = True,
             max_batches: Optional[int] = None) -> EvalResult:
  """Top-1/top-5 and the confusion matrix over an eval split.

  Args:
    ckpt: from `load_checkpoint`.
    batch_size: images per step (default: the config's eval batch size).
    split: split to evaluate (default: the config's eval split).
    progress: show a tqdm progress bar.
    max_batches: stop after this many batches (a quick look).

  Returns:
    An `EvalResult`.
  """
  data_config = ckpt.config.data.copy_and_resolve_references()
  if split is not None:
    data_config.eval_split = split
  split = data.base.eval_split(data_config)
  batch_size = batch_size or ckpt.config.eval.batch_size
  num_batches = math.ceil(data.num_examples(data_config, split) / batch_size)
  if max_batches is not None:
    num_batches = min(num_batches, max_batches)
  k = min(5, ckpt.num_classes)

  apply, params = ckpt.inference

  @jax.jit
  def step(params, state, images, labels):
    logits = apply(params, state, images)
    hit_k = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
    return jnp.argmax(logits, -1), hit_k

  batches = data.build_eval(data_config, batch_size=batch_size)
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    batches = tqdm.tqdm(batches, total=num_batches, unit='batch',
                        desc=f'eval {split}')
  confusion = np.zeros((ckpt.num_classes, ckpt.num_classes), np.int64)
  top5_hits = 0
  for i, batch in enumerate(batches):
    if i >= num_batches:
      break
    preds, hit_k = jax.device_get(step(params, ckpt.state,
                                       batch['images'], batch['labels']))
    mask = np.asarray(batch['mask'], bool)
    np.add.at(confusion, (batch['labels'][mask], preds[mask]), 1)
    top5_hits += int(hit_k[mask].sum())
  if progress:
    batches.close()
  total = int(confusion.sum())
  if total == 0:
    raise ValueError(f'The eval split {split!r} yielded no images.')
  return EvalResult(top1=float(np.trace(confusion)) / total,
                    top5=top5_hits / total, num_images=total,
                    confusion=confusion, split=split)


def plot_confusion(confusion: np.ndarray, ax: Any = None,
                   class_names: Optional[Sequence[str]] = None) -> Any:
  """Draws a confusion matrix (counts, true class by row) on `ax`."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if ax is None:
    _, ax = plt.subplots(figsize=(5, 4.5))
  k = confusion.shape[0]
  names = list(class_names) if class_names is not None else [
      str(i) for i in range(k)]
  image = ax.imshow(confusion, cmap='Blues')
  ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(k), names)
  ax.set_yticks(range(k), names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  if k <= 20:
    threshold = confusion.max() / 2
    for i in range(k):
      for j in range(k):
        ax.text(j, i, str(confusion[i, j]), ha='center', va='center',
                fontsize=7,
                color='white' if confusion[i, j] > threshold else 'black')
  return ax


def save_confusion_png(confusion: np.ndarray, path: PathLike,
                       title: str = '') -> pathlib.Path:
  """Writes `plot_confusion` to a PNG file."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg', force=False)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(5, 4.5))
  plot_confusion(confusion, ax)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def read_metrics(workdir: PathLike) -> list[dict[str, float]]:
  """The records of WORKDIR/metrics.jsonl (one dict per logged step).

  Keys are 'step', 'time' and TensorBoard-style tags such as 'train/loss',
  'eval/top1', 'eval/ema_top1'. A truncated last line (a run killed while
  writing) is skipped.
  """
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    raise FileNotFoundError(f'No metrics file {path}.')
  records = []
  lines = path.read_text().splitlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):
        continue
      raise ValueError(f'{path}:{number} is not JSON: {e}') from e
  return records


def default_confusion_path(ckpt: LoadedCheckpoint) -> pathlib.Path:
  """WORKDIR_eval/confusion_step<N>.png, beside (not in) the work directory."""
  workdir = ckpt.path.parent.parent
  weights = 'ema' if ckpt.use_ema else 'raw'
  return (workdir.parent / f'{workdir.name}_eval' /
          f'confusion_step{ckpt.step}_{weights}.png')


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
                      f'for data sets with <= {MAX_CONFUSION_CLASSES} classes')
  parser.add_argument('--no_progress', action='store_true',
                      help='hide the progress bar')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> EvalResult:
  """Command line entry point; returns the result (exits 1 on a bad input)."""
  args = _parse(argv)
  try:
    ckpt = load_checkpoint(args.workdir or args.checkpoint, args.step,
                           use_ema=not args.raw)
  except (CheckpointError, pretrained.WeightsMismatchError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  result = evaluate(ckpt, batch_size=args.batch_size, split=args.split,
                    progress=not args.no_progress)
  weights = 'EMA' if ckpt.use_ema else 'raw'
  print(f'{ckpt.config.model.name} step {ckpt.step} ({weights} weights) on '
        f'{ckpt.config.data.dataset}/{result.split}: '
        f'top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  '
        f'images {result.num_images}')
  if ckpt.num_classes <= MAX_CONFUSION_CLASSES:
    path = pathlib.Path(args.confusion_png or default_confusion_path(ckpt))
    workdir = ckpt.path.parent.parent
    if path.absolute().is_relative_to(workdir):
      print(f'error: {path} is inside the work directory {workdir}, which '
            'evaluation never writes to.', file=sys.stderr)
      sys.exit(1)
    save_confusion_png(result.confusion, path, title=(
        f'{ckpt.config.model.name} step {ckpt.step} ({weights}), '
        f'top-1 {result.top1:.3f}'))
    print(f'confusion matrix: {path}')
  return result


if __name__ == '__main__':
  from nfnets import host  # pylint: disable=g-import-not-at-top
  host.reexec_with_huge_pages()
  main()
