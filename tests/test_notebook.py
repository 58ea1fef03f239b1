"""Executes notebooks/evaluate_checkpoint.ipynb on a tiny trained run."""
import os
import pathlib

import nbclient
import nbformat
import pytest
from tests import subprocesses

# Needs the session's tiny trained run (`digits_run` in conftest.py), then
# runs the notebook in a fresh kernel.
pytestmark = pytest.mark.slow

_NOTEBOOK = (pathlib.Path(__file__).parent.parent / 'notebooks' /
             'evaluate_checkpoint.ipynb')


def test_notebook_runs_top_to_bottom(digits_run, compilation_cache_env,
                                     monkeypatch):
  workdir = digits_run
  notebook = nbformat.read(_NOTEBOOK, as_version=4)
  monkeypatch.setenv('NFNETS_WORKDIR', str(workdir))
  # The kernel shares the session's compilation cache: evaluating the shared
  # run compiles what the evaluation tests compiled.
  for name, value in compilation_cache_env.items():
    monkeypatch.setenv(name, value)
  client = nbclient.NotebookClient(
      notebook, timeout=subprocesses.TIMEOUT_S, kernel_name='python3',
      resources={'metadata': {'path': str(_NOTEBOOK.parent)}})
  client.execute()  # Raises CellExecutionError naming the failing cell.
  text = '\n'.join(o.get('text', '') for c in notebook.cells
                   if c.cell_type == 'code' for o in c.get('outputs', []))
  assert 'at step 2' in text and str(workdir) in text
  assert 'images 360' in text
  figures = sum('image/png' in o.get('data', {}) for c in notebook.cells
                if c.cell_type == 'code' for o in c.get('outputs', []))
  assert figures == 3
