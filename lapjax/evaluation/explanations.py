"""Every configured attribution method scored by every localisation metric
and every faithfulness metric.

Maps explain each test image's true class. Metrics (``lapjax.metrics``),
per image, NaN where undefined (the background-only class has an empty clue
mask) and counted: pointing game, relevance mass and rank accuracy, top-k
intersection (k = 5 % of the pixels), ROC AUC, IoU and F1 of the map's
positive part binarised at ``mean + std``, region attribution (paper 003),
and sparseness (Gini, of ``|map|``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import metrics
from lapjax.attribution import postprocess
from lapjax.attribution.checks import jit_checked
from lapjax.classifier import Classifier
from lapjax.evaluation.methods import Method
from lapjax.metrics.localization import ranking_metrics


def localization_scores(maps: jax.Array, masks: jax.Array
                        ) -> dict[str, np.ndarray]:
  """``{metric: [N]}`` for maps ``[N, H, W]`` and masks ``[N, H, W]``."""
  return {name: np.asarray(v)
          for name, v in localization_values(maps, masks).items()}


def localization_values(maps: jax.Array, masks: jax.Array
                        ) -> dict[str, jax.Array]:
  """``localization_scores`` as JAX arrays (jittable)."""
  maps, masks = jnp.asarray(maps), jnp.asarray(masks)
  k = max(1, int(0.05 * maps.shape[1] * maps.shape[2]))
  binary = postprocess.binarize_mean_std(jax.nn.relu(maps))
  # Rank accuracy, top-k, ROC AUC and sparseness share one sort per map.
  ranked = ranking_metrics(maps, masks, k=k)
  out = {
      "pointing_game": metrics.pointing_game(maps, masks),
      "relevance_mass": metrics.relevance_mass_accuracy(maps, masks),
      "relevance_rank": ranked["relevance_rank"],
      "top_k_intersection": ranked["top_k_intersection"],
      "roc_auc": ranked["roc_auc"],
      "iou": metrics.iou(binary, masks),
      "f1": metrics.f1(binary, masks),
      "region_attribution": metrics.region_attribution(maps, masks),
      "sparseness": ranked["sparseness"],
  }
  return out


# Jitted once per classifier (and steps), shared by every method's maps.
_positive_negative = jax.jit(metrics.positive_negative, static_argnums=0,
                             static_argnames="baseline")
_insertion_deletion = jax.jit(metrics.insertion_deletion, static_argnums=0,
                              static_argnames=("steps", "baseline"))


def faithfulness_scores(classifier: Classifier, images: np.ndarray,
                        labels: np.ndarray, maps: np.ndarray, *,
                        key: jax.Array, steps: int = 20, batch_size: int = 32,
                        baseline: float | str = 0.0, sic_aic: bool = True
                        ) -> tuple[dict[str, np.ndarray], int]:
  """``({metric: [N]}, SIC/AIC skipped count)`` for maps ``[N, H, W]`` of
  the ``labels``, every metric explaining the label's class.

  POS / NEG (top-1 accuracy, 0-90 %), DEL / INS (probability, ``steps`` + 1
  points), NPD = NEG - POS, IDD = INS - DEL, and unless ``sic_aic`` is
  False AIC / SIC (``metrics.faithfulness``); POS to INS perturb towards
  ``baseline`` (0: black for images in ``[0, 1]``; or ``'blur'``); AUCs in
  percent.
  """
  names = ("pos", "neg", "del", "ins", "npd", "idd")
  out: dict[str, list] = {k: [] for k in names + (("aic", "sic") if sic_aic
                                                   else ())}
  skipped = 0
  for i in range(0, len(images), batch_size):
    x = jnp.asarray(images[i:i + batch_size])
    m = jnp.asarray(maps[i:i + batch_size])
    t = jnp.asarray(labels[i:i + batch_size], jnp.int32)
    scores = {**_positive_negative(classifier, x, m, t, baseline=baseline),
              **_insertion_deletion(classifier, x, m, t, steps=steps,
                                    baseline=baseline)}
    if sic_aic:
      pic = metrics.sic_aic(classifier, x, m, t,
                            key=jax.random.fold_in(key, i))
      skipped += pic["n_skipped"]
      scores.update(aic=pic["aic"], sic=pic["sic"])
    for k in out:
      out[k].append(np.asarray(scores[k]))
  return {k: np.concatenate(v) for k, v in out.items()}, skipped


def explainer(classifiers: Mapping[str, Classifier],
              methods: dict[str, Method], *, batch_size: int = 32
              ) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
  """``explain`` with its jitted methods built once: a function ``(images
  [N, H, W, C], labels [N]) -> {method: maps [N, H, W]}`` to call on many
  batches without recompiling (for a fixed batch shape)."""
  functions = {
      name: jit_checked(lambda x, t, m=m: m.fn(classifiers[m.classifier], x,
                                               t, **m.kwargs))
      for name, m in methods.items()}

  def run(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name, f in functions.items():
      batches = []
      for i in range(0, len(images), batch_size):
        last = min(i + batch_size, len(images)) - 1
        where = f"method {name!r}, images {i} to {last}"
        try:
          maps = np.asarray(f(jnp.asarray(images[i:i + batch_size]),
                              jnp.asarray(labels[i:i + batch_size],
                                          jnp.int32)))
        except ValueError as e:
          raise ValueError(f"{where}: {e}") from e
        bad = np.flatnonzero(~np.isfinite(maps).reshape(len(maps),
                                                        -1).all(1))
        if len(bad):
          raise ValueError(
              f"{where}: maps must be finite; got NaN or inf in the maps of "
              f"images {(i + bad[:8]).tolist()} (is the model's output "
              "finite on them?)")
        batches.append(maps)
      out[name] = np.concatenate(batches)
    return out

  return run


def explain(classifiers: Mapping[str, Classifier],
            images: np.ndarray, labels: np.ndarray,
            methods: dict[str, Method], *, batch_size: int = 32
            ) -> dict[str, np.ndarray]:
  """Maps ``[N, H, W]`` of every method for the given labels (jitted,
  ``batch_size`` images per call); ``classifiers`` maps each
  ``Method.classifier`` kind to its classifier (``method_classifiers``).

  The methods' input checks hold under this ``jit`` (``jit_checked``):
  non-finite images, labels outside ``[0, K)`` or SLOC's non-finite model
  outputs raise a ``ValueError`` naming the method and the batch, and so do
  maps that are not finite, instead of NaN or all-zero maps in the report.
  """
  return explainer(classifiers, methods, batch_size=batch_size)(images,
                                                                labels)
