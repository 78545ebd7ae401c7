"""What the benchmark scripts share."""

import statistics
import time

import jax


def timed(f, *args, reps: int) -> float:
  """Median seconds of ``f(*args)`` over ``reps`` calls after one warm-up
  call (compilation excluded)."""
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def timed_side_by_side(calls: dict, *, reps: int) -> dict:
  """Median seconds per name for ``calls = {name: (f, args)}``, timed in
  interleaved rounds (one call of each per round, after one warm-up call
  each), so that a slow spell of the machine hits every entry alike and
  their ratios stay comparable."""
  for f, args in calls.values():
    jax.block_until_ready(f(*args))
  times = {name: [] for name in calls}
  for _ in range(reps):
    for name, (f, args) in calls.items():
      t = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}
