"""Sensitivity, specificity and the binary summary (paper 000, Tab. 6)."""

import math

import numpy as np
import pytest

from lapjax import metrics
from lapjax.metrics.binary_classification import binary_summary


def test_binary_summary_closed_form():
  labels = np.array([1, 1, 1, 0, 0])
  preds = np.array([1, 0, 1, 0, 1])         # TP 2, FN 1, TN 1, FP 1
  s = binary_summary(labels, preds)
  assert (s["tp"], s["fn"], s["tn"], s["fp"], s["n"]) == (2, 1, 1, 1, 5)
  assert s["sensitivity"] == pytest.approx(2 / 3)
  assert s["specificity"] == pytest.approx(1 / 2)
  assert s["accuracy"] == pytest.approx(3 / 5)
  assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
  assert s["f1"] == pytest.approx(4 / 6)
  # Consistent with the multi-class metrics of the same predictions.
  assert s["balanced_accuracy"] == pytest.approx(
      metrics.balanced_accuracy(labels, preds, 2))
  assert s["f1"] == pytest.approx(metrics.f1_scores(labels, preds, 2)[1])


def test_positive_class_and_other_labels():
  # Positive class 0 (say, a BGO-first labelling); class 2 counts negative.
  labels = np.array([0, 0, 1, 2, 2])
  preds = np.array([0, 1, 1, 0, 2])
  s = binary_summary(labels, preds, positive=0)
  assert (s["tp"], s["fn"], s["tn"], s["fp"]) == (1, 1, 2, 1)
  swapped = binary_summary(labels == 0, preds == 0, positive=True)
  assert swapped == s


def test_undefined_rates_are_nan():
  s = binary_summary([0, 0, 0], [0, 1, 0])
  assert math.isnan(s["sensitivity"]) and math.isnan(s["balanced_accuracy"])
  assert s["specificity"] == pytest.approx(2 / 3)
  assert s["f1"] == 0.0                        # one FP, no TP
  assert math.isnan(binary_summary([0, 0], [0, 0])["f1"])
  with pytest.raises(ValueError, match="same shape"):
    binary_summary([0, 1], [0, 1, 1])
