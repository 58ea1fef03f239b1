r"""Eval forward-pass speed and memory of a model on the machine at hand.

The same figures as `train_step.py` (compile time, median seconds per batch,
images per second, XLA FLOPs and achieved FLOP/s, XLA temp buffers, peak
memory), for `forward(images, is_training=False)`. One JSON line per
configuration is appended to `benchmarks/results/inference.jsonl`.

  python -m benchmarks.inference --model nf_resnet50,nf_resnet50@prestandardized \
      --compare nf_resnet50@plain --batch 8 --image-size 160

A spec with `@prestandardized` runs on parameters exported once by
`layers.standardize_conv_params` (Scaled WS folded into the kernels), which is
how evaluation should run; `@plain` is the same network with unstandardized
convolutions, the floor that pre-standardized inference should reach.
`--compare` times configurations interleaved batch by batch and prints ratios.
Flags are absl's (`--helpfull` lists them with JAX's `--jax_*` flags); the
dashed spellings `--image-size 160`, `--no-save` work too.
"""
from __future__ import annotations

import datetime
import os
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
import time
import types
from typing import Any, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nfnets import layers


class _Runner:
  """One eval configuration: initialised, compiled, and callable."""

  def __init__(self, spec: str, args: types.SimpleNamespace):
    self.spec, self.args = spec, args
    base_spec = spec.partition('@')[0]
    prestandardized = spec.endswith('@prestandardized')
    devices = jax.devices()[:args.devices]
    mesh = Mesh(np.array(devices), ('data',))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P('data'))
    images, _ = _common.synthetic_batch(args.batch, args.image_size,
                                        args.num_classes)
    self.images = jax.device_put(images, batch_sharding)
    # Parameters are initialised for the standard (WS) model; the
    # pre-standardized run exports them, as evaluation would after loading.
    init_model = _common.build_model(
        base_spec if prestandardized else spec, args.num_classes, args.width)
    params, self.state = jax.jit(
        lambda x: init_model.fwd.init(jax.random.PRNGKey(0), x,
                                      is_training=False),
        out_shardings=replicated)(self.images[:1])
    if prestandardized:
      params = jax.jit(layers.standardize_conv_params,
                       out_shardings=replicated)(params)
    self.model = _common.build_model(spec, args.num_classes, args.width)
    dtype = jnp.dtype(args.dtype)
    self.params = _common.cast_floats(params, dtype)

    def forward(params, state, images):
      logits, _ = self.model.fwd.apply(params, state, None,
                                       images.astype(dtype), is_training=False)
      return logits.astype(jnp.float32)

    self.fn = jax.jit(forward, in_shardings=(replicated, replicated,
                                             batch_sharding),
                      out_shardings=batch_sharding)
    start = time.perf_counter()
    self.compiled = self.fn.lower(self.params, self.state,
                                  self.images).compile()
    self.compile_s = time.perf_counter() - start
    self.logits = None

  def __call__(self) -> None:
    self.logits = jax.block_until_ready(
        self.compiled(self.params, self.state, self.images))

  def record(self, times: list[float]) -> dict[str, Any]:
    a = self.args
    rec: dict[str, Any] = {
        'benchmark': 'inference', 'model': self.spec, 'batch': a.batch,
        'image_size': a.image_size, 'dtype': a.dtype, 'devices': a.devices,
        'width': a.width, 'steps': a.steps, 'warmup': a.warmup,
        'compile_s': self.compile_s,
    }
    rec.update(_common.summarize(times, a.batch))
    rec.update(_common.compiled_stats(self.compiled))
    if rec.get('xla_flops'):
      rec['achieved_flops_per_s'] = rec['xla_flops'] / rec['step_s_median']
    rec['peak_memory_bytes'], rec['peak_memory_kind'] = (
        _common.peak_memory_bytes())
    return rec


def run(args: types.SimpleNamespace) -> list[dict[str, Any]]:
  """Runs every configuration in `args`; returns (and saves) the records."""
  specs = [s for s in args.model.split(',') if s]
  if args.compare:
    specs.append(args.compare)
  runners = []
  for spec in specs:
    print(f'compiling {spec} ...', flush=True)
    runners.append(_Runner(spec, args))
  for r in runners:
    _common.time_calls(r, steps=0, warmup=args.warmup)
  times: list[list[float]] = [[] for _ in runners]
  for _ in range(args.steps):
    for i, r in enumerate(runners):
      start = time.perf_counter()
      r()
      times[i].append(time.perf_counter() - start)
  machine = _common.machine_description()
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')
  records = []
  for r, t in zip(runners, times):
    rec = r.record(t)
    rec.update(machine=machine, timestamp=stamp)
    records.append(rec)
  if args.compare:
    base = records[-1]
    for rec in records[:-1]:
      rec['compare_to'] = base['model']
      rec['step_time_ratio'] = rec['step_s_median'] / base['step_s_median']
  if not args.no_save:
    for rec in records:
      _common.append_result(args.results, rec)
  _common.print_table(records)
  for rec in records:
    if 'step_time_ratio' in rec:
      print(f'{rec["model"]} / {rec["compare_to"]} batch time: '
            f'{rec["step_time_ratio"]:.3f}')
  print(f'backend {machine["backend"]} ({machine["device_kind"]}), '
        f'{machine["cpu_count"]} CPUs ({machine["cpu_model"]}), jax {machine["jax"]}')
  return records


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  define = _common.definer(flag_values)
  define('string', 'model', 'nfnet_f0', 'Comma-separated model specs.')
  define('string', 'compare', '',
         'A model spec timed interleaved with each --model.')
  define('integer', 'batch', 8, 'Global batch size.')
  define('integer', 'image_size', None,
         "Default: the first model's test_imsize (224 for bn_resnet50).")
  define('enum', 'dtype', 'float32', 'Compute dtype of the parameters.',
         enum_values=['float32', 'bfloat16'])
  define('integer', 'devices', 1, 'Devices to shard the batch over.')
  define('float', 'width', None, 'Width multiplier override (NF models).')
  define('integer', 'num_classes', 1000, 'Classifier outputs.')
  define('integer', 'steps', 10, 'Timed batches per configuration.')
  define('integer', 'warmup', 2, 'Untimed batches per configuration first.')
  define('string', 'results',
         os.path.join(_common.RESULTS_DIR, 'inference.jsonl'),
         'JSON lines file the records are appended to.')
  define('bool', 'no_save', False, 'Do not append the records.')


def finish_args(args: types.SimpleNamespace) -> types.SimpleNamespace:
  """Fills in what defaults to the model's own values (--image_size)."""
  if args.image_size is None:
    name = args.model.split(',')[0].partition('@')[0]
    args.image_size = (224 if name == 'bn_resnet50' else
                       _common.models.get_spec(name).test_imsize)
  return args


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  return finish_args(_common.parse_flags(define_flags, argv))


if __name__ == '__main__':
  _common.run_command_line(define_flags, lambda args: run(finish_args(args)))
