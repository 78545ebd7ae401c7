"""Shared test settings: fast CPU compilation, except where users' numbers
are checked.

Most tests compile many small programs, and optimising them costs more than
it saves, so XLA runs with ``jax_disable_most_optimizations``. That is a
mode users never run, and XLA:CPU computes differently in it (it returns
NaN for some vmapped VJPs: docs/xla-noopt-nan.md), so the modules in
``OPTIMISED_MODULES`` and the modules marked ``pytestmark =
pytest.mark.xla_optimized`` run with the optimisations on, as users run:
the attribution property tests and the evaluation of a trained run.

Compilation dominates the suite's time, so one run of the suite shares a
persistent compilation cache between its workers and the subprocesses its
tests start (``LAPJAX_TEST_COMPILATION_CACHE``, removed at the end): a
program compiled once (say the tiny run's training step, compiled again by
every resume test's subprocess) is read back instead of recompiled. The
cache key holds XLA's options, so the two modes never share a program.
"""

import contextlib
import os
import shutil
import tempfile

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


CACHE_ENV = "LAPJAX_TEST_COMPILATION_CACHE"


def _share_compilation_cache(config) -> None:
  """The first pytest process of a run (the xdist controller, or the only
  one) makes the cache folder; workers and subprocesses inherit it through
  the environment."""
  if CACHE_ENV not in os.environ:
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="lapjax-jax-cache-")
    config._lapjax_owns_cache = True      # removed in pytest_unconfigure
  settings = {
      "jax_compilation_cache_dir": os.environ[CACHE_ENV],
      # Programs that compile in under 0.1 s are not worth a file each.
      "jax_persistent_cache_min_compile_time_secs": 0.1,
      "jax_persistent_cache_min_entry_size_bytes": 0,
      # A size limit turns on the cache's file lock (the filelock
      # package): a worker never reads an entry another is writing.
      "jax_compilation_cache_max_size": 8 << 30}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)        # for subprocesses


def pytest_unconfigure(config):
  if getattr(config, "_lapjax_owns_cache", False):
    shutil.rmtree(os.environ.pop(CACHE_ENV), ignore_errors=True)


def pytest_configure(config):
  _share_compilation_cache(config)
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


@contextlib.contextmanager
def _optimised_mode():
  """XLA's optimisations on inside (as users run); the mode before after."""
  fast = _fast
  _set_fast_mode(False)
  try:
    yield
  finally:
    _set_fast_mode(fast)


@pytest.fixture(scope="session")
def optimised_mode():
  """``with optimised_mode():`` runs with XLA's optimisations on, as users
  run: for session fixtures, whose values must not depend on the mode of
  the module that first asks for them (XLA:CPU's two modes round some
  programs differently, random initialisations included)."""
  return _optimised_mode



@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
  """``configs/default.py:tiny`` trained to the end (optimised XLA, as
  users train), once per suite run: the xdist workers share it through a
  file lock. Read-only: copy it (``shutil.copytree``) before evaluating or
  resuming into it."""
  import filelock

  from configs import default
  from lapjax.train import train_and_evaluate

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent                    # shared by this run's workers
  shared = root / "tiny-run"
  with filelock.FileLock(f"{shared}.lock"):
    if not shared.exists():
      partial = root / "tiny-run-partial"
      shutil.rmtree(partial, ignore_errors=True)
      with _optimised_mode():
        train_and_evaluate(default.get_config("tiny"), str(partial),
                           progress=False)
      partial.rename(shared)
  return shared
