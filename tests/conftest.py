"""Fixtures shared by the test modules."""
import contextlib

import pytest

from tests import shallow


@pytest.fixture
def shallow_model():
  """`shallow_model(name)` registers `name`'s shallow twin for one test.

  Returns the twin's registry name; see `tests/shallow.py`.
  """
  with contextlib.ExitStack() as stack:
    yield lambda name: stack.enter_context(shallow.registered(name))[0]
