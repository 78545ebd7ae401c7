"""Metrics: pure functions of predictions, maps and masks (per example)."""

from lapjax.metrics.binary_classification import binary_summary
from lapjax.metrics.box_localization import (
                                           box_capture,
                                           box_masks,
                                           truncated_box_mask,
                                           truncated_iou,
)
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
from lapjax.metrics.lap_predictor import (
                                           StandalonePredictor,
                                           dc_size_features,
                                           fit_standalone_predictor,
                                           standalone_evaluation,
                                           standalone_logits,
                                           top_k_accuracy,
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
                                           ranking_metrics,
                                           region_attribution,
                                           relevance_mass_accuracy,
                                           relevance_rank_accuracy,
                                           roc_auc,
                                           top_k_intersection,
                                           validity,
                                           worst_case,
)
from lapjax.metrics.significance import (
                                           format_comparison,
                                           format_p_value,
                                           paired_t_test,
                                           unpaired_t_test,
)

__all__ = [
    "CONSTANT_MAP", "EMPTY_MASK", "FULL_MASK", "NONFINITE_MAP", "VALID",
    "VALIDITY_NAMES", "StandalonePredictor",
    "balanced_accuracy", "binarize_learned", "binary_summary", "box_capture",
    "box_masks", "classification_summary", "confusion_matrix",
    "dc_size_features", "f1", "f1_scores", "fit_standalone_predictor",
    "format_comparison", "format_p_value", "insertion_deletion", "iou",
    "keep_top_accuracy", "learned_threshold", "nan_summary", "paired_t_test",
    "pointing_game", "positive_negative", "ranking_metrics",
    "region_attribution", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "roc_auc", "sic_aic", "sparseness", "srg",
    "standalone_evaluation", "standalone_logits", "top_k_accuracy",
    "top_k_intersection", "truncated_box_mask", "truncated_iou",
    "unpaired_t_test", "validity", "worst_case",
]
