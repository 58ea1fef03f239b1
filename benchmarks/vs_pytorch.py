r"""NFNet-F0 train steps here against timm's PyTorch NFNet-F0, interleaved.

    python -m benchmarks.vs_pytorch --batch 8 --image-size 192 --steps 6

Needs `torch` and `timm`, which this project does not install (pip install
torch timm). timm's `dm_nfnet_f0` is the same network as `nfnet_f0` (DeepMind's
layout: Scaled WS, GELU, Squeeze-Excite, 71.5M parameters). Both take SGD with
Nesterov momentum on the same synthetic batch size. Each framework runs in its
own worker process, and the two workers take turns of `--block` steps (the
idle one waits on a pipe), so machine load hits both alike while neither's
threads or memory share a process with the other's: in one process, XLA's
steps ran 15-40% slower after PyTorch's had run. With `--block` above 1 the
first step of each turn is not timed. The script prints the medians and their
ratio and appends one JSON line to `benchmarks/results/vs_pytorch.jsonl`.
Flags are absl's (`--helpfull` lists them with JAX's `--jax_*` flags); the
dashed spellings `--image-size 192`, `--no-save` work too.
"""
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Callable, Sequence

from absl import flags

from benchmarks import _common
from benchmarks import train_step
from benchmarks import _host as host


_INSTALL_HINT = 'install them with `pip install torch timm`.'


def _torch_step(batch: int, image_size: int,
                threads: int) -> tuple[Callable[[], None], dict[str, Any]]:
  try:
    import timm  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f'benchmarks.vs_pytorch needs torch and timm ({e}); '
                     + _INSTALL_HINT) from e
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = timm.create_model('dm_nfnet_f0', num_classes=1000)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                        nesterov=True)
  x = torch.randn(batch, 3, image_size, image_size)
  y = torch.randint(0, 1000, (batch,))

  def step() -> None:
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  info = {'torch': torch.__version__, 'timm': timm.__version__,
          'torch_threads': torch.get_num_threads(),
          'torch_params': sum(p.numel() for p in model.parameters())}
  return step, info


def _require_torch() -> None:
  """Fails early, in the parent, with how to install what the worker needs."""
  for name in ('torch', 'timm'):
    try:
      found = importlib.util.find_spec(name) is not None
    except ValueError:  # A module entry without a spec.
      found = False
    if not found:
      raise SystemExit(f'benchmarks.vs_pytorch needs torch and timm ({name} '
                       'is missing); ' + _INSTALL_HINT)


def _jax_step(batch: int, image_size: int) -> Callable[[], None]:
  return train_step._Runner(  # pylint: disable=protected-access
      'nfnet_f0', train_step.parse_args(
          [f'--batch={batch}', f'--image_size={image_size}', '--no_save']))


def _worker(args: types.SimpleNamespace) -> None:
  """Builds one framework's step, then runs it once per 'step' line on stdin
  and answers each with its seconds on stdout."""
  # The protocol owns stdout; anything the libraries print goes to stderr.
  protocol, sys.stdout = sys.stdout, sys.stderr
  info: dict[str, Any] = {}
  if args.worker == 'jax':
    step = _jax_step(args.batch, args.image_size)
  else:
    step, info = _torch_step(args.batch, args.image_size,
                             args.threads or os.cpu_count() or 1)
  print(json.dumps({'ready': True, **info}), file=protocol, flush=True)
  for line in sys.stdin:
    if line.strip() != 'step':
      break
    start = time.perf_counter()
    step()
    print(time.perf_counter() - start, file=protocol, flush=True)


class _Worker:
  """A worker process and the pipe to it."""

  def __init__(self, framework: str, args: types.SimpleNamespace):
    self.framework = framework
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.vs_pytorch', '--worker', framework,
         f'--batch={args.batch}', f'--image_size={args.image_size}',
         f'--threads={args.threads}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    self.info = json.loads(self._read())
    self.info.pop('ready')

  def _read(self) -> str:
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f'The {self.framework} worker exited '
                       f'(status {self.proc.wait()}); its errors are above.')
    return line

  def step(self) -> float:
    self.proc.stdin.write('step\n')
    self.proc.stdin.flush()
    return float(self._read())

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait()


def run(args: types.SimpleNamespace) -> dict[str, Any]:
  """Times both steps alternately; returns (and saves) the record."""
  if args.block < 1 or args.steps < 1:
    raise SystemExit('--block and --steps must be at least 1.')
  _require_torch()
  workers = [_Worker('jax', args), _Worker('torch', args)]
  try:
    for _ in range(args.warmup):
      for w in workers:
        w.step()
    times: dict[str, list[float]] = {'jax': [], 'torch': []}
    while len(times['jax']) < args.steps:
      for w in workers:
        block = [w.step() for _ in range(args.block)]
        # The first step of a block pays for the other worker's turn.
        times[w.framework] += block[1:] if args.block > 1 else block
  finally:
    for w in workers:
      w.close()
  med = {k: statistics.median(v) for k, v in times.items()}
  rec = {
      'benchmark': 'vs_pytorch', 'model': 'nfnet_f0 / timm dm_nfnet_f0',
      'batch': args.batch, 'image_size': args.image_size,
      'steps': len(times['jax']), 'warmup': args.warmup, 'block': args.block,
      'method': 'one worker process per framework, taking turns of '
                f'{args.block} step(s)',
      'jax_step_s_median': med['jax'], 'torch_step_s_median': med['torch'],
      'jax_images_per_s': args.batch / med['jax'],
      'torch_images_per_s': args.batch / med['torch'],
      'jax_over_torch_step_time': med['jax'] / med['torch'],
      'jax_step_s': times['jax'], 'torch_step_s': times['torch'],
      'machine': _common.machine_description(),
      'timestamp': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      **workers[1].info,
  }
  for key in ('jax', 'torch'):
    print(f'{key:>5}: median {med[key]:.3f} s/step, '
          f'{args.batch / med[key]:.2f} img/s  '
          f'({" ".join(f"{t:.2f}" for t in times[key])})')
  print(f'jax / torch step time: {rec["jax_over_torch_step_time"]:.3f} '
        f'(batch {args.batch}, {args.image_size} px, '
        f'{rec["machine"]["cpu_model"]})')
  if not args.no_save:
    _common.append_result(args.results, rec)
  return rec


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines this script's flags in `flag_values`."""
  define = _common.definer(flag_values)
  define('integer', 'batch', 8, 'Batch size of both frameworks.')
  define('integer', 'image_size', 192, 'Image side in pixels.')
  define('integer', 'steps', 6, 'Timed steps per framework.')
  define('integer', 'warmup', 2, 'Untimed steps per framework first.')
  define('integer', 'block', 1, 'Steps per turn; above 1, the first of each '
         'turn is not timed (on some virtual machines a step right after the '
         "other framework's runs slower).")
  define('integer', 'threads', 0,
         'PyTorch intra-op threads (default: all CPUs).')
  define('string', 'results',
         os.path.join(_common.RESULTS_DIR, 'vs_pytorch.jsonl'),
         'JSON lines file the record is appended to.')
  define('bool', 'no_save', False, 'Do not append the record.')
  define('enum', 'worker', None, 'Internal: be the worker process of this '
         'framework.', enum_values=['jax', 'torch'])


def parse_args(argv: Sequence[str]) -> types.SimpleNamespace:
  """The flags' values from `argv` (no program name), for callers in Python."""
  return _common.parse_flags(define_flags, argv)


def main(args: types.SimpleNamespace) -> None:
  """The comparison, or one of its workers (--worker)."""
  if args.worker:
    _worker(args)
  else:
    run(args)


if __name__ == '__main__':
  host.reexec_with_huge_pages()
  _common.run_command_line(define_flags, main)
