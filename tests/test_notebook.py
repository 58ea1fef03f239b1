"""Executes notebooks/evaluate_checkpoint.ipynb on a tiny trained run."""
import os
import pathlib

import nbclient
import nbformat
import pytest

from nfnets import configs
from nfnets import experiment

pytestmark = pytest.mark.slow  # Trains a tiny model, then runs the notebook.

_NOTEBOOK = (pathlib.Path(__file__).parent.parent / 'notebooks' /
             'evaluate_checkpoint.ipynb')


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  config = configs.digits_config('runlocal')
  config.training.num_steps = 2
  config.checkpoint.every_steps = 2
  workdir = tmp_path / 'digits'
  experiment.train_and_evaluate(config, workdir)
  notebook = nbformat.read(_NOTEBOOK, as_version=4)
  monkeypatch.setenv('NFNETS_WORKDIR', str(workdir))
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(_NOTEBOOK.parent)}})
  client.execute()  # Raises CellExecutionError naming the failing cell.
  text = '\n'.join(o.get('text', '') for c in notebook.cells
                   if c.cell_type == 'code' for o in c.get('outputs', []))
  assert 'at step 2' in text and str(workdir) in text
  assert 'images 360' in text
  figures = sum('image/png' in o.get('data', {}) for c in notebook.cells
                if c.cell_type == 'code' for o in c.get('outputs', []))
  assert figures == 3
