"""Batches from random-access sources: training order and padded evaluation.

A *source* is anything with ``num_examples`` and ``get(indices) -> batch dict``
(``lapjax.data.sources``). Training batches are a pure function of
``(seed, step)``: epoch ``e`` visits a permutation drawn from ``(seed, e)`` and
drops the last partial batch, so a resumed run sees exactly the batches an
uninterrupted one would. Evaluation batches keep a fixed shape: the last one
is padded by repeating its first example, with ``valid [B] bool`` marking the
real rows (big_vision's convention: no recompilation, no biased mean).

Class-balanced training batches (``balanced_train_indices``, paper 000's
32 healthy + 32 pneumonia batches) are a pure function of ``(seed, step)``
too: each class walks through its own sequence of permutations, so a
resumed run draws the same batches as well.
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


def balanced_train_indices(labels: np.ndarray, num_classes: int,
                           batch_size: int, step: int, seed: int
                           ) -> np.ndarray:
  """The indices of class-balanced training batch ``step`` (``[batch]``).

  Every batch holds ``k = batch_size / num_classes`` examples of each
  class. Class ``c``'s examples (``n_c`` of them) are read as an endless
  sequence of permutations, permutation ``e`` drawn from ``(seed, c, e)``;
  batch ``s`` takes its elements ``s k .. (s + 1) k - 1``. So within a
  class every example is seen once before any is seen twice, and a class
  with fewer examples than others is repeated more often (oversampled).
  The rows of a batch are then shuffled with a key of ``(seed, s)``.

  Args:
    labels: ``[N]`` int, the class of every training example.
    num_classes: ``K``; every class in ``[0, K)`` must have an example.
    batch_size: divisible by ``num_classes``.
    step: the batch number.
    seed: the data seed.

  Raises:
    ValueError: ``batch_size`` is not a multiple of ``num_classes``, or a
      class has no training example.
  """
  labels = np.asarray(labels)
  if batch_size % num_classes:
    raise ValueError(f"balanced batches need batch_size divisible by the "
                     f"{num_classes} classes; got batch_size={batch_size} "
                     f"(use {batch_size - batch_size % num_classes} or "
                     f"{batch_size + num_classes - batch_size % num_classes}"
                     ")")
  per_class = batch_size // num_classes
  counts = np.bincount(labels, minlength=num_classes)[:num_classes]
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(f"balanced batches need an example of every class; "
                     f"classes {empty.tolist()} have none among the "
                     f"{len(labels)} training examples")
  order = np.argsort(labels, kind="stable")   # class c: order[start_c:...]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  positions = np.arange(step * per_class, (step + 1) * per_class)
  picked = []
  for c in range(num_classes):
    n = int(counts[c])
    epochs, within = np.divmod(positions, n)
    members = np.empty(per_class, np.int64)
    for e in np.unique(epochs):
      perm = np.random.default_rng((seed, 1, c, int(e))).permutation(n)
      rows = epochs == e
      members[rows] = perm[within[rows]]
    picked.append(order[starts[c] + members])
  batch = np.concatenate(picked)
  return batch[np.random.default_rng((seed, 2, step)).permutation(batch_size)]


def train_batch(source: Source, batch_size: int, step: int,
                seed: int, *, balanced_labels: np.ndarray | None = None,
                num_classes: int | None = None) -> dict[str, np.ndarray]:
  """Training batch number ``step``; see the module docstring.

  With ``balanced_labels`` (the labels of every example of ``source``) and
  ``num_classes``, the batch is class-balanced (``balanced_train_indices``).
  """
  if balanced_labels is not None:
    return source.get(balanced_train_indices(
        balanced_labels, num_classes, batch_size, step, seed))
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
