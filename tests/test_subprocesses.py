"""The tests' time limits: a hung child says what it was doing, and an
unmarked test that takes too long says to mark it slow."""
import os
import pathlib
import subprocess
import sys

import pytest

from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parent.parent


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


def test_an_unmarked_slow_test_fails_with_the_hint_to_mark_it(tmp_path):
  (tmp_path / 'test_timing.py').write_text(
      'import time\nimport pytest\n\n'
      'def test_unmarked():\n  time.sleep(1.2)\n\n'
      '@pytest.mark.slow\ndef test_marked():\n  time.sleep(1.2)\n\n'
      'def test_quick():\n  pass\n')
  env = dict(os.environ, NFNETS_UNMARKED_LIMIT_S='0.5')
  result = subprocesses.python(
      '-m', 'pytest', '-q', '-p', 'tests.conftest', '-p', 'no:cacheprovider',
      '-W', 'ignore::pytest.PytestAssertRewriteWarning',
      str(tmp_path / 'test_timing.py'), cwd=REPO, env=env)
  assert '1 failed, 2 passed' in result.stdout, result.stdout[-3000:]
  assert 'test_unmarked took' in result.stdout
  assert 'mark it @pytest.mark.slow' in result.stdout
