"""Host memory settings for the benchmark scripts.

XLA's CPU runtime allocates each step's temporary buffers (1.6 GiB for an
NFNet-F0 step at batch 8 and 192 px) afresh on every call, from a worker
thread, and glibc serves an allocation that large with a new `mmap`. On a
kernel whose transparent huge pages are in `madvise` mode (the common default)
that memory is then faulted in 4 KiB at a time: about 430,000 page faults and
1 s of kernel time per F0 step on 2 cores. glibc (2.35 and later) advises huge
pages for what it maps when the `glibc.malloc.hugetlb=1` tunable is set, which
cuts the faults about 35-fold and the step time with them. Tunables are read
once, when a process starts, so the entry points re-execute themselves with it
set; `NFNETS_HUGE_PAGES=0` turns this off. The library never does this: for
training, set the tunable in the environment (the Makefile's targets do).
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional

THP_ENABLED_PATH = '/sys/kernel/mm/transparent_hugepage/enabled'
TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT_VARIABLE = 'NFNETS_HUGE_PAGES'


def _thp_mode(path: str = THP_ENABLED_PATH) -> Optional[str]:
  """The bracketed mode in the kernel's THP setting, e.g. 'madvise'."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def _glibc_version() -> Optional[tuple[int, ...]]:
  lib, version = platform.libc_ver()
  if lib != 'glibc' or not version:
    return None
  try:
    return tuple(int(p) for p in version.split('.'))
  except ValueError:
    return None


def needs_huge_page_tunable(
    environ: Mapping[str, str],
    thp_mode: Optional[str],
    glibc_version: Optional[tuple[int, ...]],
    system: str = sys.platform) -> bool:
  """Whether re-executing with `TUNABLE` would change how malloc maps memory.

  Only on Linux with glibc 2.35 or later (older versions ignore the tunable),
  only when THP is in 'madvise' mode ('always' already gives malloc's large
  mappings huge pages, 'never' gives none), and not when the tunable is already
  set (which also keeps the re-executed process from doing it again) or the
  user opted out with NFNETS_HUGE_PAGES=0.
  """
  if system != 'linux' or glibc_version is None or glibc_version < (2, 35):
    return False
  if thp_mode != 'madvise':
    return False
  if environ.get(OPT_OUT_VARIABLE, '1') == '0':
    return False
  return 'glibc.malloc.hugetlb' not in environ.get('GLIBC_TUNABLES', '')


def reexec_with_huge_pages() -> None:
  """Re-executes this process (same interpreter and arguments) with
  `GLIBC_TUNABLES` extended by `TUNABLE`, when `needs_huge_page_tunable`.

  Call it first thing in a `__main__` block, before threads or files are
  opened: `os.execv` replaces the process and keeps only its environment and
  PID. Returns (doing nothing) when the tunable is set or would not help.
  """
  if not needs_huge_page_tunable(os.environ, _thp_mode(), _glibc_version()):
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  os.environ['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}' if tunables else TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
