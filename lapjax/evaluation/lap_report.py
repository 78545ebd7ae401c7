"""The LAP paper's evaluation (paper 000, Sec. 3.2-3.3, App. D.2, D.5).

On correctly classified clue images of the test split, explaining the
predicted (= true) class, for every configured method and every LAP map:

* IoU of the binarised positive part with the true clue mask under the
  binarisations of App. D.2.2: ``mu_sigma`` (mean + std of each map),
  ``top_k_gt`` (as many pixels as the clue has), ``learned`` (a global
  threshold on max-normalised maps from a class-balanced ridge classifier
  fit on validation pixels), and LAP's own ``0.5`` threshold for LAP maps;
* SRG (App. D.2.3; retention 0.5 .. 1, accuracy w.r.t. the prediction,
  black baseline) and keep-top-k % accuracy (Sec. 3.3);
* LAPs as standalone predictors (App. D.5.1) on every test image: a DC is
  detected when some element of its map exceeds 0.5; the LAP's class is
  the detected DC with the highest peak (the BGO class when none is
  detected); F1 w.r.t. the labels (predictivity) and the model's
  predictions (compatibility), macro over classes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import metrics
from lapjax.attribution import core, postprocess
from lapjax.attribution.lap_maps import dc_maps
from lapjax.classifier import Classifier, from_flax
from lapjax.evaluation import explanations
from lapjax.evaluation.methods import method_classifiers, standard_methods
from lapjax.lap.dcs import DCSystem, dc_system
from lapjax.metrics import nan_summary

BINARIZATIONS = ("mu_sigma", "top_k_gt", "learned", "lap_0.5")
BASELINE_METHODS = ("gradient", "input_x_gradient", "integrated_gradients",
                    "guided_backprop", "grad_cam", "guided_grad_cam",
                    "lrp", "deeplift", "relevance_cam")


def _correct_clue_images(clf: Classifier, batch: dict, dcs: DCSystem
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Indices of clue images classified correctly, and all predictions."""
  pred = np.asarray(jax.jit(lambda x: core.chunked_map(
      lambda xs: clf.apply(xs)[0].argmax(-1), x, 128))(
          jnp.asarray(batch["image"])))
  clue = batch["label"] != (-1 if dcs.bgo is None else dcs.bgo)
  keep = np.flatnonzero(clue & (pred == batch["label"])
                        & batch["mask"].any(axis=(1, 2)))
  return keep, pred


def standalone_predictions(maps: list[np.ndarray], dcs: DCSystem
                           ) -> list[np.ndarray]:
  """Per LAP, ``[B]`` classes predicted from its maps alone (App. D.5.1)."""
  out = []
  for m in maps:
    peak = np.asarray(m).max(axis=(1, 2))                   # [B, M]
    best_dc = peak.argmax(-1)
    detected = peak.max(-1) > 0.5
    dc_class = (dcs.membership == 1).argmax(-1)             # first DC+ class
    if dcs.bgo is None:                   # no BGO: the best DC regardless
      out.append(dc_class[best_dc])
    else:
      out.append(np.where(detected, dc_class[best_dc], dcs.bgo))
  return out


def lap_evaluation(config, model, variables, test_source, val_source, *,
                   lap_layers: tuple[str, ...], membership,
                   key: jax.Array) -> dict[str, Any]:
  """The LAP paper's tables for one trained run (see the module doc).

  Uses ``config.evaluation``: ``layer`` (CAM layer), ``methods`` (those of
  ``BASELINE_METHODS`` and ``'lap'`` are scored), ``lap_images`` test and
  ``lap_val_images`` validation images, ``ig_steps``.
  """
  e = config.evaluation
  dcs = dc_system(membership)
  clf = from_flax(model, variables, layers=[e.layer, *lap_layers])
  table = standard_methods(e.layer, key=key, image_size=1,  # no occlusion
                           ig_steps=e.ig_steps, lap_layers=lap_layers,
                           dcs=dcs, lap_decay=config.lap.decay)
  wanted = [m for m in e.methods if m in BASELINE_METHODS]
  methods = {m: table[m] for m in wanted}
  if lap_layers:
    methods.update({m: v for m, v in table.items() if m.startswith("lap")})
  image_shape = test_source.get(np.arange(1))["image"].shape[1:]
  clfs = {**method_classifiers(methods, model, variables, layers=[e.layer],
                               input_shape=image_shape), "plain": clf}

  def explained(source, n):
    batch = source.get(np.arange(min(n, source.num_examples)))
    keep, pred = _correct_clue_images(clf, batch, dcs)
    if not len(keep):
      return batch, keep, pred, None
    maps = explanations.explain(clfs, batch["image"][keep],
                                batch["label"][keep], methods)
    return batch, keep, pred, {k: np.maximum(v, 0) for k, v in maps.items()}

  test, keep, pred, maps = explained(test_source, e.lap_images)
  if maps is None:
    return {"n_images": 0, "note": "no correctly classified clue image"}
  val, vkeep, _, vmaps = explained(val_source, e.lap_val_images)
  masks = jnp.asarray(test["mask"][keep])
  counts = masks.sum(axis=(1, 2))
  iou, srg, keep_top, thresholds = {}, {}, {}, {}
  x, targets = jnp.asarray(test["image"][keep]), jnp.asarray(pred[keep])
  srg_fn = jax.jit(metrics.srg, static_argnums=0)
  keep_fn = jax.jit(metrics.keep_top_accuracy, static_argnums=0)
  for name, m in maps.items():
    m = jnp.asarray(m)
    binary = {"mu_sigma": postprocess.binarize_mean_std(m),
              "top_k_gt": postprocess.binarize_top_count(m, counts)}
    if vmaps is None:
      thresholds[name] = "no correctly classified validation clue image"
    else:
      try:
        thresholds[name] = metrics.learned_threshold(vmaps[name],
                                                     val["mask"][vkeep])
        binary["learned"] = metrics.binarize_learned(m, thresholds[name])
      except ValueError as err:     # the map does not separate the pixels
        thresholds[name] = str(err)
    if name.startswith("lap"):
      binary["lap_0.5"] = m > 0.5
    iou[name] = {b: nan_summary(metrics.iou(v, masks))
                 for b, v in binary.items()}
    # The metrics chunk their forward passes (chunk_size) themselves.
    srg[name] = nan_summary(srg_fn(clf, x, m, targets)["srg"])
    keep_top[name] = np.asarray(keep_fn(clf, x, m, targets)).mean(0).tolist()
  report = {"n_images": int(len(keep)), "n_validation_images": int(len(vkeep)),
            "iou": iou, "srg": srg, "keep_top_accuracy": {
                "fractions": list(metrics.faithfulness.KEEP_FRACTIONS),
                **keep_top},
            "learned_thresholds": thresholds}
  if lap_layers:
    _, lap_outs = dc_maps(clf, jnp.asarray(test["image"]), layers=lap_layers)
    per_lap = standalone_predictions([np.asarray(m) for m in lap_outs], dcs)
    k = dcs.num_classes
    report["standalone"] = {
        f"lap{i + 1}": {
            "predictivity_f1": float(np.nanmean(metrics.f1_scores(
                test["label"], p, k))),
            "compatibility_f1": float(np.nanmean(metrics.f1_scores(
                pred, p, k)))}
        for i, p in enumerate(per_lap)}
  return report


def markdown(report: dict[str, Any]) -> list[str]:
  """Markdown tables of a ``lap_evaluation`` report."""
  if not report["n_images"]:
    return ["", f"## LAP paper evaluation: {report['note']}"]
  lines = ["", f"## LAP paper evaluation ({report['n_images']} correctly "
           "classified clue images; IoU in percent, mean ± std)", "",
           "| method | " + " | ".join(BINARIZATIONS) + " | SRG |",
           "|---" * (len(BINARIZATIONS) + 2) + "|"]
  for name, per in report["iou"].items():
    cells = [f"{100 * per[b]['mean']:.1f} ± {100 * per[b]['std']:.1f}"
             if b in per else "" for b in BINARIZATIONS]
    s = report["srg"][name]
    lines.append(f"| {name} | " + " | ".join(cells)
                 + f" | {s['mean']:.3f} |")
  if "standalone" in report:
    lines += ["", "| LAP as a predictor | predictivity F1 | compatibility "
              "F1 |", "|---|---|---|"]
    for name, s in report["standalone"].items():
      lines.append(f"| {name} | {s['predictivity_f1']:.3f} | "
                   f"{s['compatibility_f1']:.3f} |")
  return lines
