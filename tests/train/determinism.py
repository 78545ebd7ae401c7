"""A shared check: training steps are bit-for-bit reproducible."""

import jax
import numpy as np


def run_twice(step, state, batches):
  """Runs ``step`` over ``batches`` twice from ``state``; asserts both runs
  end with bit-identical states and metrics; returns ``(state, metrics)``
  of the first."""
  runs = []
  for _ in range(2):
    s = state
    for batch in batches:
      s, metrics = step(s, batch)
    runs.append((s, metrics))
  for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
    np.testing.assert_array_equal(a, b)
  return runs[0]
