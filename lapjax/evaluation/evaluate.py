"""``evaluate(config, workdir)``: the report of a trained run.

Loads the newest checkpoint of ``workdir``, predicts the test split and
writes ``report.json``, ``report.md`` and figures: ``predictions.png``
(sample test images with their ground-truth outlines, true and predicted
class); where the data has evidence masks, every method of
``config.evaluation.methods`` scored by every localisation metric,
``explanations.png`` (input, ground truth, one overlay per method) and
``sanity.png`` (cascading randomisation curves); where it has boxes and
the run was trained with the explanation loss (or
``evaluation.saliency_report``), paper 001's saliency metrics.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from lapjax import attribution as attr
from lapjax import from_flax, lap, viz
from lapjax.data import sources
from lapjax.evaluation import explanations
from lapjax.evaluation.lap_report import lap_evaluation
from lapjax.evaluation.methods import standard_methods
from lapjax.evaluation.report import write_report
from lapjax.evaluation.saliency_report import saliency_evaluation
from lapjax.metrics import (
  CONSTANT_MAP,
  EMPTY_MASK,
  FULL_MASK,
  NONFINITE_MAP,
  classification_summary,
  nan_summary,
  validity,
)
from lapjax.metrics.sanity import cascading_randomization
from lapjax.train.config import BASELINES, validate
from lapjax.train.config import load_run_config as load_config
from lapjax.train.loop import (
  dc_membership,
  lap_map_layers,
  load_state,
  predict,
)

NUM_FIGURE_IMAGES = 24
# Localisation-table metrics of the map alone: no mask, no "miss".
MAP_ONLY_METRICS = ("sparseness",)


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, Any, dict]:
  """``(config, model, variables)`` of the newest checkpoint of a run."""
  config = load_config(workdir)
  model, state, _ = load_state(config, workdir)
  return config, model, {"params": state.params,
                         "batch_stats": state.batch_stats}


def evaluate(config: ml_collections.ConfigDict | None, workdir: str, *,
             split: str = "test") -> dict[str, Any]:
  """Evaluates the run in ``workdir``; returns the report dict.

  Args:
    config: the run's config; None reads ``workdir/config.json``.
    workdir: the run folder written by ``train.py``.
    split: ``'test'`` (default) or ``'validation'``.
  """
  workdir = os.path.abspath(workdir)
  config = load_config(workdir) if config is None else config
  validate(config)
  check_method_names(config, sources.data_info(config.data))
  model, state, info = load_state(config, workdir)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  source, _ = sources.make_source(config.data, split)
  logits, labels = predict(state, model, source,
                           batch_size=config.eval_batch_size)
  report = {
      "workdir": workdir,
      "step": int(state.step),
      "split": split,
      "model": config.model.name,
      "data": config.data.name,
      "class_names": info["class_names"],
      "classification": classification_summary(logits, labels),
  }
  figure = "predictions.png"
  shown = np.arange(min(NUM_FIGURE_IMAGES, source.num_examples))
  batch = source.get(shown)
  names = info["class_names"]
  predicted = logits[shown].argmax(-1)
  titles = [f"{names[t]} -> {names[p]}" + ("" if t == p else " (wrong)")
            for t, p in zip(batch["label"], predicted)]
  viz.sample_grid(batch, titles, os.path.join(workdir, figure))
  report["figures"] = [figure]
  if "mask" in batch:
    report.update(_explanation_report(config, model, variables, source,
                                      workdir, info, logits))
    report["figures"] += ["explanations.png", "sanity.png"]
    if config.lap.mode != "off" or config.evaluation.lap_report:
      val, _ = sources.make_source(config.data, "validation")
      report["lap"] = lap_evaluation(
          config, model, variables, source, val,
          lap_layers=lap_map_layers(config), membership=dc_membership(info),
          key=jax.random.key(config.evaluation.seed))
  explained = config.explain_loss.type != "cross_entropy"
  if "boxes" in batch and (explained or config.evaluation.saliency_report):
    layer = config.explain_loss.layer
    report["saliency"] = saliency_evaluation(
        from_flax(model, variables, layers=[layer]),
        source.get(np.arange(min(config.evaluation.num_images,
                                 source.num_examples))),
        layer=layer, fraction=config.explain_loss.top_k)
  write_report(workdir, report)
  return report


def check_method_names(config: ml_collections.ConfigDict,
                       info: dict[str, Any]) -> None:
  """Raises ValueError, before any work, for names in
  ``config.evaluation.methods`` or ``sanity_methods`` that
  ``standard_methods`` does not define for this run (``lap``, ``lap1``, ...
  exist for LAP runs only)."""
  e = config.evaluation
  lap_layers = lap_map_layers(config)
  table = standard_methods(
      e.layer, key=jax.random.key(0), image_size=info["image_shape"][0],
      sloc_p=(0.5,), lap_layers=lap_layers,
      dcs=lap.dc_system(dc_membership(info)) if lap_layers else None)
  for field in ("methods", "sanity_methods"):
    unknown = [m for m in e[field] if m not in table]
    if unknown:
      raise ValueError(f"unknown config.evaluation.{field} {unknown}; "
                       f"available: {sorted(table)}")


def _scores(maps: np.ndarray, masks: np.ndarray
            ) -> tuple[dict[str, Any], dict[str, int]]:
  """Every localisation metric's summary (``nan_summary`` with the
  invalid / undefined split and the worst-case mean) and the map status
  counts of one method."""
  codes = np.asarray(validity(maps, masks))
  summaries = {}
  for metric, v in explanations.localization_scores(maps, masks).items():
    # Sparseness needs no mask and has no "miss": plain summary.
    summaries[metric] = nan_summary(v) if metric in MAP_ONLY_METRICS \
        else nan_summary(v, codes, worst=0.0)
  status = {"usable_masks": int(np.sum((codes != EMPTY_MASK)
                                       & (codes != FULL_MASK))),
            "constant_maps": int(np.sum(codes == CONSTANT_MAP)),
            "nonfinite_maps": int(np.sum(codes == NONFINITE_MAP))}
  return summaries, status


def _explanation_report(config, model, variables, source, workdir,
                        info: dict[str, Any], logits: np.ndarray
                        ) -> dict[str, Any]:
  """Methods x localisation metrics, the figure grid and sanity curves."""
  e = config.evaluation
  names = info["class_names"]
  lap_layers = lap_map_layers(config)
  clf = from_flax(model, variables, layers=[e.layer, *lap_layers])
  guided = attr.guided_classifier(model, variables, layers=[e.layer])
  n = min(e.num_images, source.num_examples)
  batch = source.get(np.arange(n))
  key = jax.random.key(e.seed)
  baseline = BASELINES[e.baseline]
  sloc_p = None
  if "sloc_xp" in e.methods:
    val, _ = sources.make_source(config.data, "validation")
    v = val.get(np.arange(min(e.sloc_calibration_images, val.num_examples)))
    sloc_p = attr.calibrate_p(clf, v["image"], v["label"],
                              key=jax.random.fold_in(key, 7),
                              baseline=baseline)
  table = standard_methods(e.layer, key=key,
                           image_size=batch["image"].shape[1],
                           ig_steps=e.ig_steps, rise_masks=e.rise_masks,
                           smoothgrad_samples=e.smoothgrad_samples,
                           sloc_masks=e.sloc_masks, sloc_steps=e.sloc_steps,
                           sloc_p=sloc_p, baseline=baseline,
                           lap_layers=lap_layers,
                           dcs=lap.dc_system(dc_membership(info)),
                           lap_decay=config.lap.decay)
  methods = {m: table[m] for m in e.methods}
  maps = explanations.explain(clf, guided, batch["image"], batch["label"],
                              methods)
  scores, map_status = {}, {}
  for name, m in maps.items():
    scores[name], map_status[name] = _scores(m, batch["mask"])
  faithfulness = _faithfulness_report(clf, batch, logits[:n], maps, e, key,
                                      baseline)
  if sloc_p is not None:
    faithfulness["sloc_xp_p"] = list(sloc_p)
  shown = np.flatnonzero(batch["label"] > 0)[:e.figure_images]
  viz.explanation_grid(batch["image"][shown], batch["mask"][shown],
                       {k: v[shown] for k, v in maps.items()},
                       [names[y] for y in batch["label"][shown]],
                       os.path.join(workdir, "explanations.png"))
  # One randomisation draw is noisy (a random head flips whole maps), so
  # the curves average image means over several keys.
  sanity = {}
  k = min(e.sanity_images, n)
  for name in e.sanity_methods:
    m = table[name]
    module = model.clone(act=attr.guided_relu) if m.guided else model
    runs = [cascading_randomization(
        module, variables, batch["image"][:k], batch["label"][:k], m.fn,
        key=jax.random.fold_in(key, 1 + d), classifier_layers=[e.layer],
        **m.kwargs) for d in range(e.sanity_keys)]
    curves = {s: np.stack([np.nanmean(np.asarray(r["similarity"][s]), 1)
                           for r in runs]) for s in runs[0]["similarity"]}
    sanity[name] = {"layers": runs[0]["layers"],
                    "config": {**runs[0]["config"], "keys": e.sanity_keys},
                    **{s: c.mean(0).tolist() for s, c in curves.items()},
                    **{s + "_std_over_keys": c.std(0).tolist()
                       for s, c in curves.items()}}
  viz.sanity_curves(sanity, os.path.join(workdir, "sanity.png"))
  return {"explanations": {"n_images": int(n), "targets": "true class",
                           "scores": scores, "map_status": map_status},
          "faithfulness": faithfulness,
          "sanity": sanity}


def _faithfulness_report(clf, batch, logits, maps, e, key, baseline
                         ) -> dict[str, Any]:
  """Faithfulness metrics of every method on the first
  ``e.faithfulness_images`` clue images, explaining the true class (the
  prediction on all but the misclassified few; their count is reported)."""
  ok = np.flatnonzero(batch["label"] > 0)[:e.faithfulness_images]
  if not len(ok):
    return {}
  misclassified = int(np.sum(logits[ok].argmax(-1) != batch["label"][ok]))
  scores, skipped = {}, {}
  for name, m in maps.items():
    values, skipped[name] = explanations.faithfulness_scores(
        clf, batch["image"][ok], batch["label"][ok], m[ok],
        key=jax.random.fold_in(key, 3), steps=e.faithfulness_steps,
        baseline=baseline)
    scores[name] = {k: nan_summary(v) for k, v in values.items()}
  return {"n_images": int(len(ok)), "misclassified": misclassified,
          "baseline": e.baseline,
          "sic_aic_skipped": skipped, "scores": scores}

