r"""NFNet-F0 train steps here against timm's PyTorch NFNet-F0, interleaved.

    python -m benchmarks.vs_pytorch --batch 8 --image-size 192 --steps 6

Needs `torch` and `timm`, which this project does not install (pip install
torch timm). timm's `dm_nfnet_f0` is the same network as `nfnet_f0` (DeepMind's
layout: Scaled WS, GELU, Squeeze-Excite, 71.5M parameters). Both take SGD with
Nesterov momentum on the same synthetic batch size; the two frameworks' steps
alternate in one process, so machine load hits both alike, and the script
prints the medians and their ratio and appends one JSON line to
`benchmarks/results/vs_pytorch.jsonl`.
"""
import argparse
import datetime
import os
import statistics
import sys
import time
from typing import Any, Callable

from benchmarks import _common
from benchmarks import train_step


def _torch_step(batch: int, image_size: int,
                threads: int) -> tuple[Callable[[], None], dict[str, Any]]:
  try:
    import timm  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f'benchmarks.vs_pytorch needs torch and timm ({e}); '
                     'install them with `pip install torch timm`.') from e
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


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Times both steps alternately; returns (and saves) the record."""
  ours = train_step._Runner(  # pylint: disable=protected-access
      'nfnet_f0', train_step.parse_args(
          ['--batch', str(args.batch), '--image-size', str(args.image_size),
           '--no-save']))
  theirs, info = _torch_step(args.batch, args.image_size,
                             args.threads or os.cpu_count() or 1)
  for _ in range(args.warmup):
    ours()
    theirs()
  times: dict[str, list[float]] = {'jax': [], 'torch': []}
  for _ in range(args.steps):
    for key, fn in (('jax', ours), ('torch', theirs)):
      start = time.perf_counter()
      fn()
      times[key].append(time.perf_counter() - start)
  med = {k: statistics.median(v) for k, v in times.items()}
  rec = {
      'benchmark': 'vs_pytorch', 'model': 'nfnet_f0 / timm dm_nfnet_f0',
      'batch': args.batch, 'image_size': args.image_size,
      'steps': args.steps, 'warmup': args.warmup,
      'jax_step_s_median': med['jax'], 'torch_step_s_median': med['torch'],
      'jax_images_per_s': args.batch / med['jax'],
      'torch_images_per_s': args.batch / med['torch'],
      'jax_over_torch_step_time': med['jax'] / med['torch'],
      'jax_step_s': times['jax'], 'torch_step_s': times['torch'],
      'machine': _common.machine_description(),
      'timestamp': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      **info,
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


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--image-size', type=int, default=192)
  p.add_argument('--steps', type=int, default=6)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--threads', type=int, default=0,
                 help='PyTorch intra-op threads (default: all CPUs)')
  p.add_argument('--results',
                 default=os.path.join(_common.RESULTS_DIR, 'vs_pytorch.jsonl'))
  p.add_argument('--no-save', action='store_true')
  return p.parse_args(argv)


if __name__ == '__main__':
  run(parse_args(sys.argv[1:]))
