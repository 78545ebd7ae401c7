"""Shared test settings: fast CPU compilation, except where users' numbers
are checked.

Most tests compile many small programs, and optimising them costs more than
it saves, so XLA runs with ``jax_disable_most_optimizations``. That is a
mode users never run, and XLA:CPU computes differently in it (it returns
NaN for some vmapped VJPs: docs/xla-noopt-nan.md), so the modules in
``OPTIMISED_MODULES`` and the modules marked ``pytestmark =
pytest.mark.xla_optimized`` run with the optimisations on, as users run:
the attribution property tests and the evaluation of a trained run.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

FAST_MODE = "jax_disable_most_optimizations"
OPTIMISED_MODULES = (
    "tests/attribution/test_properties.py",
    "tests/evaluation/test_evaluate.py",
)

jax.config.update(FAST_MODE, True)
_fast = True


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "xla_optimized: run with XLA's optimisations on, as users "
      "run (the suite's default is jax_disable_most_optimizations)")


def _optimised(node) -> bool:
  path = node.path.as_posix()
  return (node.get_closest_marker("xla_optimized") is not None
          or any(path.endswith(m) for m in OPTIMISED_MODULES))


def _set_fast_mode(fast: bool) -> None:
  """Switches XLA's mode. ``jax.jit`` keeps its compiled programs across a
  switch (the flag is not part of its cache key), so the caches are
  cleared: every program of the next module compiles in its mode."""
  global _fast
  if fast != _fast:
    jax.config.update(FAST_MODE, fast)
    jax.clear_caches()
    _fast = fast


@pytest.fixture(scope="module", autouse=True)
def xla_mode(request):
  """Optimisations on for the optimised modules (their module fixtures
  included), off for the rest."""
  _set_fast_mode(not _optimised(request.node))
  yield
