"""Classification metrics from integer predictions and labels (NumPy).

All are higher-is-better, in [0, 1]. Classes absent from the labels are left
out of balanced accuracy (their recall is undefined), and a class with no
true and no predicted example has an undefined F1 (NaN, left out of the
macro mean); the count of classes used is returned with the summary.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """``[K, K]`` counts, rows = true class, columns = predicted class."""
  labels = np.asarray(labels).reshape(-1)
  predictions = np.asarray(predictions).reshape(-1)
  if labels.shape != predictions.shape:
    raise ValueError(f"labels {labels.shape} and predictions "
                     f"{predictions.shape} must have the same shape")
  for name, v in (("labels", labels), ("predictions", predictions)):
    if v.size and (v.min() < 0 or v.max() >= num_classes):
      raise ValueError(f"{name} must be in [0, {num_classes}); got "
                       f"[{v.min()}, {v.max()}]")
  return np.bincount(labels * num_classes + predictions,
                     minlength=num_classes**2).reshape(num_classes,
                                                       num_classes)


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray,
                      num_classes: int) -> float:
  """Mean per-class recall over the classes present in ``labels``."""
  cm = confusion_matrix(labels, predictions, num_classes)
  support = cm.sum(1)
  present = support > 0
  return float(np.mean(np.diag(cm)[present] / support[present]))


def f1_scores(labels: np.ndarray, predictions: np.ndarray,
              num_classes: int) -> np.ndarray:
  """Per-class F1 ``[K]`` (NaN for a class never true nor predicted)."""
  cm = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
  tp = np.diag(cm)
  denom = cm.sum(0) + cm.sum(1)            # 2TP + FP + FN
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, 2 * tp / denom, np.nan)


def classification_summary(logits: np.ndarray, labels: np.ndarray
                           ) -> dict[str, float | int | list]:
  """Accuracy, balanced accuracy, macro F1 and per-class F1 from logits.

  Args:
    logits: ``[N, K]``.
    labels: ``[N]`` int.

  Returns:
    A JSON-ready dict (``n`` is the number of examples).
  """
  logits = np.asarray(logits)
  num_classes = logits.shape[-1]
  predictions = logits.argmax(-1)
  f1 = f1_scores(labels, predictions, num_classes)
  return {
      "n": int(len(labels)),
      "accuracy": float(np.mean(predictions == labels)),
      "balanced_accuracy": balanced_accuracy(labels, predictions,
                                             num_classes),
      "f1_macro": float(np.nanmean(f1)),
      "f1_per_class": [None if np.isnan(v) else float(v) for v in f1],
      "confusion_matrix": confusion_matrix(labels, predictions,
                                           num_classes).tolist(),
  }
