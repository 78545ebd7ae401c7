"""Batches from random-access sources: training order and padded evaluation.

A *source* is anything with ``num_examples`` and ``get(indices) -> batch dict``
(``lapjax.data.sources``). Training batches are a pure function of
``(seed, step)``: epoch ``e`` visits a permutation drawn from ``(seed, e)`` and
drops the last partial batch, so a resumed run sees exactly the batches an
uninterrupted one would. Evaluation batches keep a fixed shape: the last one
is padded by repeating its first example, with ``valid [B] bool`` marking the
real rows (big_vision's convention: no recompilation, no biased mean).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class Source(Protocol):
  num_examples: int

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


def train_indices(num_examples: int, batch_size: int, step: int,
                  seed: int) -> np.ndarray:
  """The example indices of training batch ``step`` (``[batch_size]``)."""
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise ValueError(f"batch_size={batch_size} is larger than the "
                     f"{num_examples} training examples")
  epoch, within = divmod(step, per_epoch)
  order = np.random.default_rng((seed, epoch)).permutation(num_examples)
  return order[within * batch_size:(within + 1) * batch_size]


def train_batch(source: Source, batch_size: int, step: int,
                seed: int) -> dict[str, np.ndarray]:
  """Training batch number ``step``; see the module docstring."""
  return source.get(train_indices(source.num_examples, batch_size, step,
                                  seed))


def eval_batches(source: Source, batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """All examples once, in order, in fixed-size batches with ``valid``."""
  n = source.num_examples
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    valid = np.ones(batch_size, bool)
    valid[len(idx):] = False
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    batch = source.get(idx)
    batch["valid"] = valid
    yield batch
