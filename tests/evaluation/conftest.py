"""Shared fixtures of the evaluation tests."""

import pytest

from tests.evaluation import detached_lap as detached_lap_model


@pytest.fixture(scope="session")
def detached_lap(tiny_run_dir, optimised_mode
                 ) -> detached_lap_model.DetachedLap:
  """``configs/lap.py:lap_detached,multi,tiny`` initialised (in XLA's
  optimised mode, as users run) from the tiny run, once per test process:
  nothing writes to it (``lap_evaluation`` does not train)."""
  with optimised_mode():
    return detached_lap_model.build(str(tiny_run_dir))
