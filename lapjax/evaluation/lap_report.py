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

The section streams like the rest of the evaluation
(``lapjax.evaluation.streaming``): the test images (``lap_images``, up to
the whole split) and the validation images come ``batch_size`` at a time,
the last batch padded with a validity mask, each batch sharded on the
mesh's ``data`` axis (every device of every process; each process loads
its slice). The per-image numbers of a batch (a few per method: the paired
t-tests need them, so no running sums) come back replicated, so every
process builds the same report; no test map is kept. In the streaming
evaluator the test batches are the resumable phase ``PHASE``: the numbers
so far, the learned thresholds and the validation features are saved with
the evaluation state every ``save_every`` batches, and a killed evaluation
resumes to the report of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import metrics
from lapjax.attribution import postprocess
from lapjax.attribution.checks import jit_checked
from lapjax.attribution.lap_maps import dc_maps
from lapjax.classifier import Classifier, from_flax
from lapjax.evaluation import streaming
from lapjax.evaluation.methods import method_classifiers, standard_methods
from lapjax.lap.dcs import DCSystem, dc_system
from lapjax.metrics import nan_summary
from lapjax.metrics.binary_classification import binary_summary
from lapjax.metrics.significance import format_comparison, paired_t_test
from lapjax.train import sharding

BINARIZATIONS = ("mu_sigma", "top_k_gt", "learned", "lap_0.5")
BASELINE_METHODS = ("gradient", "input_x_gradient", "integrated_gradients",
                    "guided_backprop", "grad_cam", "guided_grad_cam",
                    "lrp", "deeplift", "relevance_cam")
# The section's phase in the streaming evaluator (its resumable batches).
PHASE = "lap"


def section_batches(evaluation, num_examples: int) -> list[tuple[int, int]]:
  """``(start, stop)`` of the section's global test batches: the first
  ``evaluation.lap_images`` of ``num_examples`` images,
  ``evaluation.batch_size`` a batch (the last padded)."""
  return streaming.batch_slices(min(evaluation.lap_images, num_examples),
                                evaluation.batch_size)


def _correct_clue_images(clf: Classifier, batch: dict, dcs: DCSystem
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Indices of clue images classified correctly, and all predictions.

  ``batch`` holds ``label`` and ``mask`` of every image and either
  ``prediction`` (``[B]`` the model's classes, computed by the caller) or
  ``image`` (then ``clf`` predicts here).
  """
  pred = batch.get("prediction")
  if pred is None:
    pred = jax.jit(lambda x: clf.apply(x)[0].argmax(-1))(
        jnp.asarray(batch["image"]))
  pred = np.asarray(pred)
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


def _box_values(maps: jax.Array, binary: dict[str, jax.Array],
                boxes: jax.Array, boxes_valid: jax.Array
                ) -> dict[str, dict[str, jax.Array]]:
  """``box_scores`` as JAX arrays (jittable)."""
  out = {}
  for b, v in binary.items():
    c = metrics.box_capture(v, boxes, boxes_valid)
    out[b] = {"n_captured": c["n_captured"], "n_boxes": c["n_boxes"],
              "truncated_iou": metrics.truncated_iou(maps, v, boxes,
                                                     boxes_valid)}
  return out


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
  return jax.tree.map(np.asarray,
                      _box_values(maps, binary, boxes, boxes_valid))


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


def standalone_classes(peaks: np.ndarray, dcs: DCSystem) -> np.ndarray:
  """``[B]`` classes one LAP predicts from the peaks ``[B, M]`` (the
  maximum over the pixels) of its ``M`` DC maps (App. D.5.1): a DC is
  detected when its peak exceeds 0.5; the class is that of the detected DC
  with the highest peak (its first DC+ class), the BGO class when none is
  detected (without BGO: the best DC's class regardless)."""
  peaks = np.asarray(peaks)
  best_dc = peaks.argmax(-1)
  detected = peaks.max(-1) > 0.5
  dc_class = (dcs.membership == 1).argmax(-1)             # first DC+ class
  if dcs.bgo is None:
    return dc_class[best_dc]
  return np.where(detected, dc_class[best_dc], dcs.bgo)


def standalone_predictions(maps: list[np.ndarray], dcs: DCSystem
                           ) -> list[np.ndarray]:
  """Per LAP, ``[B]`` classes predicted from its maps ``[B, h, w, M]``
  alone (App. D.5.1, ``standalone_classes``)."""
  return [standalone_classes(np.asarray(m).max(axis=(1, 2)), dcs)
          for m in maps]


def _binarized(maps: jax.Array, masks: jax.Array, threshold: float | None,
               *, lap: bool) -> dict[str, jax.Array]:
  """The maps binarised as App. D.2.2 (``learned`` with a ``threshold``,
  ``lap_0.5`` for LAP maps)."""
  binary = {"mu_sigma": postprocess.binarize_mean_std(maps),
            "top_k_gt": postprocess.binarize_top_count(
                maps, masks.sum(axis=(1, 2)))}
  if threshold is not None:
    binary["learned"] = metrics.binarize_learned(maps, threshold)
  if lap:
    binary["lap_0.5"] = maps > 0.5
  return binary


def _map_functions(methods: dict, clfs: dict, mesh: jax.sharding.Mesh
                   ) -> dict[str, Any]:
  """Per method, ``jit_checked`` ``(images, labels) -> (maps, finite)``:
  the positive part of its maps ``[B, H, W]`` (sharded as the batch) and
  ``[B]`` whether each map is finite (replicated)."""
  def make(m):
    def fn(x, t):
      maps = m.fn(clfs[m.classifier], x, t, **m.kwargs)
      finite = jnp.isfinite(maps).all(axis=(1, 2))
      return jnp.maximum(maps, 0), streaming.replicate(finite, mesh)
    return jit_checked(fn)
  return {name: make(m) for name, m in methods.items()}


def _score_function(clf: Classifier, mesh: jax.sharding.Mesh, *,
                    threshold: float | None, lap: bool) -> Any:
  """Jitted ``(images, maps, targets, masks, boxes, boxes_valid) ->
  {score: [B] or [B, S]}`` of one method's positive maps, every image of
  the batch, replicated: IoU per binarisation, with boxes (not None) the
  box counts and truncated IoU per binarisation, SRG and keep-top-k
  accuracy (w.r.t. ``targets``)."""
  def scores(x, maps, targets, masks, boxes, boxes_valid):
    binary = _binarized(maps, masks, threshold, lap=lap)
    out = {f"iou/{b}": metrics.iou(v, masks) for b, v in binary.items()}
    if boxes is not None:
      for b, s in _box_values(maps, binary, boxes, boxes_valid).items():
        out.update({f"{k}/{b}": v for k, v in s.items()})
    # The metrics chunk their forward passes (chunk_size) themselves.
    out["srg"] = metrics.srg(clf, x, maps, targets)["srg"]
    out["keep_top"] = metrics.keep_top_accuracy(clf, x, maps, targets)
    return streaming.replicate(out, mesh)
  return jax.jit(scores)


def _lap_function(clf: Classifier, layers: tuple[str, ...],
                  mesh: jax.sharding.Mesh, *, with_maps: bool) -> Any:
  """Jitted ``images -> [(peaks [B, M], maps [B, h, w, M] or None) per
  LAP]``, replicated: the peak of each DC map (``standalone_classes``) and,
  ``with_maps``, the DC maps themselves (``_size_features``)."""
  def outputs(x):
    return streaming.replicate(
        [(o.max(axis=(1, 2)), o if with_maps else None)
         for o in dc_maps(clf, x, layers=layers)[1]], mesh)
  return jax.jit(outputs)


def _size_features(maps: np.ndarray) -> np.ndarray:
  """``metrics.dc_size_features`` ``[B, M]`` of DC maps ``[B, h, w, M]``,
  summed on the host in float64: the same numbers however the batch was
  split over devices (a float32 sum on the mesh differs in its last bits
  with the split, and the App. D.5.2 predictor's training amplifies
  that)."""
  return np.asarray(maps, np.float64).sum(axis=(1, 2)).astype(np.float32)


def _extend(arrays: dict[str, np.ndarray], name: str,
            rows: np.ndarray) -> None:
  """Appends ``rows`` to ``arrays[name]`` (the state's per-image values)."""
  rows = np.asarray(rows)
  old = arrays.get(name)
  arrays[name] = rows if old is None else np.concatenate([old, rows])


def _checked_maps(fn, x, labels, rows: np.ndarray, where: str,
                  first: int) -> jax.Array:
  """``fn(x, labels)``'s maps; raises ValueError naming ``where`` when a
  method's input check fails, and the images (index ``first`` + row) when
  the map of one of ``rows`` (the batch rows that count) is not finite."""
  try:
    maps, finite = fn(x, labels)
  except ValueError as err:
    raise ValueError(f"{where}: {err}") from err
  bad = rows[~np.asarray(finite)[rows]]
  if len(bad):
    raise ValueError(
        f"{where}: maps must be finite; got NaN or inf in the maps of "
        f"images {(first + bad[:8]).tolist()} (is the model's output "
        "finite on them?)")
  return maps


def _validation(arrays: dict[str, np.ndarray], source, clf, predict,
                map_fns: dict, lap_fn, mesh, *, num_images: int,
                batch_size: int, dcs: DCSystem, features: bool) -> None:
  """The validation side, into ``arrays`` (``lap/val/...``): every image's
  label, with ``features`` each LAP's DC-size features (the App. D.5.2
  predictor's training set), the count of correctly classified clue
  images and each method's learned threshold (App. D.2.2) on their
  positive maps (or why there is none). Batches of ``batch_size`` on the
  mesh, as the test images."""
  masks_kept, labels_all = [], []
  maps_kept: dict[str, list] = {name: [] for name in map_fns}
  feats: dict[int, list] = {}
  for start, stop in streaming.batch_slices(num_images, batch_size):
    idx, valid = streaming.local_indices(start, stop, batch_size)
    batch = source.get(idx)
    x = streaming.mesh_inputs(mesh, image=batch["image"],
                              label=batch["label"].astype(np.int32))
    ok = streaming.gather(valid).astype(bool)
    labels, masks = (streaming.gather(batch[k]) for k in ("label", "mask"))
    keep, _ = _correct_clue_images(
        clf, {"label": labels, "mask": masks,
              "prediction": predict(x["image"])}, dcs)
    keep = keep[ok[keep]]
    labels_all.append(labels[ok])
    if features:
      for i, (_, maps) in enumerate(jax.device_get(lap_fn(x["image"]))):
        feats.setdefault(i, []).append(_size_features(maps)[ok])
    if not len(keep):
      continue
    masks_kept.append(masks[keep])
    for name, fn in map_fns.items():
      maps = _checked_maps(fn, x["image"], x["label"], keep,
                           f"method {name!r}, validation images {start} to "
                           f"{stop - 1}", start)
      maps_kept[name].append(streaming.gather(maps)[keep])
  arrays["lap/val/labels"] = (np.concatenate(labels_all) if labels_all
                              else np.zeros(0, np.int64))
  for i, f in feats.items():
    arrays[f"lap/val/features/{i}"] = np.concatenate(f)
  arrays["lap/val/kept"] = np.asarray(sum(len(m) for m in masks_kept))
  for name, parts in maps_kept.items():
    threshold: float | str = ("no correctly classified validation clue "
                              "image")
    if parts:
      try:
        threshold = metrics.learned_threshold(np.concatenate(parts),
                                              np.concatenate(masks_kept))
      except ValueError as err:   # the map does not separate the pixels
        threshold = str(err)
    arrays[f"lap/val/threshold/{name}"] = np.asarray(threshold)


def _threshold(saved: np.ndarray) -> float | str:
  """A learned threshold from the state (a float, or why there is none)."""
  return str(saved) if saved.dtype.kind == "U" else float(saved)


def lap_evaluation(config, model, variables, test_source, val_source, *,
                   lap_layers: tuple[str, ...], membership,
                   key: jax.Array, mesh: jax.sharding.Mesh | None = None,
                   state: streaming.EvaluationState | None = None,
                   progress: streaming.Progress | None = None
                   ) -> dict[str, Any]:
  """The LAP paper's tables for one trained run (see the module doc).

  Uses ``config.evaluation``: ``layer`` (CAM layer), ``methods`` (those of
  ``BASELINE_METHODS`` and ``'lap'`` are scored), ``lap_images`` test and
  ``lap_val_images`` validation images, ``ig_steps``, ``batch_size`` (a
  multiple of the mesh's devices), ``save_every``.

  The images stream ``batch_size`` at a time (the last batch padded, so
  one compilation), each batch sharded on the ``data`` axis of ``mesh``
  (default: every device of every process; each process loads its slice),
  keeping only a few numbers per image (for the paired tests) and no test
  maps: ``lap_images`` may be the whole split. The per-image numbers come
  back replicated, so every process builds the same report. With
  ``state`` (the streaming evaluator's) the test batches are its phase
  ``PHASE``: the numbers so far are saved with it every ``save_every``
  batches and a resumed evaluation continues where it stopped, with the
  report of an uninterrupted one; ``progress`` counts the batches.

  Raises:
    ValueError: a ``batch_size`` the devices do not divide, a method's
      input check, or a map that is not finite (the method and the images
      are named).
  """
  e = config.evaluation
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_size(e.batch_size, mesh,
                            name="evaluation.batch_size")
  variables = sharding.put_replicated(variables, mesh)
  dcs = dc_system(membership)
  clf = from_flax(model, variables, layers=[e.layer, *lap_layers])
  table = standard_methods(e.layer, key=key, image_size=1,  # no occlusion
                           ig_steps=e.ig_steps, lap_layers=lap_layers,
                           dcs=dcs, lap_decay=config.lap.decay)
  wanted = [m for m in e.methods if m in BASELINE_METHODS]
  methods = {m: table[m] for m in wanted}
  if lap_layers:
    methods.update({m: v for m, v in table.items() if m.startswith("lap")})
  first = test_source.get(np.arange(1))
  clfs = {**method_classifiers(methods, model, variables, layers=[e.layer],
                               input_shape=first["image"].shape[1:]),
          "plain": clf}
  saved = state is not None
  if state is None:                    # in memory only, never written
    state = streaming.EvaluationState("", {})
  arrays = state.arrays
  predict = jax.jit(lambda x: streaming.replicate(
      clf.apply(x)[0].argmax(-1), mesh))
  map_fns = _map_functions(methods, clfs, mesh)
  positive = binary_positive_class(dcs)
  mlp = bool(lap_layers) and positive is None  # many classes: App. D.5.2
  lap_fn = _lap_function(clf, lap_layers, mesh, with_maps=mlp)
  if "lap/val/labels" not in arrays:   # not yet in a resumed state
    _validation(arrays, val_source, clf, predict, map_fns, lap_fn, mesh,
                num_images=min(e.lap_val_images, val_source.num_examples),
                batch_size=e.batch_size, dcs=dcs, features=mlp)
  thresholds = {m: _threshold(arrays[f"lap/val/threshold/{m}"])
                for m in methods}
  has_boxes = "boxes" in first and "boxes_valid" in first
  score_fns = {
      m: _score_function(
          clf, mesh, lap=m.startswith("lap"),
          threshold=None if isinstance(thresholds[m], str)
          else thresholds[m]) for m in methods}
  batches = section_batches(e, test_source.num_examples)

  def step(b):
    start, stop = batches[b]
    idx, valid = streaming.local_indices(start, stop, e.batch_size)
    batch = test_source.get(idx)
    inputs = {"image": batch["image"],
              "label": batch["label"].astype(np.int32),
              "mask": batch["mask"]}
    if has_boxes:
      inputs.update(boxes=batch["boxes"], boxes_valid=batch["boxes_valid"])
    x = streaming.mesh_inputs(mesh, **inputs)
    ok = streaming.gather(valid).astype(bool)
    labels = streaming.gather(batch["label"])
    keep, pred = _correct_clue_images(
        clf, {"label": labels, "mask": streaming.gather(batch["mask"]),
              "prediction": predict(x["image"])}, dcs)
    keep = keep[ok[keep]]
    _extend(arrays, "lap/labels", labels[ok])
    _extend(arrays, "lap/predictions", pred[ok])
    if lap_layers:
      for i, (peaks, maps) in enumerate(jax.device_get(
          lap_fn(x["image"]))):
        _extend(arrays, f"lap/standalone/{i}",
                standalone_classes(peaks, dcs)[ok])
        if mlp:
          _extend(arrays, f"lap/features/{i}", _size_features(maps)[ok])
    if not len(keep):
      return
    targets = streaming.mesh_inputs(
        mesh, target=streaming.process_rows(pred))["target"]
    for name, fn in map_fns.items():
      maps = _checked_maps(fn, x["image"], x["label"], keep,
                           f"method {name!r}, test images {start} to "
                           f"{stop - 1}", start)
      scores = jax.device_get(score_fns[name](
          x["image"], maps, targets, x["mask"], x.get("boxes"),
          x.get("boxes_valid")))
      for score, v in scores.items():
        if score.startswith(("n_captured/", "n_boxes/")):
          continue
        _extend(arrays, f"lap/value/{name}/{score}", np.asarray(v)[keep])
      for b in BINARIZATIONS:
        if f"n_boxes/{b}" in scores:
          state.add_counts(f"lap/boxes/{name}/{b}", np.array([
              scores[f"n_captured/{b}"][keep].sum(),
              scores[f"n_boxes/{b}"][keep].sum()]))

  if saved:
    bar = progress or streaming.Progress(
        len(batches), state.next_batch.get(PHASE, 0), enabled=False)
    streaming.run_phase(state, PHASE, len(batches), step, bar,
                        save_every=e.save_every)
  else:
    for b in range(len(batches)):
      step(b)
  return _report(arrays, state.counts, methods, thresholds, dcs,
                 has_boxes=has_boxes, num_laps=len(lap_layers), mlp=mlp,
                 key=key)


def _report(arrays: dict[str, np.ndarray], counts: dict[str, np.ndarray],
            methods: dict, thresholds: dict[str, float | str],
            dcs: DCSystem, *, has_boxes: bool, num_laps: int, mlp: bool,
            key: jax.Array) -> dict[str, Any]:
  """The section's report from the per-image numbers of every test batch
  (``arrays``, ``lap/...``) and the box counts (``counts``)."""
  order = ([f"iou/{b}" for b in BINARIZATIONS]
           + [f"truncated_iou/{b}" for b in BINARIZATIONS] + ["srg"])
  values = {s: {m: arrays[f"lap/value/{m}/{s}"] for m in methods
                if f"lap/value/{m}/{s}" in arrays} for s in order}
  values = {s: by for s, by in values.items() if by}
  if "srg" not in values:
    return {"n_images": 0, "note": "no correctly classified clue image"}

  def summaries(prefix):
    return {m: {s.removeprefix(prefix): nan_summary(v[m])
                for s, v in values.items() if s.startswith(prefix) and m in v}
            for m in methods}

  report = {"n_images": len(values["srg"][next(iter(methods))]),
            "n_validation_images": int(arrays["lap/val/kept"]),
            "iou": summaries("iou/"),
            "srg": {m: nan_summary(v) for m, v in values["srg"].items()},
            "keep_top_accuracy": {
                "fractions": list(metrics.faithfulness.KEEP_FRACTIONS),
                **{m: arrays[f"lap/value/{m}/keep_top"].mean(0).tolist()
                   for m in methods}},
            "learned_thresholds": thresholds}
  if has_boxes:
    report["box_capture"] = {
        m: {b: pooled_capture(*counts[f"lap/boxes/{m}/{b}"])
            for b in BINARIZATIONS if f"lap/boxes/{m}/{b}" in counts}
        for m in methods}
    report["truncated_iou"] = summaries("truncated_iou/")
  comparisons = paired_comparisons(values)
  if comparisons:
    report["significance"] = {
        "test": "paired t-test over images, two-sided", "reference": "lap",
        "scores": comparisons}
  labels, preds = arrays["lap/labels"], arrays["lap/predictions"]
  positive = binary_positive_class(dcs)
  if positive is not None:
    report["classification"] = binary_summary(labels, preds,
                                              positive=positive)
  if num_laps:
    report["standalone"] = {}
    for i in range(num_laps):
      p = arrays[f"lap/standalone/{i}"]
      row = {"predictivity_f1": float(np.nanmean(metrics.f1_scores(
                 labels, p, dcs.num_classes))),
             "compatibility_f1": float(np.nanmean(metrics.f1_scores(
                 preds, p, dcs.num_classes)))}
      if positive is not None:
        rates = binary_summary(labels, p, positive=positive)
        row.update(sensitivity=rates["sensitivity"],
                   specificity=rates["specificity"])
      elif mlp:
        scores = metrics.standalone_evaluation(
            arrays[f"lap/val/features/{i}"], arrays["lap/val/labels"],
            arrays[f"lap/features/{i}"], labels, preds,
            num_classes=dcs.num_classes, key=jax.random.fold_in(key, i))
        row.update({f"mlp_{n}": v for n, v in scores.items()})
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
