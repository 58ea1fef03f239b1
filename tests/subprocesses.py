"""Child processes of the tests, under one generous time limit.

Every test that starts a process (a command line, a second JAX process, a
pip install) waits for it at most `TIMEOUT_S` seconds: 1,800 by default, set
by $NFNETS_TEST_TIMEOUT_S. The limit only catches a child that hangs: on a
machine under heavy load (a load average of 13 on 2 cores) a run that takes
a minute when idle took five. A child that runs out of time is asked for
its Python threads' stacks (faulthandler, on SIGABRT) before it is killed,
and the test fails showing them with the end of its output, so a timeout
says what the child was doing.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from typing import Any, Optional, Sequence

import pytest

TIMEOUT_S = float(os.environ.get('NFNETS_TEST_TIMEOUT_S', '1800'))
# What a timed-out child has to print its stacks before it is killed.
_DUMP_WAIT_S = 30


def _with_faulthandler(env: Optional[dict[str, str]]) -> dict[str, str]:
  return dict(os.environ if env is None else env, PYTHONFAULTHANDLER='1')


def _tail(text: Any, chars: int = 6000) -> str:
  if isinstance(text, bytes):
    text = text.decode(errors='replace')
  return (text or '')[-chars:]


def popen(args: Sequence[str], *, env: Optional[dict[str, str]] = None,
          **kwargs: Any) -> subprocess.Popen:
  """`subprocess.Popen` whose child dumps its stacks on SIGABRT."""
  return subprocess.Popen(list(args), env=_with_faulthandler(env), **kwargs)


def communicate(proc: subprocess.Popen, what: str = '',
                timeout: Optional[float] = None,
                log: Optional[pathlib.Path] = None) -> tuple[Any, Any]:
  """`proc.communicate()` within `TIMEOUT_S`; a timeout fails the test.

  The failure shows the child's command, its stacks and the end of its
  output (or of `log`, the file its output goes to).
  """
  timeout = TIMEOUT_S if timeout is None else timeout
  try:
    return proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGABRT)
    try:
      out, err = proc.communicate(timeout=_DUMP_WAIT_S)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
    if log is not None:
      err = log.read_text(errors='replace')
    pytest.fail(
        f'{what or " ".join(map(str, proc.args))} was still running after '
        f'{timeout:.0f} s ($NFNETS_TEST_TIMEOUT_S). Its output ends, with '
        f'its threads\' stacks:\n{_tail(out)}\n{_tail(err)}', pytrace=False)


def run(args: Sequence[str], *, check: bool = False,
        env: Optional[dict[str, str]] = None, capture_output: bool = False,
        text: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
  """`subprocess.run` within `TIMEOUT_S` (see `communicate`)."""
  if capture_output:
    kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc = popen(args, env=env, text=text, **kwargs)
  out, err = communicate(proc)
  result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  if check:
    result.check_returncode()
  return result


def python(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
  """`run` of this interpreter with `args`, capturing text output."""
  kwargs.setdefault('capture_output', True)
  kwargs.setdefault('text', True)
  return run([sys.executable, *args], **kwargs)
