"""The tests' time limit on child processes says what a hung child was doing."""
import subprocess
import sys

import pytest

from tests import subprocesses


def test_a_child_past_its_time_fails_the_test_with_its_stacks():
  proc = subprocesses.popen(
      [sys.executable, '-c',
       'import time\nprint("started", flush=True)\n'
       'def waiting_for_godot():\n  time.sleep(600)\nwaiting_for_godot()\n'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'started'
  with pytest.raises(pytest.fail.Exception) as failure:
    subprocesses.communicate(proc, 'the sleeper', timeout=1)
  message = str(failure.value)
  assert 'the sleeper was still running after 1 s' in message
  assert 'waiting_for_godot' in message  # Its stack, from faulthandler.
  assert proc.poll() is not None


def test_run_returns_what_subprocess_run_would():
  result = subprocesses.python('-c', 'import sys; print(6 * 7); '
                               'sys.exit(3)')
  assert (result.returncode, result.stdout.strip()) == (3, '42')
  with pytest.raises(subprocess.CalledProcessError):
    subprocesses.python('-c', 'raise SystemExit(1)', check=True)
