"""Metrics of a run: written to TensorBoard and JSON lines, read back.

`MetricWriter` writes from process 0 only; `Pending` keeps per-step device
metrics until a log step, so the loop reads device values only there.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np

from nfnets import errors

Metrics = dict[str, float]
METRICS_FILE = 'metrics.jsonl'


class MetricWriter:
  """TensorBoard events (clu's `SummaryWriter`) and a JSON-lines file.

  Scalars go to WORKDIR/tensorboard (view them with `tensorboard --logdir
  WORKDIR`) and, one record per call, to WORKDIR/metrics.jsonl, which
  `read_metrics` reads back. Only process 0 writes; other processes get a
  writer that does nothing.

  A run resumed at `start_step` drops the records after it first: a run
  killed after its last checkpoint had logged steps that the resumed run
  logs again, so each step keeps one record.
  """

  def __init__(self, workdir: pathlib.Path, enabled: bool = True,
               start_step: Optional[int] = None):
    self._enabled = enabled
    if not enabled:
      return
    if start_step is not None:
      _drop_records_after(workdir / METRICS_FILE, start_step)
    # Deferred: clu's writers import TensorFlow, which takes seconds, and
    # only process 0 writes.
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self._tb = metric_writers.SummaryWriter(str(workdir / 'tensorboard'))
    self._jsonl = open(workdir / METRICS_FILE, 'a')

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Records the run's settings (flattened config) for TensorBoard."""
    if self._enabled:
      self._tb.write_hparams(dict(hparams))
      self._tb.flush()

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Writes scalars at `step`; keys are TensorBoard tags ('train/loss')."""
    if not self._enabled:
      return
    self._tb.write_scalars(step, {k: float(v) for k, v in metrics.items()})
    record = {'step': step, 'time': time.time(),
              **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._tb.close()
      self._jsonl.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
  """Rewrites a JSON-lines file without its records after `step`."""
  if not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      if json.loads(line)['step'] > step:
        continue
    except (ValueError, KeyError, TypeError):
      if line is lines[-1]:
        continue  # A line cut short by a kill: the resumed run rewrites it.
    kept.append(line if line.endswith('\n') else line + '\n')
  if len(kept) != len(lines):
    tmp = path.with_suffix('.jsonl.tmp')
    tmp.write_text(''.join(kept))
    tmp.replace(path)


def read_metrics(workdir: Union[str, os.PathLike]) -> list[dict[str, float]]:
  """The records of WORKDIR/metrics.jsonl (one dict per logged step).

  Keys are 'step', 'time' and TensorBoard-style tags such as 'train/loss',
  'eval/top1', 'eval/ema_top1'. A truncated last line (a run killed while
  writing) is skipped.
  """
  path = pathlib.Path(workdir) / METRICS_FILE
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


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


class Pending:
  """Per-step device metrics kept until the next log step, then fetched."""

  def __init__(self):
    self.items: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.items.append((step, metrics))

  def fetch(self) -> Metrics:
    """Mean metrics since the last fetch; raises on a non-finite loss."""
    items, self.items = self.items, []
    steps = [s for s, _ in items]
    values = jax.device_get([m for _, m in items])
    for step, m in zip(steps, values):
      if not np.isfinite(m['loss']):
        raise NonFiniteLossError(f'Non-finite loss ({m["loss"]}) at step '
                                 f'{step}.')
    return {k: float(np.mean([m[k] for m in values])) for k in values[0]}
