"""Distinguishing-clue (DC) systems: which DCs promote which classes.

A DC system is a membership matrix ``[M, N]`` over ``M`` DCs and ``N``
classes: ``+1`` where the class is in ``Y^{dc_m+}`` (the DC promotes it),
``-1`` where it is in ``Y^{dc_m-}`` (the DC must be absent), ``0`` where the
DC says nothing about the class. It must satisfy the completeness condition
of Eq. 2 of paper 000: every class is either the single background-only
class (BGO: in no ``DC+`` set) or the only class in the intersection of the
``DC+`` sets of the DCs that promote it.

Reference: Sec. 2.1 of "Enhancing Interpretability: A Versatile Clue-Based
Framework for Faithful In-Depth Interpretations" (LAP, paper 000).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class DCSystem(NamedTuple):
  """A validated DC system.

  Attributes:
    membership: ``[M, N]`` int8, +1 DC+, -1 DC-, 0 neither.
    bgo: the background-only class, or None.
  """
  membership: np.ndarray
  bgo: int | None

  @property
  def num_dcs(self) -> int:
    return self.membership.shape[0]

  @property
  def num_classes(self) -> int:
    return self.membership.shape[1]

  def class_weights(self) -> np.ndarray:
    """``[N, M]``: the map of class ``c`` is the mean of the maps of the DCs
    that promote it (one DC per class for one-vs-others and binary); the
    BGO row is zero (it has no evidence region)."""
    plus = (self.membership == 1).T.astype(np.float32)
    return plus / np.maximum(plus.sum(axis=1, keepdims=True), 1)


def dc_system(membership, *, name: str = "membership") -> DCSystem:
  """Validates a membership matrix (Eq. 2 completeness) into a ``DCSystem``.

  Raises:
    ValueError: not a ``[M, N]`` matrix of -1/0/+1 with M, N >= 1; a DC with
      an empty DC+ set; more than one class in no DC+ set (at most one BGO);
      a class whose promoting DCs also all promote another class (the
      intersection of their DC+ sets is not the class alone).
  """
  m = np.asarray(membership)
  if m.ndim != 2 or 0 in m.shape:
    raise ValueError(f"{name} must be a [M, N] matrix (M DCs, N classes); "
                     f"got shape {m.shape}")
  if not np.isin(m, (-1, 0, 1)).all():
    raise ValueError(f"{name} entries must be +1 (DC+), -1 (DC-) or 0; got "
                     f"values {sorted(set(np.unique(m).tolist()))}")
  m = m.astype(np.int8)
  plus = m == 1
  empty = np.flatnonzero(~plus.any(axis=1))
  if empty.size:
    raise ValueError(f"{name}: DC(s) {empty.tolist()} promote no class (an "
                     "empty DC+ set)")
  unpromoted = np.flatnonzero(~plus.any(axis=0))
  if unpromoted.size > 1:
    raise ValueError(
        f"{name} is not complete (Eq. 2): classes {unpromoted.tolist()} are "
        "in no DC+ set, but at most one class may be background-only (BGO); "
        "add a DC for each of them")
  for c in range(m.shape[1]):
    dcs = plus[:, c]
    if not dcs.any():
      continue
    common = np.flatnonzero(plus[dcs].all(axis=0))
    if common.tolist() != [c]:
      raise ValueError(
          f"{name} is not complete (Eq. 2): the DCs promoting class {c} "
          f"({np.flatnonzero(dcs).tolist()}) all promote classes "
          f"{common.tolist()}, so they cannot tell class {c} apart")
  bgo = int(unpromoted[0]) if unpromoted.size else None
  return DCSystem(m, bgo)


def one_vs_others(num_classes: int, *, bgo: int | None = None) -> DCSystem:
  """One DC per class (or per non-BGO class): DC+ = {c}, DC- = the rest.

  With ``bgo``, that class gets no DC (``num_classes - 1`` DCs), as in the
  clue benchmark (class 0) and the LAP paper's 4-class example.
  """
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2; got {num_classes}")
  if bgo is not None and not 0 <= bgo < num_classes:
    raise ValueError(f"bgo must be a class in [0, {num_classes}); got {bgo}")
  classes = [c for c in range(num_classes) if c != bgo]
  m = -np.ones((len(classes), num_classes), np.int8)
  m[np.arange(len(classes)), classes] = 1
  return dc_system(m)


def binary(*, positive: int = 1) -> DCSystem:
  """Clue present / absent: one DC, DC+ = {positive}, the other class BGO."""
  if positive not in (0, 1):
    raise ValueError(f"positive must be 0 or 1; got {positive}")
  m = -np.ones((1, 2), np.int8)
  m[0, positive] = 1
  return dc_system(m)


def custom(plus: Sequence[Sequence[int]], minus: Sequence[Sequence[int]],
           num_classes: int) -> DCSystem:
  """A DC system from explicit DC+ and DC- class sets (one pair per DC)."""
  if len(plus) != len(minus):
    raise ValueError(f"plus and minus must list the same number of DCs; got "
                     f"{len(plus)} and {len(minus)}")
  m = np.zeros((len(plus), num_classes), np.int8)
  for i, (p, n) in enumerate(zip(plus, minus)):
    both = set(p) & set(n)
    if both:
      raise ValueError(f"DC {i}: classes {sorted(both)} are in both DC+ and "
                       "DC-")
    for c in (*p, *n):
      if not 0 <= c < num_classes:
        raise ValueError(f"DC {i}: class {c} outside [0, {num_classes})")
    m[i, list(p)] = 1
    m[i, list(n)] = -1
  return dc_system(m)


def check_labels(labels, dcs: DCSystem, *, name: str = "labels") -> None:
  """Raises ValueError unless concrete ``labels`` are classes of ``dcs``."""
  lab = np.asarray(labels)
  if lab.size and (lab.min() < 0 or lab.max() >= dcs.num_classes):
    raise ValueError(
        f"{name} must be classes of the DC system, in [0, {dcs.num_classes})"
        f"; got values in [{lab.min()}, {lab.max()}]")
