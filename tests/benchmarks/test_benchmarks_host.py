"""The benchmark scripts' re-execution with glibc's huge-page tunable."""
import os
import subprocess
import sys

import pytest

from benchmarks import _host as host
from tests import subprocesses

_LINUX_MADVISE = dict(thp_mode='madvise', glibc_version=(2, 36),
                      system='linux')


@pytest.mark.parametrize('environ,kwargs,expected', [
    ({}, _LINUX_MADVISE, True),
    # Other tunables are kept and extended.
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, _LINUX_MADVISE, True),
    # Already set: also what stops the re-executed process from looping.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, _LINUX_MADVISE, False),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, _LINUX_MADVISE, False),
    ({'NFNETS_HUGE_PAGES': '0'}, _LINUX_MADVISE, False),
    ({'NFNETS_HUGE_PAGES': '1'}, _LINUX_MADVISE, True),
    ({}, dict(_LINUX_MADVISE, thp_mode='always'), False),
    ({}, dict(_LINUX_MADVISE, thp_mode='never'), False),
    ({}, dict(_LINUX_MADVISE, thp_mode=None), False),
    ({}, dict(_LINUX_MADVISE, glibc_version=(2, 34)), False),
    ({}, dict(_LINUX_MADVISE, glibc_version=None), False),
    ({}, dict(_LINUX_MADVISE, system='darwin'), False),
])
def test_needs_huge_page_tunable(environ, kwargs, expected):
  assert host.needs_huge_page_tunable(environ, **kwargs) is expected


def test_thp_mode_reads_the_bracketed_setting(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert host._thp_mode(str(path)) == 'madvise'  # pylint: disable=protected-access
  path.write_text('[always] madvise never\n')
  assert host._thp_mode(str(path)) == 'always'  # pylint: disable=protected-access
  assert host._thp_mode(str(tmp_path / 'missing')) is None  # pylint: disable=protected-access


_CHILD = """
import os, sys
from benchmarks import _host as host
print('started', flush=True)
host.reexec_with_huge_pages()
print('tunables', os.environ.get('GLIBC_TUNABLES', ''))
print('argv', sys.argv[1:])
"""


@pytest.mark.parametrize('opt_out', [False, True])
def test_reexec_keeps_arguments_and_adds_the_tunable(opt_out):
  env = dict(os.environ, GLIBC_TUNABLES='glibc.malloc.arena_max=4')
  env.pop('NFNETS_HUGE_PAGES', None)
  if opt_out:
    env['NFNETS_HUGE_PAGES'] = '0'
  # Whether this machine's kernel and libc call for it decides which of the
  # two outcomes is right; both are checked in full.
  applies = host.needs_huge_page_tunable(
      env, host._thp_mode(), host._glibc_version())  # pylint: disable=protected-access
  out = subprocesses.run(
      [sys.executable, '-c', _CHILD, 'a b', '--flag=1'], env=env,
      capture_output=True, text=True, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout
  lines = out.splitlines()
  assert lines.count('started') == (2 if applies else 1)
  expected = ('glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1' if applies
              else 'glibc.malloc.arena_max=4')
  assert f'tunables {expected}' in lines
  assert "argv ['a b', '--flag=1']" in lines
  if opt_out:
    assert not applies
