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
