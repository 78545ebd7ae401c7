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
from lapjax.evaluation import (
  explanations,
  lap_report,
  maps_on_disk,
  streaming,
)
from lapjax.evaluation.methods import method_classifiers, standard_methods
from lapjax.evaluation.report import write_report
from lapjax.evaluation.saliency_report import stream_saliency
from lapjax.evaluation.streaming import LOCALIZATION_METRICS, MAP_ONLY_METRICS
from lapjax.metrics import nan_summary
from lapjax.metrics.sanity import cascading_randomization
from lapjax.train import sharding
from lapjax.train.config import BASELINES, validate
from lapjax.train.config import load_run_config as load_config
from lapjax.train.loop import dc_membership, lap_map_layers, load_state

NUM_FIGURE_IMAGES = 24


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, Any, dict]:
  """``(config, model, variables)`` of the newest checkpoint of a run."""
  config = load_config(workdir)
  model, state, _ = load_state(config, workdir)
  return config, model, {"params": state.params,
                         "batch_stats": state.batch_stats}


def evaluate(config: ml_collections.ConfigDict | None, workdir: str, *,
             split: str = "test", progress: bool = False,
             checkpoint: str = "latest") -> dict[str, Any]:
  """Evaluates the run in ``workdir``; returns the report dict.

  Streamed (``lapjax.evaluation.streaming``): classification over the
  whole split and every method x localisation metric over the first
  ``config.evaluation.num_images`` images, batch by batch on every device
  (and every process: with ``config.multihost`` each process loads its
  slice of each batch); resumable from ``workdir/eval/state.npz``.

  Args:
    config: the run's config; None reads ``workdir/config.json``.
    workdir: the run folder written by ``train.py``.
    split: ``'test'`` (default) or ``'validation'``.
    progress: show a progress bar with ETA.
    checkpoint: ``'latest'`` (the newest checkpoint) or ``'best'`` (the
      one ``config.best_checkpoint`` kept; its evaluation state lives in
      ``workdir/eval-best``, and the report names it under
      ``checkpoint``).

  Raises:
    ValueError: unknown method names, or ``workdir/eval/state.npz`` holds
      an unfinished evaluation with other settings (the fields are named).
  """
  workdir = os.path.abspath(workdir)
  config = load_config(workdir) if config is None else config
  validate(config)
  if config.multihost and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  check_method_names(config, sources.data_info(config.data))
  model, state, info = load_state(config, workdir, which=checkpoint)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.eval_batch_size, mesh,
                            name="eval_batch_size")
  sharding.check_batch_size(config.evaluation.batch_size, mesh,
                            name="evaluation.batch_size")
  variables = sharding.put_replicated(
      {"params": state.params, "batch_stats": state.batch_stats}, mesh)
  source, _ = sources.make_source(config.data, split)
  first = source.get(np.arange(min(NUM_FIGURE_IMAGES, source.num_examples)))
  n = min(config.evaluation.num_images, source.num_examples)
  explained = "mask" in first
  settings = {"split": split, "step": int(state.step),
              "model": config.model.to_dict(), "data": config.data.to_dict(),
              "evaluation": config.evaluation.to_dict(),
              "lap": config.lap.to_dict(),
              "explained_images": n if explained else 0,
              "eval_batch_size": config.eval_batch_size}
  run_state = streaming.EvaluationState(
      os.path.join(workdir, "eval" if checkpoint == "latest"
                   else "eval-best"), settings)
  run_state.restore()
  e = config.evaluation
  class_batches = streaming.batch_slices(source.num_examples,
                                         config.eval_batch_size)
  explain_batches = (streaming.batch_slices(n, e.batch_size) if explained
                     else [])
  # Paper 001's saliency section, streamed over the same images.
  saliency_batches = (streaming.batch_slices(n, e.batch_size)
                      if "boxes" in first and (
                          config.explain_loss.type != "cross_entropy"
                          or e.saliency_report) else [])
  lap_section = explained and (config.lap.mode != "off" or e.lap_report)
  lap_batches = (lap_report.section_batches(e, source.num_examples)
                 if lap_section else [])
  done = sum(run_state.next_batch.get(phase, 0) for phase in
             ("classification", "explanations", "saliency",
              lap_report.PHASE))
  bar = streaming.Progress(len(class_batches) + len(explain_batches)
                           + len(saliency_batches) + len(lap_batches), done,
                           enabled=progress)
  _classify(run_state, model, variables, source, class_batches, mesh,
            config.eval_batch_size, info["num_classes"], bar,
            save_every=e.save_every)
  report = {
      "workdir": workdir,
      "step": int(state.step),
      "checkpoint": checkpoint,
      "split": split,
      "model": config.model.name,
      "data": config.data.name,
      "class_names": info["class_names"],
      "classification": streaming.summary_from_confusion(
          run_state.counts["confusion"]),
      "devices": {"devices": mesh.size, "processes": jax.process_count()},
  }
  figure = "predictions.png"
  names = info["class_names"]
  predicted = _logits(model, variables, first["image"]).argmax(-1)
  titles = [f"{names[t]} -> {names[p]}" + ("" if t == p else " (wrong)")
            for t, p in zip(first["label"], predicted)]
  if jax.process_index() == 0:
    viz.sample_grid(first, titles, os.path.join(workdir, figure))
  report["figures"] = [figure]
  if explained:
    section = _explanation_report(config, model, variables, source,
                                  workdir, info, run_state, explain_batches,
                                  mesh, bar)
    report["figures"] += section.pop("figures")
    report.update(section)
    if lap_section:
      val, _ = sources.make_source(config.data, "validation")
      report["lap"] = lap_report.lap_evaluation(
          config, model, variables, source, val,
          lap_layers=lap_map_layers(config), membership=dc_membership(info),
          key=jax.random.key(config.evaluation.seed), mesh=mesh,
          state=run_state, progress=bar)
  if saliency_batches:
    layer = config.explain_loss.layer
    report["saliency"] = stream_saliency(
        run_state, from_flax(model, variables, layers=[layer]), source,
        saliency_batches, mesh, bar, batch_size=e.batch_size, layer=layer,
        fraction=config.explain_loss.top_k, save_every=e.save_every)
  bar.close()
  if jax.process_index() == 0:
    write_report(workdir, report)
  run_state.remove()
  return report


def _logits(model, variables, images: np.ndarray) -> np.ndarray:
  """Logits of a few images (inference mode)."""
  return np.asarray(jax.jit(model.apply)(variables, np.asarray(images)))


def _classify(run_state: streaming.EvaluationState, model, variables,
              source, batches: list[tuple[int, int]], mesh,
              batch_size: int, num_classes: int, bar: streaming.Progress, *,
              save_every: int) -> None:
  """The confusion counts of the whole split, batch by batch, into
  ``run_state.counts['confusion']``."""
  counts = streaming.classification_counts(num_classes)
  step = jax.jit(lambda v, x, t, ok: streaming.replicate(
      counts(model.apply(v, x), t, ok), mesh))
  run_state.counts.setdefault("confusion",
                              np.zeros((num_classes, num_classes), np.int64))

  def one(b):
    idx, valid = streaming.local_indices(*batches[b], batch_size)
    batch = source.get(idx)
    x = streaming.mesh_inputs(mesh, image=batch["image"],
                              label=batch["label"].astype(np.int32),
                              valid=valid)
    run_state.add_counts("confusion", jax.device_get(
        step(variables, x["image"], x["label"], x["valid"])))

  streaming.run_phase(run_state, "classification", len(batches), one, bar,
                      save_every=save_every)


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


def _explanation_report(config, model, variables, source, workdir,
                        info: dict[str, Any],
                        run_state: streaming.EvaluationState,
                        batches: list[tuple[int, int]], mesh,
                        bar: streaming.Progress) -> dict[str, Any]:
  """Methods x localisation metrics (streamed), the figure grid, the
  faithfulness table and the sanity curves (on bounded subsets)."""
  e = config.evaluation
  names = info["class_names"]
  lap_layers = lap_map_layers(config)
  # The CAM layer of the explanations: config.evaluation.layer.
  clf = from_flax(model, variables, layers=[e.layer, *lap_layers])
  n = batches[-1][1] if batches else 0
  key = jax.random.key(e.seed)
  baseline = BASELINES[e.baseline]
  sloc_p = None
  if "sloc_xp" in e.methods:
    val, _ = sources.make_source(config.data, "validation")
    v = val.get(np.arange(min(e.sloc_calibration_images, val.num_examples)))
    sloc_p = attr.calibrate_p(clf, v["image"], v["label"],
                              key=jax.random.fold_in(key, 7),
                              baseline=baseline)
  image_size = int(source.get(np.arange(1))["image"].shape[1])
  table = standard_methods(e.layer, key=key, image_size=image_size,
                           ig_steps=e.ig_steps, rise_masks=e.rise_masks,
                           smoothgrad_samples=e.smoothgrad_samples,
                           sloc_masks=e.sloc_masks, sloc_steps=e.sloc_steps,
                           sloc_p=sloc_p, baseline=baseline,
                           lap_layers=lap_layers,
                           dcs=lap.dc_system(dc_membership(info)),
                           lap_decay=config.lap.decay)
  methods = {m: table[m] for m in e.methods}
  # Only ReLU networks have a guided one (a ViT's GELU is refused by name).
  clfs = {**method_classifiers(
      methods, model, variables, layers=[e.layer, *lap_layers],
      input_shape=source.get(np.arange(1))["image"].shape[1:]),
      "plain": clf}
  _stream_explanations(run_state, methods, clfs, source, batches,
                       mesh, e, workdir, bar)
  scores, map_status = {}, {}
  for name in methods:
    per = run_state.summaries.get(name, {})
    scores[name] = {
        metric: per.get(metric, streaming.RunningSummary()).result(
            with_codes=metric not in MAP_ONLY_METRICS)
        for metric in LOCALIZATION_METRICS}
    usable, constant, nonfinite = run_state.counts.get(
        f"status/{name}", np.zeros(3, np.int64)).tolist()
    map_status[name] = {"usable_masks": int(usable),
                        "constant_maps": int(constant),
                        "nonfinite_maps": int(nonfinite)}
  kept_index = run_state.arrays.get("kept/index", np.zeros(0, np.int64))
  kept = source.get(kept_index) if len(kept_index) else None
  kept_maps = {name: run_state.arrays[f"kept/{name}"] for name in methods
               if len(kept_index)}
  faithfulness = {}
  if kept is not None and e.faithfulness_images:
    f = e.faithfulness_images
    subset = {k: v[:f] for k, v in kept.items()}
    faithfulness = _faithfulness_report(
        clf, subset, _logits(model, variables, subset["image"]),
        {k: v[:f] for k, v in kept_maps.items()}, e, key, baseline)
  if sloc_p is not None:
    faithfulness["sloc_xp_p"] = list(sloc_p)
  figures = []
  if kept is not None and e.figure_images:
    figures.append("explanations.png")
    shown = slice(0, e.figure_images)
    if jax.process_index() == 0:
      viz.explanation_grid(kept["image"][shown], kept["mask"][shown],
                           {k: v[shown] for k, v in kept_maps.items()},
                           [names[y] for y in kept["label"][shown]],
                           os.path.join(workdir, "explanations.png"))
  # One randomisation draw is noisy (a random head flips whole maps), so
  # the curves average image means over several keys.
  sanity = {}
  k = min(e.sanity_images, n)
  head = source.get(np.arange(k))
  for name in e.sanity_methods:
    m = table[name]
    module = (model.clone(act=attr.guided_relu)
              if m.classifier == "guided" else model)
    runs = [cascading_randomization(
        module, variables, head["image"], head["label"], m.fn,
        key=jax.random.fold_in(key, 1 + d), classifier_layers=[e.layer],
        **m.kwargs) for d in range(e.sanity_keys)]
    curves = {s: np.stack([np.nanmean(np.asarray(r["similarity"][s]), 1)
                           for r in runs]) for s in runs[0]["similarity"]}
    sanity[name] = {"layers": runs[0]["layers"],
                    "config": {**runs[0]["config"], "keys": e.sanity_keys},
                    **{s: c.mean(0).tolist() for s, c in curves.items()},
                    **{s + "_std_over_keys": c.std(0).tolist()
                       for s, c in curves.items()}}
  if sanity:
    figures.append("sanity.png")
    if jax.process_index() == 0:
      viz.sanity_curves(sanity, os.path.join(workdir, "sanity.png"))
  return {"figures": figures,
          "explanations": {"n_images": int(n), "targets": "true class",
                           "batch_size": int(e.batch_size),
                           "scores": scores, "map_status": map_status},
          "faithfulness": faithfulness,
          "sanity": sanity}


def _stream_explanations(run_state: streaming.EvaluationState,
                         methods: dict, clfs, source,
                         batches: list[tuple[int, int]], mesh, e,
                         workdir: str, bar: streaming.Progress) -> None:
  """Every method's localisation sums over ``batches``, the maps of the
  first ``max(figure_images, faithfulness_images)`` clue images kept in
  ``run_state.arrays`` and, with ``e.write_maps``, every map written to
  ``workdir/eval/maps`` (``maps_on_disk``)."""
  fns = {}
  for name, m in methods.items():
    c = clfs[m.classifier]
    fns[name] = streaming.checked_map_statistics(
        lambda x, t, m=m, c=c: m.fn(c, x, t, **m.kwargs), mesh)
  want = max(e.figure_images, e.faithfulness_images)
  arrays = run_state.arrays
  arrays.setdefault("kept/index", np.zeros(0, np.int64))
  for name in methods:
    arrays.setdefault(f"kept/{name}", np.zeros((0, 1, 1), np.float32))

  def one(b):
    start, stop = batches[b]
    idx, valid = streaming.local_indices(start, stop, e.batch_size)
    batch = source.get(idx)
    x = streaming.mesh_inputs(mesh, image=batch["image"],
                              label=batch["label"].astype(np.int32),
                              mask=batch["mask"], valid=valid)
    keep = np.zeros(0, np.int64)
    if len(arrays["kept/index"]) < want:
      labels, ok = streaming.gather(batch["label"]), streaming.gather(valid)
      keep = np.flatnonzero((labels > 0) & ok)[
          :want - len(arrays["kept/index"])]
      arrays["kept/index"] = np.concatenate([arrays["kept/index"],
                                             start + keep])
    local = {}
    for name, fn in fns.items():
      where = f"method {name!r}, images {start} to {stop - 1}"
      try:
        maps, stats = fn(x["image"], x["label"], x["mask"], x["valid"])
      except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
      stats = jax.device_get(stats)
      if stats.pop("nonfinite"):
        whole = streaming.gather(maps)
        ok = streaming.gather(valid)
        bad = np.flatnonzero(
            ~np.isfinite(whole).reshape(len(whole), -1).all(1) & ok)
        raise ValueError(
            f"{where}: maps must be finite; got NaN or inf in the maps of "
            f"images {(start + bad[:8]).tolist()} (is the model's output "
            "finite on them?)")
      run_state.add_counts(f"status/{name}", stats.pop("status"))
      for metric, value in stats.items():
        run_state.summary(name, metric).add(np.asarray(value, np.float64))
      if len(keep):
        new = streaming.gather(maps)[keep]
        old = arrays[f"kept/{name}"]
        arrays[f"kept/{name}"] = (np.concatenate([old, new]) if len(old)
                                  else new)
      if e.write_maps:
        local[name] = maps_on_disk.local_rows(maps)
    if e.write_maps:
      maps_on_disk.write_shard(os.path.join(workdir, "eval", "maps"), b,
                               idx[valid], batch["label"][valid],
                               {k: v[valid] for k, v in local.items()})

  streaming.run_phase(run_state, "explanations", len(batches), one, bar,
                      save_every=e.save_every)


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

