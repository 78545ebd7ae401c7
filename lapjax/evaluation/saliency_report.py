"""Explanation-aware training's saliency metrics for a run (paper 001,
Sec. 3.3).

On the positive images (label > 0) with at least one box: Grad-CAM of each
image's class at the explanation loss's layer, at that layer's resolution
and min-max normalised as in the loss, against the union of the image's
boxes: top-saliency precision (top ``fraction``), all-saliency precision
and annotation coverage (``tau``).

``stream_saliency`` computes the report section in the streaming
evaluator (``lapjax.evaluation.streaming``): per batch, one jitted
function explains every image and returns each metric's count, mean,
centred sum of squares and NaN count over the scored images (positive,
with a box, not padding), merged on the host; memory does not grow with
the number of images. ``saliency_evaluation`` is the in-memory version of
the same section on one batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import attribution as attr
from lapjax import explain_loss
from lapjax.attribution.checks import jit_checked
from lapjax.classifier import Classifier
from lapjax.data import boxes as boxes_lib
from lapjax.evaluation import streaming
from lapjax.metrics import nan_summary, saliency

SALIENCY_METRICS = ("top_precision", "all_precision", "coverage")
# The streaming state's group of this section's running summaries.
STATE_GROUP = "saliency_report"


def scored_images(labels, boxes_valid) -> np.ndarray | jax.Array:
  """``[B]`` bool: the images the section scores (label > 0, a box)."""
  return (labels > 0) & boxes_valid.any(-1)


def saliency_values(classifier: Classifier, images, labels, boxes, valid, *,
                    layer: str, fraction: float = 0.5, tau: float = 0.01
                    ) -> dict[str, jax.Array]:
  """``{'top_precision', 'all_precision', 'coverage'}``, ``[B]`` each, for
  every image of the batch (the caller keeps ``scored_images``; NaN
  without a box). Jittable."""
  cam = attr.grad_cam(classifier, images, labels, layer=layer,
                      resize=False)
  h = explain_loss.normalize_minmax(cam)
  mask = explain_loss.box_mask(boxes, valid, h.shape[1:], images.shape[1:3])
  return {
      "top_precision": saliency.top_saliency_precision(h, mask,
                                                       fraction=fraction),
      "all_precision": saliency.all_saliency_precision(h, mask),
      "coverage": saliency.annotation_coverage(
          h, boxes, valid, images.shape[1:3], fraction=fraction, tau=tau)}


def saliency_scores(classifier: Classifier, images, labels, boxes, valid, *,
                    layer: str, fraction: float = 0.5, tau: float = 0.01
                    ) -> dict[str, np.ndarray]:
  """``{'top_precision', 'all_precision', 'coverage'}``, one value per
  positive image with a box (``images [B, H, W, C]``, ``labels [B]``,
  ``boxes [B, N, 4]``, ``valid [B, N]``)."""
  keep = scored_images(np.asarray(labels), np.asarray(valid))
  x, boxes, valid = (jnp.asarray(a)[keep] for a in (images, boxes, valid))
  if not len(x):
    return {k: np.zeros(0) for k in SALIENCY_METRICS}
  return {k: np.asarray(v) for k, v in saliency_values(
      classifier, x, jnp.asarray(labels)[keep], boxes, valid, layer=layer,
      fraction=fraction, tau=tau).items()}


def saliency_evaluation(classifier: Classifier, batch: dict[str, Any], *,
                        layer: str, fraction: float) -> dict[str, Any]:
  """The report section, in memory: the summaries of ``saliency_scores`` on
  ``batch`` (``image``, ``label``, ``boxes``, ``boxes_valid``)."""
  scores = saliency_scores(classifier, batch["image"], batch["label"],
                           batch["boxes"], batch["boxes_valid"], layer=layer,
                           fraction=fraction)
  return {"layer": layer, "fraction": fraction,
          "scores": {k: nan_summary(v) for k, v in scores.items()}}


def saliency_statistics(classifier: Classifier, mesh: jax.sharding.Mesh, *,
                        layer: str, fraction: float, tau: float = 0.01
                        ) -> Any:
  """``jit_checked`` ``(images, labels, boxes, boxes_valid, valid) ->
  {metric: streaming.value_statistics}`` over the ``scored_images`` among
  the ``valid`` ones (padding excluded), replicated on ``mesh``."""
  def per_batch(images, labels, boxes, boxes_valid, valid):
    keep = valid & scored_images(labels, boxes_valid)
    values = saliency_values(classifier, images, labels, boxes, boxes_valid,
                             layer=layer, fraction=fraction, tau=tau)
    return streaming.replicate(
        {k: streaming.value_statistics(v, keep) for k, v in values.items()},
        mesh)
  return jit_checked(per_batch)


def stream_saliency(run_state: streaming.EvaluationState,
                    classifier: Classifier, source,
                    batches: list[tuple[int, int]],
                    mesh: jax.sharding.Mesh, progress: streaming.Progress, *,
                    batch_size: int, layer: str, fraction: float,
                    tau: float = 0.01, save_every: int) -> dict[str, Any]:
  """The report section over the images of ``batches`` (global ``(start,
  stop)``, padded to ``batch_size``), as phase ``'saliency'`` of
  ``run_state`` (resumable); equals ``saliency_evaluation`` on the same
  images.

  Raises:
    ValueError: a valid box outside its image (``boxes.validate_boxes``).
  """
  step = saliency_statistics(classifier, mesh, layer=layer,
                             fraction=fraction, tau=tau)

  def one(b):
    idx, valid = streaming.local_indices(*batches[b], batch_size)
    batch = source.get(idx)
    h, w = batch["image"].shape[1:3]
    boxes_lib.validate_boxes(batch["boxes"][valid][batch["boxes_valid"][
        valid]], h, w)
    x = streaming.mesh_inputs(mesh, image=batch["image"],
                              label=batch["label"].astype(np.int32),
                              boxes=batch["boxes"].astype(np.float32),
                              boxes_valid=batch["boxes_valid"], valid=valid)
    stats = jax.device_get(step(x["image"], x["label"], x["boxes"],
                                x["boxes_valid"], x["valid"]))
    for metric, value in stats.items():
      run_state.summary(STATE_GROUP, metric).add(
          np.asarray(value, np.float64))

  streaming.run_phase(run_state, "saliency", len(batches), one, progress,
                      save_every=save_every)
  return {"layer": layer, "fraction": fraction,
          "n_images": batches[-1][1] if batches else 0,
          "scores": {k: run_state.summary(STATE_GROUP, k).result(
              with_codes=False) for k in SALIENCY_METRICS}}


def markdown(section: dict[str, Any]) -> list[str]:
  lines = ["", f"## Saliency (paper 001: Grad-CAM of the true class at "
           f"`{section['layer']}`, top {section['fraction']:g}, positive "
           "images with boxes)", "", "| metric | mean ± std (n, NaN) |",
           "|---|---|"]
  for name, s in section["scores"].items():
    lines.append(f"| {name} | {s['mean']:.3f} ± {s['std']:.3f} "
                 f"(n={s['n']}, NaN={s['nan']}) |")
  return lines
