"""Binary classification metrics of the medical setting (paper 000, Tab. 6).

Sensitivity and specificity are the recalls of the positive and negative
class; balanced accuracy is their mean. The LAP paper reports them with
accuracy and F1 for its binary task (pneumonia present / absent, App.
D.2.1), where the trade-off between the two is what the LAP loss moves. All
are higher-is-better, in ``[0, 1]``; a rate whose class is absent from the
labels is undefined (NaN), and so is the F1 of a positive class that is
neither true nor predicted. NumPy, host-side, like
``lapjax.metrics.classification``.
"""

from __future__ import annotations

import math

import numpy as np
from jax.typing import ArrayLike


def binary_summary(labels: ArrayLike, predictions: ArrayLike, *,
                   positive: int = 1) -> dict[str, float | int]:
  r"""Accuracy, sensitivity, specificity, balanced accuracy and F1.

  With ``positive`` the positive class and every other label negative,

  .. math::
    \mathrm{sens} = \frac{TP}{TP + FN}, \quad
    \mathrm{spec} = \frac{TN}{TN + FP}, \quad
    \mathrm{BA} = \frac{\mathrm{sens} + \mathrm{spec}}{2}, \quad
    F_1 = \frac{2 TP}{2 TP + FP + FN}.

  Args:
    labels: ``[N]`` int true classes.
    predictions: ``[N]`` int predicted classes.
    positive: the positive class (the clue / finding class).

  Returns:
    ``{'n', 'tp', 'fp', 'tn', 'fn', 'accuracy', 'sensitivity',
    'specificity', 'balanced_accuracy', 'f1'}``.

  References:
    Paper 000 (LAP), App. D.2.1, Tab. 6.
  """
  y = np.asarray(labels).reshape(-1)
  p = np.asarray(predictions).reshape(-1)
  if y.shape != p.shape:
    raise ValueError(f"labels {y.shape} and predictions {p.shape} must have "
                     "the same shape")
  y, p = y == positive, p == positive
  tp, fp = int(np.sum(y & p)), int(np.sum(~y & p))
  tn, fn = int(np.sum(~y & ~p)), int(np.sum(y & ~p))

  def ratio(num, den):
    return num / den if den else math.nan

  sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
  return {"n": int(y.size), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
          "accuracy": ratio(tp + tn, y.size), "sensitivity": sens,
          "specificity": spec, "balanced_accuracy": (sens + spec) / 2,
          "f1": ratio(2 * tp, 2 * tp + fp + fn)}
