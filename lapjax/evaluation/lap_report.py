"""The LAP paper's evaluation (paper 000, Sec. 3.2-3.3, App. D.2, D.5).

On correctly classified clue images of the test split, explaining the
predicted (= true) class, for every configured method and every LAP map:

* IoU of the binarised positive part with the true clue mask under the
  binarisations of App. D.2.2: ``mu_sigma`` (mean + std of each map),
  ``top_k_gt`` (as many pixels as the clue has), ``learned`` (a global
  threshold on max-normalised maps from a class-balanced ridge classifier
  fit on validation pixels), and LAP's own ``0.5`` threshold for LAP maps;
* box-capture sensitivity (a clue box is captured when at least half of
  it is in the binarised map; pooled over the boxes) and truncated IoU
  (each box cut to the half of its pixels the map scores highest), under
  the same binarisations (App. D.2.4), where the data carry boxes;
* SRG (App. D.2.3; retention 0.5 .. 1, accuracy w.r.t. the prediction,
  black baseline) and keep-top-k % accuracy (Sec. 3.3, Fig. 5: the top
  10 .. 90 % of pixels kept, the rest black, accuracy w.r.t. the
  prediction);
* paired t-tests over the images (the paper's test, Sec. 4, App. D.2.2) of
  the depth-aggregated LAP map (``lap``) against every other method, for
  each IoU binarisation, truncated IoU and SRG: mean difference (LAP minus
  the method), its standard error and the two-sided p-value;
* LAPs as standalone predictors (App. D.5.1) on every test image: a DC is
  detected when some element of its map exceeds 0.5; the LAP's class is
  the detected DC with the highest peak (the BGO class when none is
  detected); F1 w.r.t. the labels (predictivity) and the model's
  predictions (compatibility), macro over classes;
* with more classes, each LAP also as the paper's ImageNet-setting
  predictor (App. D.5.2): a 2-layer MLP on its DC-size features (the sum
  of each DC map), trained on the validation images' maps with their
  labels and scored on the test images: top-1 (and top-5 with more than 5
  classes) accuracy w.r.t. the labels and the model's predictions;
* on a binary task (one clue class and the BGO class), the model's
  accuracy, sensitivity, specificity, balanced accuracy and F1 on the
  evaluated test images (App. D.2.1, Tab. 6), and each standalone LAP's
  sensitivity and specificity.
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
from lapjax.metrics.binary_classification import binary_summary
from lapjax.metrics.significance import format_comparison, paired_t_test

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


def binary_positive_class(dcs: DCSystem) -> int | None:
  """The clue class of a binary task (two classes, one of them BGO), else
  None (no sensitivity / specificity)."""
  if dcs.num_classes != 2 or dcs.bgo is None:
    return None
  return 1 - dcs.bgo


def box_scores(maps: jax.Array, binary: dict[str, jax.Array],
               boxes: jax.Array, boxes_valid: jax.Array
               ) -> dict[str, dict[str, np.ndarray]]:
  """Box capture and truncated IoU of one method, per image (App. D.2.4).

  Args:
    maps: ``[B, H, W]`` the method's maps (they rank each box's pixels).
    binary: ``{binarisation: [B, H, W] bool}``, the maps binarised.
    boxes: ``[B, N, 4]`` boxes ``(y0, x0, y1, x1)``.
    boxes_valid: ``[B, N]`` bool.

  Returns:
    Per binarisation ``{'n_captured': [B], 'n_boxes': [B],
    'truncated_iou': [B]}``; ``pooled_capture`` of the counts summed over
    images is the box-capture sensitivity.
  """
  out = {}
  for b, v in binary.items():
    c = metrics.box_capture(v, boxes, boxes_valid)
    out[b] = {"n_captured": np.asarray(c["n_captured"]),
              "n_boxes": np.asarray(c["n_boxes"]),
              "truncated_iou": np.asarray(metrics.truncated_iou(
                  maps, v, boxes, boxes_valid))}
  return out


def pooled_capture(n_captured: int, n_boxes: int) -> dict[str, float | int]:
  """Box-capture sensitivity pooled over boxes: captured boxes / boxes
  (NaN without boxes)."""
  return {"sensitivity": n_captured / n_boxes if n_boxes else float("nan"),
          "n_captured": int(n_captured), "n_boxes": int(n_boxes)}


def paired_comparisons(per_image: dict[str, dict[str, np.ndarray]], *,
                       reference: str = "lap") -> dict[str, dict[str, dict]]:
  """Paired t-tests of ``reference`` against every other method.

  Args:
    per_image: ``{score name: {method: [n] per-image values}}``, the same
      images in the same order for every method (NaN: undefined, dropped
      pairwise).
    reference: the method compared with the others; methods named
      ``reference`` + a suffix (``lap1``, ``lap2``: its parts) are left
      out.

  Returns:
    ``{score name: {method: paired_t_test(reference, method)}}`` (two-sided)
    for the scores that the reference and some other method have.
  """
  out = {}
  for score, by_method in per_image.items():
    if reference not in by_method:
      continue
    tests = {m: paired_t_test(by_method[reference], v)
             for m, v in by_method.items() if not m.startswith(reference)}
    if tests:
      out[score] = tests
  return out


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


def _padded(indices: np.ndarray, size: int) -> np.ndarray:
  """``indices`` extended to ``size`` by repeating its last entry: every
  batch has one shape (one compilation); the repeats are dropped."""
  return np.concatenate([indices, np.full(size - len(indices), indices[-1])])


def lap_evaluation(config, model, variables, test_source, val_source, *,
                   lap_layers: tuple[str, ...], membership,
                   key: jax.Array) -> dict[str, Any]:
  """The LAP paper's tables for one trained run (see the module doc).

  Uses ``config.evaluation``: ``layer`` (CAM layer), ``methods`` (those of
  ``BASELINE_METHODS`` and ``'lap'`` are scored), ``lap_images`` test and
  ``lap_val_images`` validation images, ``ig_steps``, ``batch_size``.

  The test images stream ``batch_size`` at a time (the last batch padded,
  so one compilation), keeping only a few numbers per image (for the
  paired tests) and no maps: ``lap_images`` may be the whole split at
  constant memory. The validation images (the learned thresholds and the
  App. D.5.2 predictor's training set) are explained at once.
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
  n_test = min(e.lap_images, test_source.num_examples)
  chunk = min(e.batch_size, n_test)
  explain = explanations.explainer(clfs, methods, batch_size=chunk)

  def positive_maps(images, labels):
    return {k: np.maximum(v, 0) for k, v in explain(images, labels).items()}

  # Validation: learned thresholds (App. D.2.2) and the MLP's features.
  val = val_source.get(np.arange(min(e.lap_val_images,
                                     val_source.num_examples)))
  vkeep, _ = _correct_clue_images(clf, val, dcs)
  thresholds = {m: "no correctly classified validation clue image"
                for m in methods}
  if len(vkeep):
    vmaps = positive_maps(val["image"][vkeep], val["label"][vkeep])
    for name, m in vmaps.items():
      try:
        thresholds[name] = metrics.learned_threshold(m, val["mask"][vkeep])
      except ValueError as err:     # the map does not separate the pixels
        thresholds[name] = str(err)
    del vmaps
  positive = binary_positive_class(dcs)
  if lap_layers and positive is None:  # many classes: the MLP of D.5.2
    _, val_outs = dc_maps(clf, jnp.asarray(val["image"]), layers=lap_layers)
    val_features = [metrics.dc_size_features(o) for o in val_outs]

  # Test: per-image scores, batch by batch.
  srg_fn = jax.jit(metrics.srg, static_argnums=0)
  keep_fn = jax.jit(metrics.keep_top_accuracy, static_argnums=0)
  per_image: dict[str, dict[str, list]] = {}    # {score: {method: [[n]]}}
  kept_top = {m: [] for m in methods}
  counts: dict[str, dict[str, np.ndarray]] = {}  # box counts, summed
  labels, preds = [], []
  lap_classes = [[] for _ in lap_layers]
  lap_features = [[] for _ in lap_layers]
  has_boxes = False

  def add(score, name, values, n):
    per_image.setdefault(score, {}).setdefault(name, []).append(
        np.asarray(values)[:n])

  for start in range(0, n_test, chunk):
    rows = np.arange(start, min(start + chunk, n_test))
    n = len(rows)
    batch = test_source.get(_padded(rows, chunk))
    has_boxes = "boxes" in batch and "boxes_valid" in batch
    keep, pred = _correct_clue_images(clf, batch, dcs)
    keep = keep[keep < n]
    labels.append(batch["label"][:n])
    preds.append(pred[:n])
    if lap_layers:
      _, outs = dc_maps(clf, jnp.asarray(batch["image"]), layers=lap_layers)
      outs = [np.asarray(o) for o in outs]
      for i, p in enumerate(standalone_predictions(outs, dcs)):
        lap_classes[i].append(p[:n])
        lap_features[i].append(metrics.dc_size_features(outs[i])[:n])
    if not len(keep):
      continue
    k, take = len(keep), _padded(keep, chunk)
    maps = positive_maps(batch["image"][take], batch["label"][take])
    x, targets = jnp.asarray(batch["image"][take]), jnp.asarray(pred[take])
    masks = jnp.asarray(batch["mask"][take])
    for name, m in maps.items():
      m = jnp.asarray(m)
      binary = {"mu_sigma": postprocess.binarize_mean_std(m),
                "top_k_gt": postprocess.binarize_top_count(
                    m, masks.sum(axis=(1, 2)))}
      if not isinstance(thresholds[name], str):
        binary["learned"] = metrics.binarize_learned(m, thresholds[name])
      if name.startswith("lap"):
        binary["lap_0.5"] = m > 0.5
      for b, v in binary.items():
        add(f"iou/{b}", name, metrics.iou(v, masks), k)
      if has_boxes:
        scores = box_scores(m, binary, jnp.asarray(batch["boxes"][take]),
                            jnp.asarray(batch["boxes_valid"][take]))
        for b, s in scores.items():
          add(f"truncated_iou/{b}", name, s["truncated_iou"], k)
          total = counts.setdefault(name, {}).setdefault(b, np.zeros(2, int))
          total += [s["n_captured"][:k].sum(), s["n_boxes"][:k].sum()]
      # The metrics chunk their forward passes (chunk_size) themselves.
      add("srg", name, srg_fn(clf, x, m, targets)["srg"], k)
      kept_top[name].append(np.asarray(keep_fn(clf, x, m, targets))[:k])
  if not per_image:
    return {"n_images": 0, "note": "no correctly classified clue image"}

  values = {s: {m: np.concatenate(v) for m, v in by.items()}
            for s, by in per_image.items()}

  def summaries(prefix):
    return {m: {s.removeprefix(prefix): nan_summary(v[m])
                for s, v in values.items() if s.startswith(prefix) and m in v}
            for m in methods}

  report = {"n_images": len(values["srg"][next(iter(methods))]),
            "n_validation_images": int(len(vkeep)),
            "iou": summaries("iou/"),
            "srg": {m: nan_summary(v) for m, v in values["srg"].items()},
            "keep_top_accuracy": {
                "fractions": list(metrics.faithfulness.KEEP_FRACTIONS),
                **{m: np.concatenate(v).mean(0).tolist()
                   for m, v in kept_top.items()}},
            "learned_thresholds": thresholds}
  if has_boxes:
    report["box_capture"] = {m: {b: pooled_capture(*c) for b, c in
                                 by.items()} for m, by in counts.items()}
    report["truncated_iou"] = summaries("truncated_iou/")
  comparisons = paired_comparisons(values)
  if comparisons:
    report["significance"] = {
        "test": "paired t-test over images, two-sided", "reference": "lap",
        "scores": comparisons}
  labels, preds = np.concatenate(labels), np.concatenate(preds)
  if positive is not None:
    report["classification"] = binary_summary(labels, preds,
                                              positive=positive)
  if lap_layers:
    report["standalone"] = {}
    for i, classes in enumerate(lap_classes):
      p = np.concatenate(classes)
      row = {"predictivity_f1": float(np.nanmean(metrics.f1_scores(
                 labels, p, dcs.num_classes))),
             "compatibility_f1": float(np.nanmean(metrics.f1_scores(
                 preds, p, dcs.num_classes)))}
      if positive is not None:
        rates = binary_summary(labels, p, positive=positive)
        row.update(sensitivity=rates["sensitivity"],
                   specificity=rates["specificity"])
      else:
        mlp = metrics.standalone_evaluation(
            val_features[i], val["label"], np.concatenate(lap_features[i]),
            labels, preds, num_classes=dcs.num_classes,
            key=jax.random.fold_in(key, i))
        row.update({f"mlp_{n}": v for n, v in mlp.items()})
      report["standalone"][f"lap{i + 1}"] = row
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
  lines += _keep_top_table(report)
  if "box_capture" in report:
    lines += _box_tables(report)
  if "significance" in report:
    lines += _significance_table(report["significance"])
  if "classification" in report:
    c = report["classification"]
    lines += ["", f"Binary classification of the {c['n']} evaluated test "
              "images (clue class positive):", "",
              "| accuracy | sensitivity | specificity | balanced accuracy "
              "| F1 |", "|---|---|---|---|---|",
              "| " + " | ".join(_num(c[k]) for k in (
                  "accuracy", "sensitivity", "specificity",
                  "balanced_accuracy", "f1")) + " |"]
  if "standalone" in report:
    lines += _standalone_table(report["standalone"])
  return lines


def _num(v, scale: float = 1.0, digits: int = 3) -> str:
  return "n/a" if v is None or np.isnan(v) else f"{scale * v:.{digits}f}"


_STANDALONE_COLUMNS = {
    "sensitivity": "sensitivity", "specificity": "specificity",
    "mlp_predictivity_top1": "MLP predictivity top-1",
    "mlp_compatibility_top1": "MLP compatibility top-1",
    "mlp_predictivity_top5": "MLP predictivity top-5",
    "mlp_compatibility_top5": "MLP compatibility top-5"}


def _standalone_table(standalone: dict[str, dict]) -> list[str]:
  extra = [k for k in _STANDALONE_COLUMNS
           if any(k in row for row in standalone.values())]
  lines = ["", "| LAP as a predictor | predictivity F1 | compatibility F1 |"
           + "".join(f" {_STANDALONE_COLUMNS[k]} |" for k in extra),
           "|---" * (3 + len(extra)) + "|"]
  for name, row in standalone.items():
    lines.append(f"| {name} | {row['predictivity_f1']:.3f} | "
                 f"{row['compatibility_f1']:.3f} |"
                 + "".join(f" {_num(row.get(k))} |" for k in extra))
  return lines


def _keep_top_table(report: dict[str, Any]) -> list[str]:
  k = report["keep_top_accuracy"]
  fractions = k["fractions"]
  lines = ["", "Keep-top-k accuracy (Sec. 3.3, Fig. 5): the top k % of "
           "pixels kept, the rest black; accuracy w.r.t. the prediction, "
           "percent.", "",
           "| method | " + " | ".join(f"{100 * f:.0f} %" for f in fractions)
           + " |", "|---" * (len(fractions) + 1) + "|"]
  for name, acc in k.items():
    if name != "fractions":
      lines.append(f"| {name} | "
                   + " | ".join(f"{100 * a:.1f}" for a in acc) + " |")
  return lines


def _box_tables(report: dict[str, Any]) -> list[str]:
  cap, trunc = report["box_capture"], report["truncated_iou"]
  n_boxes = next(iter(next(iter(cap.values())).values()))["n_boxes"]
  lines = ["", f"Box-capture sensitivity (App. D.2.4: percent of the "
           f"{n_boxes} clue boxes at least half covered by the binarised "
           "map) | truncated IoU (percent, mean ± std: each box cut to its "
           "half the map scores highest):", "",
           "| method | " + " | ".join(f"capture {b}" for b in BINARIZATIONS)
           + " | " + " | ".join(f"tIoU {b}" for b in BINARIZATIONS) + " |",
           "|---" * (2 * len(BINARIZATIONS) + 1) + "|"]
  for name, per in cap.items():
    cells = [_num(per[b]["sensitivity"], 100, 1) if b in per else ""
             for b in BINARIZATIONS]
    t = trunc[name]
    cells += [f"{100 * t[b]['mean']:.1f} ± {100 * t[b]['std']:.1f}"
              if b in t else "" for b in BINARIZATIONS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def _significance_table(sig: dict[str, Any]) -> list[str]:
  by_score = sig["scores"]
  scores = list(by_score)
  methods = sorted({m for k in scores for m in by_score[k]})
  lines = ["", f"{sig['reference']} against each method, {sig['test']}: "
           "mean difference (lap minus the method; IoU in percentage "
           "points, SRG x 100) ± its standard error, p-value, pairs:", "",
           "| method | " + " | ".join(scores) + " |",
           "|---" * (len(scores) + 1) + "|"]
  for m in methods:
    cells = []
    for k in scores:
      r = by_score[k].get(m)
      cells.append("" if r is None else format_comparison(r, scale=100))
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines
