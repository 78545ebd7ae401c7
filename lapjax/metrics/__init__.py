"""Metrics: pure functions of predictions, maps and masks (per example)."""

from lapjax.metrics.classification import (
                                           balanced_accuracy,
                                           classification_summary,
                                           confusion_matrix,
                                           f1_scores,
)
from lapjax.metrics.complexity import sparseness
from lapjax.metrics.faithfulness import (
                                           insertion_deletion,
                                           keep_top_accuracy,
                                           positive_negative,
                                           sic_aic,
                                           srg,
)
from lapjax.metrics.localization import (
                                           CONSTANT_MAP,
                                           EMPTY_MASK,
                                           FULL_MASK,
                                           NONFINITE_MAP,
                                           VALID,
                                           VALIDITY_NAMES,
                                           binarize_learned,
                                           f1,
                                           iou,
                                           learned_threshold,
                                           nan_summary,
                                           pointing_game,
                                           region_attribution,
                                           relevance_mass_accuracy,
                                           relevance_rank_accuracy,
                                           roc_auc,
                                           top_k_intersection,
                                           validity,
                                           worst_case,
)

__all__ = [
    "CONSTANT_MAP", "EMPTY_MASK", "FULL_MASK", "NONFINITE_MAP", "VALID",
    "VALIDITY_NAMES",
    "balanced_accuracy", "binarize_learned", "classification_summary",
    "confusion_matrix", "f1", "f1_scores", "insertion_deletion", "iou",
    "keep_top_accuracy", "learned_threshold", "nan_summary", "pointing_game",
    "positive_negative", "region_attribution", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "roc_auc", "sic_aic", "sparseness", "srg",
    "top_k_intersection", "validity", "worst_case",
]
