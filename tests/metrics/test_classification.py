"""Classification metrics on hand-computed cases."""

import numpy as np
import pytest

from lapjax.metrics import classification as cm


def test_hand_computed_case():
  labels = np.array([0, 0, 1, 1, 2])
  preds = np.array([0, 1, 1, 1, 0])
  logits = np.eye(3)[preds]
  s = cm.classification_summary(logits, labels)
  assert s["accuracy"] == pytest.approx(3 / 5)
  assert s["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
  np.testing.assert_allclose(s["f1_per_class"], [0.5, 0.8, 0.0])
  assert s["f1_macro"] == pytest.approx(1.3 / 3)
  assert s["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_absent_class_is_left_out_not_counted_as_zero():
  labels = np.array([0, 0, 1])
  preds = np.array([0, 0, 1])
  assert cm.balanced_accuracy(labels, preds, 3) == 1.0
  f1 = cm.f1_scores(labels, preds, 3)
  assert np.isnan(f1[2]) and f1[:2].tolist() == [1.0, 1.0]


def test_out_of_range_labels_are_refused():
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
    cm.confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
