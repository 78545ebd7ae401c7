"""Metrics: pure functions of predictions, maps and masks."""

from lapjax.metrics.classification import (
                                           balanced_accuracy,
                                           classification_summary,
                                           confusion_matrix,
                                           f1_scores,
)

__all__ = ["balanced_accuracy", "classification_summary", "confusion_matrix",
           "f1_scores"]
