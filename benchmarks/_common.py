"""Shared pieces of the benchmark scripts: model building, timing, reporting.

A "model spec" on the command line is a registry name (`nfnet_f0`,
`nf_resnet50`, ...), optionally with a suffix that swaps the convolution:
`@plain` is a plain conv with bias, the WSConv2D layout without
standardization (`layers.PrestandardizedConv2D`), so the model differs from
the NF one only by the weight standardization; `@prestandardized` is the
same module, meant for weights exported by `layers.standardize_conv_params`;
`@native`, `@split`, `@im2col` and `@auto` force that formulation of
`layers.grouped_conv2d` in every WSConv2D, or in every convolution of a
model that takes `conv_impl` (the ShuffleNets: `shufflenet_v1_g8@native`).
`bn_resnet50` is the BatchNorm ResNet-50 baseline (the registry's
`resnet50_bn`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
import types
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import app
from absl import flags
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets import errors
from nfnets import layers
from nfnets import models
from nfnets.cli import common as cli_common

# Flags defined through `definer` belong to the script that calls it, so
# that its --help lists them.
flags.disclaim_key_flags()

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'results')


def _absl_spelling(argv: Sequence[str], names: set[str]) -> list[str]:
  """`argv` with dashed flag names (`--image-size`, `--no-agc`) underscored.

  absl names flags with underscores; the scripts' earlier argparse
  spellings, still in scripts and notes, keep working.
  """
  out = []
  for arg in argv:
    if arg == '--':
      out.extend(argv[len(out):])
      break
    name, equals, value = arg[2:].partition('=')
    underscored = name.replace('-', '_')
    if arg.startswith('--') and underscored != name and underscored in names:
      arg = f'--{underscored}{equals}{value}'
    out.append(arg)
  return out


def definer(flag_values: flags.FlagValues) -> Callable[..., None]:
  """`define(kind, name, default, help, **kwargs)`: absl's `DEFINE_<kind>`
  (string, integer, float, bool, enum) into `flag_values`."""
  def define(kind: str, name: str, default: Any, help_string: str,
             **kwargs) -> None:
    getattr(flags, f'DEFINE_{kind}')(name, default, help=help_string,
                                     flag_values=flag_values, **kwargs)
  return define


# The scripts' flags by what their values may be; a value of None means "the
# model's own" (e.g. --image_size) and is left to the script.
_AT_LEAST_ONE = (
    'batch', 'batch_size', 'steps', 'num_steps', 'seeds', 'image_size',
    'eval_image_size', 'devices', 'num_classes', 'fake_classes',
    'fake_per_class', 'runner_steps', 'runner_batch', 'runner_image_size',
    'runner_eval_image_size', 'sub_blocks', 'train_examples', 'num_val',
    'train_per_class', 'sample', 'block', 'stem_stride', 'gn_groups')
_AT_LEAST_ZERO = (
    'warmup', 'warmup_steps', 'warmup_epochs', 'sam_rho', 'mixup_alpha',
    'cutmix_alpha', 'randaugment_layers', 'randaugment_magnitude',
    'max_shift', 'weight_decay', 'threads')
_ABOVE_ZERO = ('width', 'epochs', 'base_lr', 'seconds', 'blowup', 'clipping')


def check_args(args: types.SimpleNamespace) -> types.SimpleNamespace:
  """Refuses flag values no script can run with, before any work.

  Counts and sizes below 1, rates and radii below 0, a width, length or
  learning rate that is not positive, a fraction outside (0, 1], a batch
  that does not divide over the devices, and a results file that cannot be
  written are each an `InputError` naming the flag.
  """
  def bad(name: str, rule: str) -> errors.InputError:
    return errors.InputError(
        f'--{name} must be {rule}, got {getattr(args, name)}.')

  def number(name: str) -> Optional[float]:
    value = getattr(args, name, None)  # Absent, None or a list: not checked.
    return value if isinstance(value, (int, float)) else None

  for names, rule, ok in (
      (_AT_LEAST_ONE, 'at least 1', lambda v: v >= 1),
      (_AT_LEAST_ZERO, '>= 0', lambda v: v >= 0),
      (_ABOVE_ZERO, 'positive', lambda v: v > 0),
      (('sam_batch_fraction',), 'in (0, 1]', lambda v: 0 < v <= 1),
      (('ema_decay',), 'in [0, 1)', lambda v: 0 <= v < 1)):
    for name in names:
      if number(name) is not None and not ok(number(name)):
        raise bad(name, rule)
  devices = getattr(args, 'devices', None)
  if devices and getattr(args, 'batch', None) and args.batch % devices:
    raise errors.InputError(
        f'--batch={args.batch} does not divide over --devices={devices}; '
        f'use a multiple of {devices}.')
  for name in ('model', 'compare'):  # Comma-separated model specs.
    value = getattr(args, name, None)
    if not isinstance(value, str) or (name == 'compare' and not value):
      continue
    if not all(spec.strip() for spec in value.split(',')):
      raise errors.InputError(f'--{name}={value!r} names an empty model.')
    for spec in value.split(','):
      check_spec(spec.strip())
  if not getattr(args, 'no_save', False):
    for name in ('results', 'figure'):
      path = getattr(args, name, None)
      if path:
        errors.check_writable(path, f'--{name} {path}')
  return args


def parse_flags(define: Callable[[flags.FlagValues], None],
                argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags `define` defines, parsed from `argv` (no program name).

  For calling a script from Python: fresh `FlagValues`, so nothing is left
  defined, and a bad flag raises `absl.flags.Error`.
  """
  values = flags.FlagValues()
  define(values)
  rest = values(['benchmark', *_absl_spelling(argv, set(values))])
  if len(rest) > 1:
    raise flags.Error(f'Unexpected arguments: {rest[1:]}')
  return check_args(types.SimpleNamespace(
      **{name: values[name].value for name in sorted(values)}))


def run_command_line(define: Callable[[flags.FlagValues], None],
                     main: Callable[[types.SimpleNamespace], Any]) -> None:
  """Runs a script's `main(args)` the way the package's command lines run.

  absl flags (`--image_size=128`, `--image-size 128` and `--no_agc` /
  `--no-agc` alike), JAX's `--jax_*` flags, `--helpfull`, quiet library
  logs, and a `nfnets.errors.UserError` (an unknown model, a bad override)
  as one `error:` line with exit status 1 (`--traceback` shows the
  traceback); see `nfnets.cli.common.run`.
  """
  before = set(flags.FLAGS)
  define(flags.FLAGS)
  names = set(flags.FLAGS) - before

  def absl_main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    main(check_args(types.SimpleNamespace(
        **{name: flags.FLAGS[name].value for name in sorted(names)})))

  cli_common.run(absl_main, argv=_absl_spelling(sys.argv[1:], names))


def set_host_device_count(argv: Sequence[str]) -> None:
  """Makes `--devices N` visible as N CPU devices; call before jax starts."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith('--devices='):
      value = arg.split('=', 1)[1]
    elif arg == '--devices' and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None and int(value) > 1:
      flags = os.environ.get('XLA_FLAGS', '')
      os.environ['XLA_FLAGS'] = (
          f'{flags} --xla_force_host_platform_device_count={int(value)}')


_CONV_SUFFIXES = ('plain', 'prestandardized')
# 'matmul' takes only 1x1 kernels, so no whole model can use it.
_IMPL_SUFFIXES = tuple(i for i in layers.GROUPED_CONV_IMPLS if i != 'matmul')


def check_spec(spec: str) -> None:
  """Raises a `UserError` for an unknown model name or `@suffix`."""
  name, _, suffix = spec.partition('@')
  if name != 'bn_resnet50':
    models.get_spec(name)
  if suffix and (name == 'bn_resnet50' or
                 suffix not in _CONV_SUFFIXES + _IMPL_SUFFIXES):
    raise errors.InputError(
        f'Unknown suffix @{suffix} in {spec!r}; valid: '
        f'{", ".join("@" + v for v in _CONV_SUFFIXES + _IMPL_SUFFIXES)}.')


@dataclasses.dataclass
class Model:
  """A model ready to benchmark.

  Attributes:
    label: the spec string it was built from.
    fwd: `hk.transform_with_state` of forward(images, is_training).
    has_state: whether the model keeps BatchNorm statistics.
  """
  label: str
  fwd: hk.TransformedWithState
  has_state: bool


def build_model(spec: str, num_classes: int = 1000,
                width: Optional[float] = None, remat: bool = False,
                overrides: Optional[Mapping[str, Any]] = None) -> Model:
  """Builds a `Model` from a spec string (see the module docstring).

  Args:
    spec: a registry name with an optional `@suffix`, or `bn_resnet50`.
    num_classes: classifier outputs.
    width: width multiplier override (NF models).
    remat: rematerialize each residual block (NF models).
    overrides: further constructor overrides for any model, e.g. a tiny
      `{'depth': (1, 1, 1, 1), 'width': 0.125}`.
  """
  name, _, suffix = spec.partition('@')
  if name == 'bn_resnet50':
    return Model(spec, models.transform('resnet50_bn', num_classes,
                                        **(overrides or {})),
                 has_state=True)
  if width is not None and not width > 0:
    raise errors.InputError(f'The width must be positive, got {width}.')
  check_spec(spec)
  kwargs: dict[str, Any] = {}
  if width is not None:
    kwargs['width'] = width
  if remat:
    kwargs['remat'] = True
  if suffix in _CONV_SUFFIXES:
    kwargs['conv'] = layers.PrestandardizedConv2D
  elif suffix and 'conv_impl' in models.accepted_overrides(name):
    kwargs['conv_impl'] = suffix
  elif suffix:
    kwargs['conv'] = functools.partial(layers.WSConv2D, impl=suffix)
  kwargs.update(overrides or {})
  fwd = models.transform(name, num_classes, **kwargs)
  return Model(spec, fwd, has_state=False)


def cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
  """Casts the floating-point leaves of `tree` to `dtype`."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, tree)


def time_calls(fn: Callable[[], Any], steps: int, warmup: int) -> list[float]:
  """Seconds per call of `fn` (which must block) after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def compiled_stats(compiled: Any) -> dict[str, Any]:
  """FLOPs from XLA's cost analysis and buffer sizes from its memory analysis."""
  out: dict[str, Any] = {}
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    out['xla_flops'] = float(cost.get('flops', float('nan')))
  except Exception:  # Not every backend implements cost analysis.
    out['xla_flops'] = None
  try:
    mem = compiled.memory_analysis()
    out['xla_temp_bytes'] = int(mem.temp_size_in_bytes)
    out['xla_argument_bytes'] = int(mem.argument_size_in_bytes)
    out['xla_output_bytes'] = int(mem.output_size_in_bytes)
  except Exception:
    out['xla_temp_bytes'] = None
  return out


def peak_memory_bytes() -> tuple[Optional[int], str]:
  """Peak memory so far: device allocator stats, else the process's peak RSS.

  Peak RSS never goes down within a process, so when several configurations
  run in one process only the first is isolated; `xla_temp_bytes` (XLA's own
  buffer assignment for the compiled step) is comparable across them.
  """
  device = jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:
    stats = None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device_peak'
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  scale = 1 if sys.platform == 'darwin' else 1024
  return int(kb * scale), 'process_peak_rss'


def _cpu_model() -> str:
  # CPU figures differ by 2x and more between x86 server models of the same
  # core count, so the record names the model where Linux reports it.
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_description() -> dict[str, Any]:
  """Backend, device kind and count, CPU count and library versions."""
  device = jax.devices()[0]
  return {
      'backend': jax.default_backend(),
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'processor': platform.processor() or platform.machine(),
      'cpu_model': _cpu_model(),
      'jax': jax.__version__,
      'haiku': hk.__version__,
      # Scheduler and backend flags change both time and memory figures.
      'xla_flags': os.environ.get('XLA_FLAGS', '').strip(),
      # malloc's huge-page advice changes CPU step times (nfnets.host).
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
  }


def summarize(times: Sequence[float], batch_size: int) -> dict[str, float]:
  """Median, min and spread of per-step seconds and images per second."""
  median = statistics.median(times)
  return {
      'step_s_median': median,
      'step_s_min': min(times),
      'step_s_max': max(times),
      'images_per_s': batch_size / median,
  }


def minor_page_faults() -> int:
  """Minor page faults this process has taken so far (0 where unknown)."""
  try:
    import resource  # pylint: disable=g-import-not-at-top
  except ImportError:  # Not on Windows.
    return 0
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def append_result(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON line to `path`, creating its directory."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')


def _fmt(value: Any, unit: str = '') -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    if unit == 'G':
      return f'{value / 1e9:.1f}'
    if unit == 'M':
      return f'{value / 2**20:.0f}'
    if unit == 'ms':
      return f'{value * 1e3:.1f}'
    return f'{value:.2f}'
  if isinstance(value, int) and unit == 'M':
    return f'{value / 2**20:.0f}'
  return str(value)


TABLE_COLUMNS = (
    ('model', 'model', ''), ('batch', 'batch', ''), ('px', 'image_size', ''),
    ('dtype', 'dtype', ''), ('dev', 'devices', ''),
    ('compile s', 'compile_s', ''), ('step ms', 'step_s_median', 'ms'),
    ('img/s', 'images_per_s', ''), ('GFLOP/step', 'xla_flops', 'G'),
    ('GFLOP/s', 'achieved_flops_per_s', 'G'), ('temp MiB', 'xla_temp_bytes', 'M'),
    ('peak MiB', 'peak_memory_bytes', 'M'),
)


def print_table(records: Sequence[dict[str, Any]]) -> None:
  """Prints records as an aligned text table."""
  header = [c[0] for c in TABLE_COLUMNS]
  rows = [[_fmt(r.get(key), unit) for _, key, unit in TABLE_COLUMNS]
          for r in records]
  widths = [max(len(h), *(len(row[i]) for row in rows))
            for i, h in enumerate(header)]
  print('  '.join(h.rjust(w) for h, w in zip(header, widths)))
  for row in rows:
    print('  '.join(v.rjust(w) for v, w in zip(row, widths)))
  sys.stdout.flush()


def synthetic_batch(batch_size: int, image_size: int, num_classes: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random NHWC float32 images and int32 labels (speed does not depend on data)."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch_size, image_size, image_size, 3),
                               dtype=np.float32)
  labels = rng.integers(0, num_classes, (batch_size,), dtype=np.int32)
  return images, labels
