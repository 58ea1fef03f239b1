r"""Load a training run's checkpoint, evaluate it, and predict on images.

Library:

>>> ckpt = load_checkpoint('runs/digits')             # newest step, EMA weights
>>> probs = ckpt.predict(uint8_images)                 # [N, num_classes]
>>> result = evaluate(ckpt)                            # the config's eval split
>>> result.top1, result.top5, result.num_images

Command line: `python -m nfnets.evaluate` (see `nfnets.cli.evaluate`).

Checkpoints are those of `nfnets.train.checkpoint` (WORKDIR/checkpoints/<step>/
{state,config}); the config a checkpoint was trained with is stored inside
it, so the model, classes and eval preprocessing come from there. Nothing in
the work directory is written.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Callable, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets import data
from nfnets import errors
from nfnets import layers
from nfnets import models
from nfnets import pretrained
from nfnets.train import checkpoint
from nfnets.train import state as state_lib
from nfnets.train import step as step_lib

PathLike = Union[str, pathlib.Path]

# Confusion matrices are drawn only up to this many classes; beyond it a
# K x K image is unreadable (ImageNet has 1000).
MAX_CONFUSION_CLASSES = 50

CheckpointError = checkpoint.CheckpointError


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
  fast = state_lib.build_model(config, conv=layers.PrestandardizedConv2D)
  expected, _ = models.abstract_init(fast, config.data.eval_image_size)
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
    """Logits [N, num_classes] of preprocessed images [N, S, S, 3].

    Raises:
      InputError: not a batch of RGB images with pixels, or non-finite
        values.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:3]:
      raise errors.InputError(
          'logits takes a batch of preprocessed RGB images [N, S, S, 3] (see '
          f'`preprocess`); got shape {images.shape}.')
    if not bool(jnp.all(jnp.isfinite(images))):
      raise errors.InputError('Images contain NaN or infinite values.')
    apply, params = self.inference
    return apply(params, self.state, images)

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
    if batch_size < 1:
      raise errors.InputError(f'batch_size must be positive, got {batch_size}.')
    data.check_images(images)
    out = []
    for start in range(0, len(images), batch_size):
      x = self.preprocess(images[start:start + batch_size])
      out.append(np.asarray(jax.nn.softmax(self.logits(x), axis=-1)))
    if not out:
      return np.zeros((0, self.num_classes), np.float32)
    return np.concatenate(out)


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
  saved = checkpoint.read_saved(path, step)
  config = saved.config
  if model_name is not None and config.model.name != model_name:
    raise CheckpointError(
        f'{saved.path} holds {config.model.name!r} (per its config), not '
        f'{model_name!r}.')
  params, state = saved.weights(use_ema)
  model = state_lib.build_model(config)
  abstract_params, abstract_state = models.abstract_init(
      model, config.data.eval_image_size)
  source = f'Checkpoint {saved.path} ({config.model.name} per its config)'
  pretrained.check_params(abstract_params, params, source=source)
  pretrained.check_params(abstract_state, state, source=source + ' state')
  return LoadedCheckpoint(config=config, step=saved.step, path=saved.path,
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
    try:
      data.validate(data_config)
    except ValueError as e:
      raise errors.InputError(str(e)) from e
  split = data.base.eval_split(data_config)
  if batch_size is not None and batch_size < 1:
    raise errors.InputError(f'batch_size must be positive, got {batch_size}.')
  batch_size = batch_size or ckpt.config.eval.batch_size
  num_batches = math.ceil(data.num_examples(data_config, split) / batch_size)
  if max_batches is not None:
    num_batches = min(num_batches, max_batches)
  k = min(5, ckpt.num_classes)

  apply, params = ckpt.inference

  @jax.jit
  def step(params, state, images, labels):
    logits = apply(params, state, images)
    return jnp.argmax(logits, -1), step_lib.topk_hits(logits, labels, k)

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
  """Writes `plot_confusion` to a PNG file.

  Raises:
    errors.PathError: `path` cannot be written.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg', force=False)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  path = errors.make_parent(path, f'the confusion matrix {path}')
  fig, ax = plt.subplots(figsize=(5, 4.5))
  plot_confusion(confusion, ax)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def default_confusion_path(ckpt: LoadedCheckpoint) -> pathlib.Path:
  """WORKDIR_eval/confusion_step<N>.png, beside (not in) the work directory."""
  workdir = ckpt.path.parent.parent
  weights = 'ema' if ckpt.use_ema else 'raw'
  return (workdir.parent / f'{workdir.name}_eval' /
          f'confusion_step{ckpt.step}_{weights}.png')


if __name__ == '__main__':
  # `python -m nfnets.evaluate` runs the command line, which lives with the
  # other command lines.
  from nfnets.cli import evaluate as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
