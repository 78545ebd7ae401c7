"""Explanation-aware training's saliency metrics for a run (paper 001,
Sec. 3.3).

On the positive images (label > 0) with at least one box: Grad-CAM of each
image's class at the explanation loss's layer, at that layer's resolution
and min-max normalised as in the loss, against the union of the image's
boxes: top-saliency precision (top ``fraction``), all-saliency precision
and annotation coverage (``tau``).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from lapjax import attribution as attr
from lapjax import explain_loss
from lapjax.classifier import Classifier
from lapjax.metrics import nan_summary, saliency


def saliency_scores(classifier: Classifier, images, labels, boxes, valid, *,
                    layer: str, fraction: float = 0.5, tau: float = 0.01
                    ) -> dict[str, np.ndarray]:
  """``{'top_precision', 'all_precision', 'coverage'}``, one value per
  positive image with a box (``images [B, H, W, C]``, ``labels [B]``,
  ``boxes [B, N, 4]``, ``valid [B, N]``)."""
  keep = (np.asarray(labels) > 0) & np.asarray(valid).any(-1)
  x, boxes, valid = (jnp.asarray(a)[keep] for a in (images, boxes, valid))
  if not len(x):
    return {k: np.zeros(0) for k in ("top_precision", "all_precision",
                                     "coverage")}
  cam = attr.grad_cam(classifier, x, jnp.asarray(labels)[keep], layer=layer,
                      resize=False)
  h = explain_loss.normalize_minmax(cam)
  mask = explain_loss.box_mask(boxes, valid, h.shape[1:], x.shape[1:3])
  return {k: np.asarray(v) for k, v in {
      "top_precision": saliency.top_saliency_precision(h, mask,
                                                       fraction=fraction),
      "all_precision": saliency.all_saliency_precision(h, mask),
      "coverage": saliency.annotation_coverage(
          h, boxes, valid, x.shape[1:3], fraction=fraction, tau=tau)}.items()}


def saliency_evaluation(classifier: Classifier, batch: dict[str, Any], *,
                        layer: str, fraction: float) -> dict[str, Any]:
  """The report section: the summaries of ``saliency_scores`` on
  ``batch`` (``image``, ``label``, ``boxes``, ``boxes_valid``)."""
  scores = saliency_scores(classifier, batch["image"], batch["label"],
                           batch["boxes"], batch["boxes_valid"], layer=layer,
                           fraction=fraction)
  return {"layer": layer, "fraction": fraction,
          "scores": {k: nan_summary(v) for k, v in scores.items()}}


def markdown(section: dict[str, Any]) -> list[str]:
  lines = ["", f"## Saliency (paper 001: Grad-CAM of the true class at "
           f"`{section['layer']}`, top {section['fraction']:g}, positive "
           "images with boxes)", "", "| metric | mean ± std (n, NaN) |",
           "|---|---|"]
  for name, s in section["scores"].items():
    lines.append(f"| {name} | {s['mean']:.3f} ± {s['std']:.3f} "
                 f"(n={s['n']}, NaN={s['nan']}) |")
  return lines
