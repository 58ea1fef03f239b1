r"""Train-step speed and memory of a model on the machine at hand.

Measures, per configuration: compile time, steady-state seconds per step
(median after warm-up, each step blocked on), images per second, the FLOPs
XLA's cost analysis reports for the compiled step and the FLOP/s achieved,
XLA's temporary-buffer size for the step and the peak memory (device allocator
stats, or process peak RSS on CPU). Each run appends one JSON line to
`benchmarks/results/train_step.jsonl` and prints a table.

  python -m benchmarks.train_step --model nfnet_f0 --batch 4 --image-size 128
  python -m benchmarks.train_step --model nf_resnet50 --compare bn_resnet50 \
      --batch 8 --image-size 128
  python -m benchmarks.train_step --model nfnet_f0,nfnet_f0@native --batch 4
  python -m benchmarks.train_step --model nfnet_f0 --batch 8 --sam_rho 0.05 \
      --sam_compare

`--compare B` times B interleaved step by step with each `--model` in the same
process and prints the ratio of their median step times. Model specs are
registry names with an optional `@plain` / `@native` / `@split` / `@im2col`
suffix; `bn_resnet50` is the BatchNorm baseline (see `_common`).

The step is the runner's own (`nfnets.train.step.make_train_step`) on the
ImageNet recipe's config: label-smoothed cross-entropy, AGC (0.01, classifier
exempt), weight decay 2e-5, Nesterov SGD, the EMA of the weights, the train
state donated, no host round trip inside the step. `--no_agc`,
`--no_weight_decay`, `--no_ema` and `--no_label_smoothing` switch parts off
for comparisons; each record lists the parts that were on. `--sam_rho`
(with `--sam_batch_fraction`) adds SAM's ascent pass; the record keeps both,
and `--sam_compare` times each model with SAM off too, interleaved, and
prints the ratio. `--dtype bfloat16` computes in bfloat16 with float32 master
weights, as the runner does.

Flags are absl's (`--helpfull` lists them with JAX's `--jax_*` flags); the
dashed spellings `--image-size 128`, `--no-agc` work too.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import _common  # pylint: disable=g-import-not-at-top
else:
  from benchmarks import _common  # pylint: disable=g-import-not-at-top
from benchmarks import _host as host  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  host.reexec_with_huge_pages()
  _common.set_host_device_count(sys.argv)

# pylint: disable=g-import-not-at-top,g-bad-import-order
import functools
import statistics
import time
import types
from typing import Any, Optional, Sequence

from absl import flags
import jax
import ml_collections

from nfnets.train import config as train_config
from nfnets.train import optimizer as train_optimizer
from nfnets.train import state as state_lib
from nfnets.train import step as step_lib

# Length of the learning-rate schedule; a benchmark runs far fewer steps.
_SCHEDULE_STEPS = 100_000


STEP_PARTS = ('agc', 'weight_decay', 'ema', 'label_smoothing')


def step_config(args: types.SimpleNamespace) -> ml_collections.ConfigDict:
  """The runner's config for the benchmarked step, parts switched per `args`.

  The ImageNet recipe (`nfnets.train.config.base_config`) at the benchmark's
  batch, resolution, classes and compute dtype; `--no-PART` flags set that
  part's strength to zero, which the optimizer and step skip.
  """
  config = train_config.base_config()
  config.data.image_size = args.image_size
  config.data.num_classes = args.num_classes
  config.training.batch_size = args.batch
  config.training.compute_dtype = args.dtype
  if args.no_agc:
    config.optimizer.clipping = 0.0
  if args.no_weight_decay:
    config.optimizer.weight_decay = 0.0
  if args.no_ema:
    config.training.ema_decay = 0.0
  if args.no_label_smoothing:
    config.training.label_smoothing = 0.0
  config.optimizer.sam_rho = args.sam_rho
  config.optimizer.sam_batch_fraction = args.sam_batch_fraction
  return config


def step_parts(config: ml_collections.ConfigDict) -> dict[str, bool]:
  """Which parts of the step a config has on (recorded with each figure)."""
  return {'agc': config.optimizer.clipping > 0,
          'weight_decay': config.optimizer.weight_decay > 0,
          'ema': config.training.ema_decay > 0,
          'label_smoothing': config.training.label_smoothing > 0}


class _Runner:
  """One configuration: initialised, compiled, and steppable.

  `overrides` are further model constructor arguments (`_common.build_model`),
  e.g. a shallow depth for a CPU-sized run.
  """

  def __init__(self, spec: str, args: types.SimpleNamespace,
               remat: bool = False,
               overrides: Optional[dict[str, Any]] = None):
    self.spec = spec
    self.args = args
    self.remat = remat
    self.model = _common.build_model(spec, args.num_classes, args.width,
                                     remat=remat, overrides=overrides)
    devices = jax.devices()[:args.devices]
    if len(devices) < args.devices:
      raise ValueError(f'Asked for {args.devices} devices, have {len(devices)}.')
    if args.batch % args.devices:
      raise ValueError('--batch must divide by --devices.')
    mesh = state_lib.make_mesh(devices)
    replicated = state_lib.replicated(mesh)
    batch_sharding = state_lib.batch_sharded(mesh)
    self.config = step_config(args)
    images, labels = _common.synthetic_batch(args.batch, args.image_size,
                                             args.num_classes)
    self.batch = jax.device_put({'images': images, 'labels': labels},
                                batch_sharding)
    # The learning rate sits at its peak from the first step (no warmup),
    # as it does for most of a real run.
    optimizer = train_optimizer.from_config(
        self.config.optimizer, batch_size=args.batch,
        total_steps=_SCHEDULE_STEPS, warmup_steps=0)
    state = jax.jit(
        functools.partial(state_lib.init_train_state, self.config,
                          self.model.fwd, optimizer),
        out_shardings=replicated)(jax.random.PRNGKey(0))
    self.trace_count = [0]
    step = step_lib.make_train_step(self.config, self.model.fwd, optimizer,
                                    mesh)

    def counted(state, batch):
      self.trace_count[0] += 1
      return step(state, batch)

    self.step = step_lib.compile_train_step(counted, mesh)
    start = time.perf_counter()
    self.compiled = self.step.lower(state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.state = state
    self.metrics = None

  def __call__(self) -> None:
    self.state, self.metrics = self.step(self.state, self.batch)
    jax.block_until_ready(self.state)

  def record(self, times: list[float]) -> dict[str, Any]:
    a = self.args
    rec: dict[str, Any] = {
        'benchmark': 'train_step', 'model': self.spec, 'batch': a.batch,
        'image_size': a.image_size, 'dtype': a.dtype, 'devices': a.devices,
        'width': a.width, 'remat': self.remat,
        'step': 'nfnets.train.step', 'step_parts': step_parts(self.config),
        'sam_rho': a.sam_rho, 'sam_batch_fraction': a.sam_batch_fraction,
        'steps': a.steps, 'warmup': a.warmup,
        'compile_s': self.compile_s, 'trace_count': self.trace_count[0],
        'final_loss': float(self.metrics['loss']),
    }
    rec.update(_common.summarize(times, a.batch))
    rec.update(_common.compiled_stats(self.compiled))
    if rec.get('xla_flops'):
      rec['achieved_flops_per_s'] = rec['xla_flops'] / rec['step_s_median']
    rec['peak_memory_bytes'], rec['peak_memory_kind'] = (
        _common.peak_memory_bytes())
    return rec


def _git_commit() -> Optional[str]:
  try:
    return subprocess.run(
        ['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
        text=True, check=True,
        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except Exception:
    return None


def run(args: types.SimpleNamespace) -> list[dict[str, Any]]:
  """Runs every configuration in `args`; returns (and saves) the records."""
  specs = [s for s in args.model.split(',') if s]
  configs = [(s, False) for s in specs]
  if args.remat_compare:
    configs += [(s, True) for s in specs]
  elif args.remat:
    configs = [(s, True) for s in specs]
  if args.compare:
    configs.append((args.compare, False))
  if args.sam_compare and (args.compare or args.sam_rho <= 0):
    raise SystemExit('--sam_compare needs --sam_rho > 0 and no --compare.')
  runners = []
  for spec, remat in configs:
    print(f'compiling {spec}{" (remat)" if remat else ""} ...', flush=True)
    runners.append(_Runner(spec, args, remat))
  if args.sam_compare:
    no_sam = types.SimpleNamespace(**{**vars(args), 'sam_rho': 0.0})
    for spec, remat in configs:
      print(f'compiling {spec}{" (remat)" if remat else ""} without SAM ...',
            flush=True)
      runners.append(_Runner(spec, no_sam, remat))
  for r in runners:
    _common.time_calls(r, steps=0, warmup=args.warmup)
  # Interleaved: every step runs each configuration once, so slow drift in
  # machine load affects all of them alike.
  times: list[list[float]] = [[] for _ in runners]
  faults: list[list[int]] = [[] for _ in runners]
  for _ in range(args.steps):
    for i, r in enumerate(runners):
      faults_before = _common.minor_page_faults()
      start = time.perf_counter()
      r()
      times[i].append(time.perf_counter() - start)
      faults[i].append(_common.minor_page_faults() - faults_before)
  machine = _common.machine_description()
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')
  commit = _git_commit()
  records = []
  for r, t, f in zip(runners, times, faults):
    rec = r.record(t)
    rec.update(machine=machine, timestamp=stamp, commit=commit)
    # Host page faults taken by a step: fresh 4 KiB pages for XLA's buffers
    # cost kernel time on CPU (see nfnets.host).
    rec['page_faults_per_step'] = int(statistics.median(f)) if f else 0
    records.append(rec)
  if args.compare:
    base = records[-1]
    for rec in records[:-1]:
      rec['compare_to'] = base['model']
      rec['step_time_ratio'] = rec['step_s_median'] / base['step_s_median']
  if args.sam_compare:
    half = len(records) // 2
    for rec, base in zip(records[:half], records[half:]):
      rec['sam_step_time_ratio'] = rec['step_s_median'] / base['step_s_median']
  if not args.no_save:
    for rec in records:
      _common.append_result(args.results, rec)
  _common.print_table(records)
  for rec in records:
    if 'step_time_ratio' in rec:
      print(f'{rec["model"]} / {rec["compare_to"]} step time: '
            f'{rec["step_time_ratio"]:.3f}')
    if 'sam_step_time_ratio' in rec:
      print(f'{rec["model"]} with / without SAM step time: '
            f'{rec["sam_step_time_ratio"]:.3f}')
  print('minor page faults per step: ' + ', '.join(
      f'{rec["model"]} {rec["page_faults_per_step"]}' for rec in records) +
        f' (GLIBC_TUNABLES={machine["glibc_tunables"] or "unset"})')
  print(f'backend {machine["backend"]} ({machine["device_kind"]}), '
        f'{machine["cpu_count"]} CPUs ({machine["cpu_model"]}), jax {machine["jax"]}; '
        f'compiled once per config: '
        f'{all(rec["trace_count"] == 1 for rec in records)}')
  return records


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  define = _common.definer(flag_values)
  define('string', 'model', 'nfnet_f0', 'Comma-separated model specs.')
  define('string', 'compare', '',
         'A model spec timed interleaved with each --model.')
  define('integer', 'batch', 4, 'Global batch size.')
  define('integer', 'image_size', None,
         "Default: the first model's train_imsize (224 for bn_resnet50).")
  define('enum', 'dtype', 'float32', 'Compute dtype.',
         enum_values=['float32', 'bfloat16'])
  define('integer', 'devices', 1, 'Devices to shard the batch over.')
  define('float', 'width', None, 'Width multiplier override (NF models).')
  define('integer', 'num_classes', 1000, 'Classifier outputs.')
  for part in STEP_PARTS:
    define('bool', f'no_{part}', False,
           f"Switch the step's {part.replace('_', ' ')} off.")
  define('float', 'sam_rho', 0.0,
         "SAM's ascent radius; > 0 adds SAM's ascent pass to the step.")
  define('float', 'sam_batch_fraction', 1.0,
         "Fraction of each device's shard SAM's ascent pass uses.")
  define('bool', 'sam_compare', False,
         'Also time each model with SAM off, interleaved; print the ratio.')
  define('integer', 'steps', 5, 'Timed steps per configuration.')
  define('integer', 'warmup', 1, 'Untimed steps per configuration first.')
  define('bool', 'remat', False, 'Rematerialize each residual block.')
  define('bool', 'remat_compare', False,
         'Run each model with and without remat.')
  define('string', 'results',
         os.path.join(_common.RESULTS_DIR, 'train_step.jsonl'),
         'JSON lines file the records are appended to.')
  define('bool', 'no_save', False, 'Do not append the records.')


def finish_args(args: types.SimpleNamespace) -> types.SimpleNamespace:
  """Fills in what defaults to the model's own values (--image_size)."""
  if args.image_size is None:
    name = args.model.split(',')[0].partition('@')[0]
    args.image_size = (224 if name == 'bn_resnet50' else
                       _common.models.get_spec(name).train_imsize)
  return args


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  return finish_args(_common.parse_flags(define_flags, argv))


if __name__ == '__main__':
  _common.run_command_line(define_flags, lambda args: run(finish_args(args)))
