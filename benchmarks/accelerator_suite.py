r"""The accelerator benchmark suite: one command, one table, every record saved.

  python -m benchmarks.accelerator_suite                 # one GPU, < 10 min
  python -m benchmarks.accelerator_suite --tiny --results_dir=/tmp/suite
  sh benchmarks/accelerator_suite.sh                     # the same as the first

Sections, in the order they run (`--sections` picks some):

  remat          NFNet-F3's train step at one batch with and without
                 rematerialized blocks: peak device memory of each
                 (`memory_stats()['peak_bytes_in_use']`; on CPU XLA's
                 temporary-buffer size for the step) and the saving. It runs
                 first because a device's peak counter only ever grows: the
                 remat configuration is measured first and released before
                 the other, whose larger peak is then its own.
  f0             NFNet-F0's train step at batch 64 and 128, float32 and
                 bfloat16, at its train resolution (192 px): step time,
                 images/s, compile time and MFU.
  nf_vs_bn       NF-ResNet-50 against the BatchNorm ResNet-50 at one batch,
                 timed step by step in turn: the ratio of their step times.
  effnet_vs_f0   EfficientNet-B0 against NFNet-F0 at one batch and dtype, each
                 at its own train resolution (224 and 192 px): the ratio
                 (F0's figure is the `f0` section's when it ran).
  runner         the runner itself (`train_and_evaluate`) for a few dozen
                 steps on real data (the fake ImageNet of
                 `benchmarks.fake_imagenet`: JPEG decoding, random crops,
                 RandAugment, MixUp/CutMix) and on `synthetic` data of the
                 same shapes (one batch repeated, no host work): the median
                 `train/step_time` of each from the run's metrics file (the
                 compiling first step excluded), their ratio, and the input
                 pipeline's own time per batch. This checks the runner's
                 prefetching: when the pipeline alone is faster than the step,
                 real data should cost at most 5% over synthetic.

Every step timed is the runner's own train step (`benchmarks.train_step`'s
runner over `nfnets.train.step`: AGC, weight decay, EMA, label smoothing,
Nesterov SGD). MFU is the FLOP/s achieved (the FLOPs XLA's cost analysis
counts in the compiled step, which include the optimizer's and element-wise
work, over the median step time) divided by the device's dense peak from
`PEAK_TFLOPS`; it is n/a on a device not in the table (CPUs included).

Every record is one JSON line appended to RESULTS_DIR/accelerator_suite.jsonl
as soon as it is measured, with the device's name and kind, the jax version,
the date and the commit; the table is printed at the end.

Cost on one H100/H200-class GPU (an estimate, not a measurement: no GPU was
available where this was written): compile times dominate. There are 10
train-step compilations (4 F0, 2 F3, 2 ResNet-50, 1 EfficientNet-B0, and
the runner's F0; the second runner run finds the first one's programs in a
persistent compilation cache), plus the runner's initializer and eval step,
and the fake ImageNet's one-off build (13 s on 2 CPU cores for its 600
JPEGs; reused from --fake_imagenet_dir afterwards). Taking XLA's GPU compile
time of a train step as 20-60 s (it grows with depth and with the number of
distinct convolutions to autotune: F3's 48 blocks at the high end,
ResNet-50 at the low; F0's step compiles in 35-41 s on 2 CPU cores with
`python -m benchmarks.train_step --model=nfnet_f0 --batch=8
--image_size=192`) gives 5-8 minutes of compiling; the timed steps
themselves take seconds (F0 at batch 128 is about 5 TFLOP a step). Records
are saved as each is measured, so a run stopped early keeps what it
measured, and `--sections` splits the suite over several commands.

`--tiny` runs every section on CPU-sized models (one stage of one or two
blocks at 1/16 width, 16 px, batch 2-4, 2 timed steps; digits instead of the
fake ImageNet) to check the suite end to end: about 2 minutes on 2 busy CPU
cores, nearly all of it compiling. Its figures say nothing about speed;
give it its own `--results_dir`.

Flags are absl's (`--helpfull` lists them with JAX's `--jax_*` flags, e.g.
`--jax_compilation_cache_dir=DIR` to reuse compiled programs across runs,
which also makes the compile times read as cache loads).
"""
from __future__ import annotations

import datetime
import os
import sys

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # pylint: disable=g-import-not-at-top
from benchmarks import _host as host  # pylint: disable=g-import-not-at-top

# XLA's LLVM optimizations take most of its CPU compile time and buy tiny
# programs little; the tiny mode only checks that everything runs.
_TINY_XLA_FLAG = '--xla_backend_optimization_level=0'

if __name__ == '__main__':
  host.reexec_with_huge_pages()
  if '--tiny' in sys.argv and '--xla_backend_optimization_level' not in (
      os.environ.get('XLA_FLAGS', '')):
    os.environ['XLA_FLAGS'] = ' '.join(
        filter(None, [os.environ.get('XLA_FLAGS'), _TINY_XLA_FLAG]))

# pylint: disable=g-import-not-at-top,g-bad-import-order
import contextlib
import dataclasses
import difflib
import gc
import math
import re
import shutil
import statistics
import tempfile
import time
import traceback
import types
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import flags
import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections

from benchmarks import train_step
from nfnets import configs
from nfnets import data
from nfnets import errors
from nfnets import models
from nfnets.train import metrics as metrics_lib

SECTIONS = ('remat', 'f0', 'nf_vs_bn', 'effnet_vs_f0', 'runner')
RESULTS_FILE = 'accelerator_suite.jsonl'
# The prefetch check's tolerance: real data within 5% of synthetic.
PREFETCH_TOLERANCE = 0.05


# ------------------------------------------------------------ device peaks


@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense peak TFLOP/s of one JAX device (no structured sparsity).

  Attributes:
    bf16: 16-bit matrix units (tensor cores, MXU).
    tf32: TF32 tensor cores (None: the device has none).
    fp32: float32 without matrix units (None: not published for the device).
  """
  bf16: float
  tf32: Optional[float]
  fp32: Optional[float]


# Matched in order against jax's `device_kind` (lower case, e.g. 'nvidia
# h100 80gb hbm3', 'nvidia a100-sxm4-40gb', 'tpu v5 lite'); the first
# pattern found wins. NVIDIA's datasheets quote tensor-core figures "with
# sparsity"; the dense figures used here are half of those.
PEAK_TFLOPS: tuple[tuple[str, Peak], ...] = (
    # H100 datasheet, PCIe column: FP32 51, TF32 756*, BF16 1,513* TFLOPS.
    (r'h100.*pcie', Peak(bf16=756.0, tf32=378.0, fp32=51.0)),
    # H100 datasheet, NVL column: FP32 60, TF32 835*, BF16 1,671* TFLOPS.
    (r'h100.*nvl', Peak(bf16=835.5, tf32=417.5, fp32=60.0)),
    # H100 datasheet, SXM column: FP32 67, TF32 989*, BF16 1,979* TFLOPS;
    # H200 datasheet, SXM column: the same figures.
    (r'h100|h200|gh200', Peak(bf16=989.0, tf32=494.0, fp32=67.0)),
    # A100 datasheet (40 and 80 GB, SXM and PCIe): FP32 19.5, TF32 156
    # (312*), BF16 312 (624*) TFLOPS.
    (r'a100', Peak(bf16=312.0, tf32=156.0, fp32=19.5)),
    # L4 datasheet: FP32 30.3, TF32 120*, BF16 242* TFLOPS ('\b': not L40).
    (r'\bl4\b', Peak(bf16=121.0, tf32=60.0, fp32=30.3)),
    # V100 datasheet, SXM2 column: FP32 15.7, tensor (FP16) 125 TFLOPS. It
    # has no bfloat16 or TF32 tensor cores: the 16-bit column is FP16's, an
    # upper bound bfloat16 cannot reach there.
    (r'v100', Peak(bf16=125.0, tf32=None, fp32=15.7)),
    # Cloud TPU system architecture pages, bf16 per chip: v2 45, v3 123 (two
    # TensorCores, each its own JAX device), v4 275, v5e 197, v5p 459, v6e
    # 918 (one JAX device per chip).
    (r'tpu v2', Peak(bf16=22.5, tf32=None, fp32=None)),
    (r'tpu v3', Peak(bf16=61.5, tf32=None, fp32=None)),
    (r'tpu v4', Peak(bf16=275.0, tf32=None, fp32=None)),
    (r'tpu v5 ?lite|tpu v5e', Peak(bf16=197.0, tf32=None, fp32=None)),
    (r'tpu v5', Peak(bf16=459.0, tf32=None, fp32=None)),
    (r'tpu v6 ?lite|tpu v6e', Peak(bf16=918.0, tf32=None, fp32=None)),
)

# jax_default_matmul_precision values that ask for full float32 products.
_FULL_FP32 = ('highest', 'float32')


def device_peak(device_kind: str, dtype: str,
                matmul_precision: Optional[str] = None
                ) -> tuple[Optional[float], str]:
  """(peak FLOP/s, the column used) for a step computing in `dtype`.

  bfloat16 uses the 16-bit tensor-core / MXU column. For float32 it depends
  on what XLA runs the convolutions and matmuls in: at JAX's default matmul
  precision (`jax_default_matmul_precision` unset) XLA's GPU backend takes
  float32 convolutions and dots to TF32 tensor cores on Ampere and later, so
  the TF32 column applies; the TPU's default is bfloat16 passes on the MXU,
  so the bfloat16 column applies; with 'highest' / 'float32' the float32
  column applies (n/a on TPUs, which publish none). Unknown devices
  (including CPUs) have no peak.

  Args:
    device_kind: `jax.Device.device_kind`.
    dtype: 'float32' or 'bfloat16'.
    matmul_precision: `jax.config.jax_default_matmul_precision`.

  Returns:
    FLOP/s (None when unknown) and the column's name ('bf16', 'tf32',
    'fp32' or 'n/a').
  """
  kind = device_kind.lower()
  peak = next((p for pattern, p in PEAK_TFLOPS if re.search(pattern, kind)),
              None)
  if peak is None:
    return None, 'n/a'
  if dtype == 'bfloat16':
    return peak.bf16 * 1e12, 'bf16'
  full = (matmul_precision or '').lower() in _FULL_FP32
  if kind.startswith('tpu'):
    return (None, 'n/a') if full else (peak.bf16 * 1e12, 'bf16')
  if not full and peak.tf32 is not None:
    return peak.tf32 * 1e12, 'tf32'
  return (peak.fp32 * 1e12 if peak.fp32 else None,
          'fp32' if peak.fp32 else 'n/a')


# ---------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes of every section (`full_plan` or `tiny_plan`).

  `f0_configs` are (batch, dtype) pairs; `overrides` maps a model spec to
  its constructor overrides (tiny depths and widths); an image size of None
  means the model's train resolution.
  """
  f0_configs: tuple[tuple[int, str], ...]
  f0_image_size: Optional[int]
  remat_batch: int
  remat_image_size: Optional[int]
  remat_dtype: str
  pair_batch: int
  pair_image_size: Optional[int]
  pair_dtype: str
  effnet_batch: int
  effnet_dtype: str
  effnet_image_size: Optional[int]
  steps: int
  warmup: int
  runner_batch: int
  runner_image_size: Optional[int]
  runner_eval_image_size: Optional[int]
  runner_steps: int
  runner_log_every: int
  runner_dtype: str
  real_data: str
  overrides: dict[str, dict[str, Any]]
  num_classes: int


def full_plan() -> Plan:
  """The suite's sizes for one H100/H200-class GPU (about 10 minutes)."""
  return Plan(
      f0_configs=((64, 'float32'), (64, 'bfloat16'), (128, 'float32'),
                  (128, 'bfloat16')),
      f0_image_size=None,
      # F3 at 320 px without remat: F0's 205 MiB of XLA temporaries per
      # float32 image at 192 px (on CPU) times 4x the blocks and 2.8x the
      # area is ~2.3 GiB per image in float32, about half in bfloat16, so
      # batch 32 needs ~40-50 GB: it fits an 80 GB device.
      remat_batch=32, remat_image_size=None, remat_dtype='bfloat16',
      pair_batch=128, pair_image_size=224, pair_dtype='bfloat16',
      effnet_batch=128, effnet_dtype='bfloat16', effnet_image_size=None,
      steps=10, warmup=2,
      runner_batch=128, runner_image_size=None, runner_eval_image_size=None,
      runner_steps=40,
      runner_log_every=5, runner_dtype='bfloat16', real_data='fake_imagenet',
      overrides={}, num_classes=1000)


def tiny_plan() -> Plan:
  """CPU-sized sizes: every section runs, each model compiled at most twice.

  One-stage models at 1/16 width (XLA's CPU compile time grows with the
  number of blocks and dominates); F0 at batch 2 in float32 and batch 4 in
  bfloat16 covers both batch sizes and both dtypes in two compilations.
  """
  nf = dict(depth=(1,), widths=(256,), width=0.0625)
  return Plan(
      f0_configs=((2, 'float32'), (4, 'bfloat16')), f0_image_size=16,
      remat_batch=4, remat_image_size=16, remat_dtype='float32',
      pair_batch=4, pair_image_size=16, pair_dtype='float32',
      effnet_batch=4, effnet_dtype='bfloat16', effnet_image_size=16,
      steps=2, warmup=1,
      runner_batch=4, runner_image_size=16, runner_eval_image_size=None,
      runner_steps=6,
      runner_log_every=2, runner_dtype='float32', real_data='digits',
      overrides={
          'nfnet_f0': nf,
          # Two blocks in a stage, so that remat has something to save.
          'nfnet_f3': dict(nf, depth=(2,)),
          'nf_resnet50': nf, 'bn_resnet50': nf,
          'efficientnet_b0': dict(depth=(1,), widths=(16,), width=0.25),
      },
      num_classes=10)


def _train_size(spec: str, size: Optional[int]) -> int:
  if size is not None:
    return size
  name = spec.partition('@')[0]
  return 224 if name == 'bn_resnet50' else models.get_spec(name).train_imsize


# ----------------------------------------------------------------- records


class Suite:
  """Runs sections, saves each record as it is made, and prints the table."""

  def __init__(self, args: types.SimpleNamespace, plan: Plan):
    self.args = args
    self.plan = plan
    self.records: list[dict[str, Any]] = []
    self.path = (None if args.no_save else
                 os.path.join(args.results_dir, RESULTS_FILE))
    device = jax.devices()[0]
    self.device_kind = device.device_kind
    self.common = {
        'benchmark': 'accelerator_suite', 'tiny': args.tiny,
        'device': str(device), 'device_kind': device.device_kind,
        'platform': device.platform, 'jax': jax.__version__,
        'started': _now(), 'commit': train_step._git_commit(),  # pylint: disable=protected-access
        'matmul_precision': jax.config.jax_default_matmul_precision,
        'machine': _common.machine_description(),
    }

  def add(self, section: str, label: str, record: dict[str, Any]) -> dict[
      str, Any]:
    """Completes, saves (at once) and keeps one record."""
    record = {**self.common, **record, 'section': section, 'label': label,
              'timestamp': _now()}
    self.records.append(record)
    if self.path:
      _common.append_result(self.path, record)
    print(f'[{section}] {label}: ' + _summary(record), flush=True)
    return record

  def step_record(self, runner: Any, times: Sequence[float],
                  overrides: dict[str, Any], device_peak_memory: bool = False
                  ) -> dict[str, Any]:
    """`train_step`'s record of a timed runner, with MFU and the overrides.

    Its 'memory_bytes' is XLA's temporary-buffer size for the step, or, with
    `device_peak_memory` on a device that reports one, the allocator's peak
    so far in this process (which only the remat section, running first,
    can attribute to one configuration).
    """
    rec = runner.record(list(times))
    rec['model_overrides'] = dict(overrides)
    peak, column = device_peak(self.device_kind, rec['dtype'],
                               jax.config.jax_default_matmul_precision)
    rec['peak_flops_per_s'], rec['peak_column'] = peak, column
    achieved = rec.get('achieved_flops_per_s')
    rec['mfu'] = achieved / peak if peak and achieved else None
    # On CPU the process's peak RSS would include everything run before.
    peak = device_peak_memory and rec['peak_memory_kind'] == 'device_peak'
    rec['memory_bytes'] = (rec['peak_memory_bytes'] if peak
                           else rec['xla_temp_bytes'])
    rec['memory_kind'] = ('device_peak_bytes_in_use' if peak
                          else 'xla_temp_bytes')
    return rec

  def runner_for(self, spec: str, batch: int, image_size: Optional[int],
                 dtype: str, remat: bool = False
                 ) -> tuple[Any, dict[str, Any]]:
    """A compiled `benchmarks.train_step` runner and its model overrides."""
    size = _train_size(spec, image_size)
    args = train_step.parse_args([
        f'--model={spec}', f'--batch={batch}', f'--image_size={size}',
        f'--dtype={dtype}', f'--num_classes={self.plan.num_classes}',
        f'--steps={self.plan.steps}', f'--warmup={self.plan.warmup}',
        '--no_save'])
    overrides = self.plan.overrides.get(spec, {})
    print(f'compiling {spec} batch {batch} {size} px {dtype}'
          f'{" remat" if remat else ""} ...', flush=True)
    return train_step._Runner(spec, args, remat=remat,  # pylint: disable=protected-access
                              overrides=overrides), overrides


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def _summary(rec: dict[str, Any]) -> str:
  parts = []
  if rec.get('step_s_median') is not None:
    parts.append(f'{rec["step_s_median"] * 1e3:.1f} ms/step')
  if rec.get('compile_s') is not None:
    parts.append(f'compile {rec["compile_s"]:.1f} s')
  if rec.get('error'):
    parts.append(f'error: {rec["error"]}')
  return ', '.join(parts) or 'done'


def _interleaved_times(runners: Sequence[Callable[[], None]], steps: int,
                       warmup: int) -> list[list[float]]:
  """Per-step seconds of each runner, taking turns step by step (so that a
  drift in machine load affects them alike)."""
  for r in runners:
    _common.time_calls(r, steps=0, warmup=warmup)
  times: list[list[float]] = [[] for _ in runners]
  for _ in range(steps):
    for t, r in zip(times, runners):
      t.extend(_common.time_calls(r, steps=1, warmup=0))
  return times


# ---------------------------------------------------------------- sections


def section_remat(suite: Suite) -> None:
  """NFNet-F3 with and without remat: peak memory and the saving."""
  p = suite.plan

  def measure(remat: bool) -> dict[str, Any]:
    runner, overrides = suite.runner_for('nfnet_f3', p.remat_batch,
                                         p.remat_image_size, p.remat_dtype,
                                         remat=remat)
    times = _common.time_calls(runner, p.steps, p.warmup)
    rec = suite.step_record(runner, times, overrides, device_peak_memory=True)
    # Its buffers go before the next configuration allocates its own.
    del runner
    gc.collect()
    return rec

  # Remat first: the device's peak counter never goes down (module docstring).
  with_remat = measure(True)
  try:
    without = measure(False)
  except Exception:
    suite.add('remat', _step_label(with_remat), with_remat)
    raise
  if without['memory_kind'] == 'device_peak_bytes_in_use':
    # The counter includes the remat run: a figure equal to it may be the
    # remat run's own peak, making the saving read as (at least) zero.
    without['memory_peak_is_own'] = (without['memory_bytes'] >
                                     with_remat['memory_bytes'])
  with_remat['memory_saving'] = 1.0 - (with_remat['memory_bytes'] /
                                       without['memory_bytes'])
  with_remat['step_time_ratio'] = (with_remat['step_s_median'] /
                                   without['step_s_median'])
  with_remat['compare_to'] = 'nfnet_f3 without remat'
  for rec in (without, with_remat):
    suite.add('remat', _step_label(rec), rec)


def _step_label(rec: dict[str, Any]) -> str:
  label = (f'{rec["model"]} b{rec["batch"]} {rec["image_size"]}px '
           f'{rec["dtype"]}')
  return label + (' remat' if rec.get('remat') else '')


def section_f0(suite: Suite) -> None:
  """NFNet-F0 at each batch and dtype of the plan."""
  p = suite.plan
  for batch, dtype in p.f0_configs:
    runner, overrides = suite.runner_for('nfnet_f0', batch, p.f0_image_size,
                                         dtype)
    times = _common.time_calls(runner, p.steps, p.warmup)
    rec = suite.step_record(runner, times, overrides)
    # Its buffers go before the next configuration allocates its own.
    del runner
    gc.collect()
    suite.add('f0', _step_label(rec), rec)


def _pair(suite: Suite, section: str, specs: Sequence[str], batch: int,
          sizes: Sequence[Optional[int]], dtype: str,
          reuse: Optional[dict[str, Any]] = None) -> None:
  """Times specs[0] against specs[1] (or against the `reuse` record)."""
  p = suite.plan
  runners, overrides = [], []
  for spec, size in zip(specs, sizes):
    runner, ov = suite.runner_for(spec, batch, size, dtype)
    runners.append(runner)
    overrides.append(ov)
  times = _interleaved_times(runners, p.steps, p.warmup)
  recs = [suite.step_record(r, t, ov)
          for r, t, ov in zip(runners, times, overrides)]
  runners.clear()
  gc.collect()
  base = recs[1] if len(recs) > 1 else reuse
  first = recs[0]
  first['compare_to'] = _step_label(base)
  first['step_time_ratio'] = first['step_s_median'] / base['step_s_median']
  first['interleaved'] = len(recs) > 1
  for rec in (recs[1:] if len(recs) > 1 else []):
    suite.add(section, _step_label(rec), rec)
  suite.add(section, _step_label(first), first)


def section_nf_vs_bn(suite: Suite) -> None:
  """NF-ResNet-50 against the BatchNorm ResNet-50, same batch and size."""
  p = suite.plan
  _pair(suite, 'nf_vs_bn', ('nf_resnet50', 'bn_resnet50'), p.pair_batch,
        (p.pair_image_size,) * 2, p.pair_dtype)


def section_effnet_vs_f0(suite: Suite) -> None:
  """EfficientNet-B0 against NFNet-F0, each at its train resolution."""
  p = suite.plan
  f0_size = _train_size('nfnet_f0', p.f0_image_size)
  f0 = next((r for r in suite.records
             if r['section'] == 'f0' and r['batch'] == p.effnet_batch
             and r['dtype'] == p.effnet_dtype and r['image_size'] == f0_size
             and not r.get('error')), None)
  if f0 is not None:
    _pair(suite, 'effnet_vs_f0', ('efficientnet_b0',), p.effnet_batch,
          (p.effnet_image_size,), p.effnet_dtype, reuse=f0)
  else:
    _pair(suite, 'effnet_vs_f0', ('efficientnet_b0', 'nfnet_f0'),
          p.effnet_batch, (p.effnet_image_size, p.f0_image_size),
          p.effnet_dtype)


# ------------------------------------------------------------------ runner


def runner_config(plan: Plan, dataset: str,
                  data_dir: Optional[str] = None) -> ml_collections.ConfigDict:
  """NFNet-F0's ImageNet recipe for a short timed run of the runner.

  `dataset` 'imagenet2012' (the recipe's pipeline, reading `data_dir`),
  'digits', or 'synthetic' (shaped like the others: same image size, classes
  and MixUp/CutMix targets, no RandAugment, which it refuses).
  """
  config = configs.nfnet_config('nfnet_f0')
  if plan.overrides.get('nfnet_f0'):
    config.model.kwargs.update(plan.overrides['nfnet_f0'])
  size = _train_size('nfnet_f0', plan.runner_image_size)
  recipe = config.data
  if dataset == 'imagenet2012':
    config.data.data_dir = data_dir
    # The fake ImageNet is a few hundred images: hold all of them.
    config.data.shuffle_buffer = 1024
  else:
    config.data = data.default_config(dataset)
    config.data.num_classes = (plan.num_classes if dataset == 'synthetic'
                               else None)
    if dataset == 'digits':
      config.data.randaugment_layers = recipe.randaugment_layers
      config.data.randaugment_magnitude = recipe.randaugment_magnitude
    for field in ('mixup_alpha', 'cutmix_alpha'):
      config.data[field] = recipe[field]
  config.data.image_size = size
  # One eval size for both data sets, so that the eval step is one program.
  config.data.eval_image_size = plan.runner_eval_image_size or size
  tc = config.training
  tc.batch_size = plan.runner_batch
  tc.num_epochs = None
  tc.num_steps = plan.runner_steps
  tc.log_every = plan.runner_log_every
  tc.compute_dtype = plan.runner_dtype
  config.optimizer.warmup_steps = 2
  # Few eval batches: the synthetic eval split has 2,048 examples.
  config.eval.batch_size = max(2 * plan.runner_batch, 256)
  config.eval.every_steps = 0
  config.checkpoint.every_steps = 0
  return config


def _real_config(suite: Suite) -> tuple[ml_collections.ConfigDict, str]:
  """The runner's real-data config and a description of the data."""
  p = suite.plan
  if p.real_data == 'digits':
    return runner_config(p, 'digits'), 'digits (sklearn, 1437 train images)'
  from benchmarks import fake_imagenet  # pylint: disable=g-import-not-at-top
  root = suite.args.fake_imagenet_dir or os.path.join(
      tempfile.gettempdir(), 'nfnets_fake_imagenet')
  start = time.perf_counter()
  fake = fake_imagenet.build(root, num_classes=suite.args.fake_classes,
                             train_per_class=suite.args.fake_per_class,
                             extract=False)
  print(f'fake ImageNet in {root}: {time.perf_counter() - start:.0f} s',
        flush=True)
  stats = fake.stats
  return runner_config(p, 'imagenet2012', str(fake.data_dir)), (
      f'fake ImageNet ({stats["count"]} JPEGs, mean '
      f'{stats["mean_width"]:.0f}x{stats["mean_height"]:.0f} px, '
      f'{stats["mean_bytes"] / 1e3:.0f} KB)')


def pipeline_seconds_per_batch(config: ml_collections.ConfigDict,
                               batches: int, warmup: int = 3) -> float:
  """The input pipeline alone: median seconds per host batch (no device)."""
  stream = data.build_train(config.data, batch_size=config.training.batch_size,
                            seed=config.training.seed)
  times = _common.time_calls(lambda: next(stream), steps=batches,
                             warmup=warmup)
  return statistics.median(times)


@contextlib.contextmanager
def _compilation_cache_if_unset() -> Iterator[Optional[str]]:
  """A temporary persistent compilation cache, unless one is configured.

  The synthetic run then loads the programs the real-data run compiled
  (the train and eval steps do not depend on where the batches come from).
  """
  if jax.config.jax_compilation_cache_dir:
    yield jax.config.jax_compilation_cache_dir
    return
  path = tempfile.mkdtemp(prefix='nfnets_suite_cache_')
  jax.config.update('jax_compilation_cache_dir', path)
  compilation_cache.reset_cache()
  try:
    yield path
  finally:
    jax.config.update('jax_compilation_cache_dir', None)
    compilation_cache.reset_cache()
    shutil.rmtree(path, ignore_errors=True)


def timed_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs `train_and_evaluate` in a fresh work directory; its step times."""
  from nfnets import train  # pylint: disable=g-import-not-at-top
  workdir = tempfile.mkdtemp(prefix='nfnets_suite_run_')
  try:
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    laps = [r['train/step_time'] for r in metrics_lib.read_metrics(workdir)
            if 'train/step_time' in r]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  if not laps:
    raise RuntimeError('The run logged no train/step_time; raise '
                       '--runner_steps above twice the log interval.')
  return {'step_s_median': statistics.median(laps), 'step_s_laps': laps,
          'run_wall_s': wall,
          'images_per_s': config.training.batch_size / statistics.median(laps)}


def section_runner(suite: Suite) -> None:
  """The runner on real and on synthetic data: the prefetch check."""
  p = suite.plan
  real, described = _real_config(suite)
  synthetic = runner_config(p, 'synthetic')
  synthetic.data.num_classes = data.num_classes(real.data)
  pipeline_s = pipeline_seconds_per_batch(real, batches=p.steps * 2)
  with _compilation_cache_if_unset():
    print(f'runner: {p.runner_steps} steps on {described} ...', flush=True)
    real_run = timed_run(real)
    print(f'runner: {p.runner_steps} steps on synthetic data ...',
          flush=True)
    synthetic_run = timed_run(synthetic)
  common = {
      'model': 'nfnet_f0', 'batch': p.runner_batch,
      'image_size': real.data.image_size, 'dtype': p.runner_dtype,
      'steps': p.runner_steps, 'log_every': p.runner_log_every,
      'model_overrides': dict(p.overrides.get('nfnet_f0', {})),
  }
  ratio = real_run['step_s_median'] / synthetic_run['step_s_median']
  pipeline_faster = pipeline_s < synthetic_run['step_s_median']
  verdict = ('pass' if ratio <= 1 + PREFETCH_TOLERANCE else 'fail'
             ) if pipeline_faster else 'n/a (input-bound)'
  suite.add('runner', f'synthetic b{p.runner_batch}',
            {**common, **synthetic_run, 'data': 'synthetic'})
  suite.add('runner', f'real b{p.runner_batch}', {
      **common, **real_run, 'data': described,
      'pipeline_s_per_batch': pipeline_s,
      'pipeline_faster_than_step': pipeline_faster,
      'step_time_ratio': ratio, 'compare_to': 'synthetic',
      'prefetch_check': verdict, 'prefetch_tolerance': PREFETCH_TOLERANCE,
  })


_SECTION_FUNCTIONS = {
    'remat': section_remat, 'f0': section_f0, 'nf_vs_bn': section_nf_vs_bn,
    'effnet_vs_f0': section_effnet_vs_f0, 'runner': section_runner,
}


# ------------------------------------------------------------------- table


def _fmt(value: Any, kind: str) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return '-'
  if kind == 'ms':
    return f'{value * 1e3:.1f}'
  if kind == 'pct':
    return f'{value * 100:.1f}%'
  if kind == 'MiB':
    return (f'{value / 2**20:.0f}' if value >= 10 * 2**20
            else f'{value / 2**20:.2f}')
  if kind == 'f1':
    return f'{value:.1f}'
  return str(value)


def _versus(rec: dict[str, Any]) -> str:
  parts = []
  if rec.get('memory_saving') is not None:
    parts.append(f'memory {-rec["memory_saving"] * 100:+.0f}%')
  if rec.get('step_time_ratio') is not None:
    parts.append(f'step x{rec["step_time_ratio"]:.3f} of '
                 f'{rec["compare_to"]}')
  if rec.get('pipeline_s_per_batch') is not None:
    parts.append(f'pipeline {rec["pipeline_s_per_batch"] * 1e3:.1f} ms/batch; '
                 f'prefetch check {rec["prefetch_check"]}')
  if rec.get('error'):
    parts.append(f'error: {rec["error"]}')
  return '; '.join(parts)


def table_rows(records: Sequence[dict[str, Any]]) -> list[list[str]]:
  """The printed table, header first."""
  header = ['section', 'configuration', 'step ms', 'img/s', 'compile s',
            'MFU', 'memory MiB', 'versus']
  rows = [header]
  for r in records:
    memory = r.get('memory_bytes')
    rows.append([r['section'], r['label'], _fmt(r.get('step_s_median'), 'ms'),
                 _fmt(r.get('images_per_s'), 'f1'),
                 _fmt(r.get('compile_s'), 'f1'), _fmt(r.get('mfu'), 'pct'),
                 _fmt(memory, 'MiB'), _versus(r)])
  return rows


def print_table(records: Sequence[dict[str, Any]]) -> None:
  """Prints the records as one aligned table."""
  rows = table_rows(records)
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
  for row in rows:
    print('  '.join([v.ljust(w) if i < 2 else v.rjust(w)
                     for i, (v, w) in enumerate(zip(row, widths))] +
                    [row[-1]]).rstrip())
  sys.stdout.flush()


# --------------------------------------------------------------------- run


class SectionError(errors.UserError, ValueError):
  """--sections names a section the suite does not have."""


def parse_sections(text: str) -> list[str]:
  """The sections of a comma-separated list, checked against `SECTIONS`."""
  sections = [s.strip() for s in text.split(',') if s.strip()]
  for name in sections:
    if name not in SECTIONS:
      close = difflib.get_close_matches(name, SECTIONS, n=1)
      hint = f'did you mean {close[0]!r}? ' if close else ''
      raise SectionError(f'Unknown section {name!r} in --sections; {hint}'
                         f'sections: {", ".join(SECTIONS)}.')
  if not sections:
    raise SectionError(f'--sections is empty; sections: '
                       f'{", ".join(SECTIONS)}.')
  return sections


def run(args: types.SimpleNamespace) -> list[dict[str, Any]]:
  """Runs the sections `args` asks for; returns (and saves) the records."""
  plan = tiny_plan() if args.tiny else full_plan()
  if args.real_data:
    plan = dataclasses.replace(plan, real_data=args.real_data)
  for field in ('runner_steps', 'runner_batch', 'runner_image_size',
                'runner_eval_image_size'):
    if getattr(args, field):
      plan = dataclasses.replace(plan, **{field: getattr(args, field)})
  sections = parse_sections(args.sections)
  suite = Suite(args, plan)
  print(f'{suite.device_kind} ({jax.default_backend()}), jax '
        f'{jax.__version__}; sections: {", ".join(sections)}', flush=True)
  start = time.perf_counter()
  for name in SECTIONS:
    if name not in sections:
      continue
    began = time.perf_counter()
    try:
      _SECTION_FUNCTIONS[name](suite)
    except Exception as e:  # pylint: disable=broad-except
      # One failed section (an out-of-memory batch, missing data) leaves
      # the others' records; --fail_fast stops instead.
      if args.fail_fast:
        raise
      traceback.print_exc()
      suite.add(name, 'failed', {'error': f'{type(e).__name__}: '
                                          f'{str(e).splitlines()[0][:300]}'})
    print(f'[{name}] {time.perf_counter() - began:.0f} s', flush=True)
  print(f'\nsuite: {time.perf_counter() - start:.0f} s on '
        f'{suite.device_kind}' + (f'; records in {suite.path}'
                                  if suite.path else ''))
  print_table(suite.records)
  return suite.records


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  define = _common.definer(flag_values)
  define('bool', 'tiny', False,
         'CPU-sized models, 16 px, batch 2-4, 2 steps: checks the suite.')
  define('string', 'sections', ','.join(SECTIONS),
         f'Comma-separated sections to run, of: {", ".join(SECTIONS)}.')
  define('string', 'results_dir', _common.RESULTS_DIR,
         f'Directory whose {RESULTS_FILE} the records are appended to.')
  define('bool', 'no_save', False, 'Do not save the records.')
  define('enum', 'real_data', None,
         'Real data of the runner section (default: fake_imagenet, or '
         'digits with --tiny).', enum_values=['fake_imagenet', 'digits'])
  define('string', 'fake_imagenet_dir', None,
         'Where the fake ImageNet is built, or reused from (default: '
         'nfnets_fake_imagenet in the temp directory).')
  define('integer', 'fake_classes', 10, 'Classes of the fake ImageNet.')
  define('integer', 'fake_per_class', 50,
         'Train JPEGs per class of the fake ImageNet.')
  define('integer', 'runner_steps', None,
         "Steps of each runner run (default: the plan's).")
  define('integer', 'runner_batch', None,
         "Batch of the runner runs (default: the plan's).")
  define('integer', 'runner_image_size', None,
         "Train resolution of the runner runs (default: the plan's).")
  define('integer', 'runner_eval_image_size', None,
         'Eval resolution of the runner runs (default: their train one).')
  define('bool', 'fail_fast', False,
         'Stop at the first failing section instead of recording it.')


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  return _common.parse_flags(define_flags, argv)


if __name__ == '__main__':
  _common.run_command_line(define_flags, run)
