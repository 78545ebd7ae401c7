"""evaluate(): the report of a trained run, and its errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, sloc
from lapjax import attribution as attr
from lapjax import explain_loss, from_flax
from lapjax.data import sources
from lapjax.evaluation import explanations
from lapjax.evaluation.evaluate import evaluate
from lapjax.evaluation.maps_on_disk import read_maps
from lapjax.evaluation.methods import method_classifiers, standard_methods
from lapjax.metrics import (
  CONSTANT_MAP,
  EMPTY_MASK,
  FULL_MASK,
  classification_summary,
  nan_summary,
  validity,
)
from lapjax.train import load_state, predict, run_folder


@pytest.fixture(scope="module", autouse=True)
def optimised_xla():
  """With ``jax_disable_most_optimizations`` (conftest.py) XLA:CPU returns
  NaN for a ``vmap`` of input-gradient VJPs of the tiny trained model (the
  randomisation check's jitted ``gradient`` maps); the optimised program,
  the one users run, is exact. Found 2026-11-22 with jax 0.10.2."""
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="module")
def run(tiny_run_dir, tmp_path_factory):
  return shutil.copytree(tiny_run_dir, tmp_path_factory.mktemp("e") / "run")


# Methods of every kind: plain gradients (through SmoothGrad, stochastic:
# its noise depends on the batch), guided gradients, a CAM, perturbation.
STREAMED_METHODS = ("smoothgrad", "guided_backprop", "grad_cam", "occlusion")


def _streamed_config(**evaluation):
  """The tiny run's config on 128 test images, in batches of 32."""
  config = default.get_config("tiny")
  config.data.num_test = 128
  config.evaluation.num_images = 128
  config.evaluation.methods = STREAMED_METHODS
  config.evaluation.sanity_methods = ()
  config.evaluation.write_maps = True
  config.evaluation.update(evaluation)
  return config


@pytest.fixture(scope="module")
def streamed(run):
  """The report of ``_streamed_config`` and the maps of its methods
  computed in memory, as evaluate.py did before streaming."""
  config = _streamed_config()
  report = evaluate(config, str(run))
  e = config.evaluation
  model, state, info = load_state(config, str(run))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  src, _ = sources.make_source(config.data, "test")
  batch = src.get(np.arange(e.num_images))
  table = standard_methods(
      e.layer, key=jax.random.key(e.seed), image_size=32,
      ig_steps=e.ig_steps, rise_masks=e.rise_masks,
      smoothgrad_samples=e.smoothgrad_samples, baseline=0.0)
  methods = {m: table[m] for m in e.methods}
  clfs = method_classifiers(methods, model, variables, layers=[e.layer],
                            input_shape=batch["image"].shape[1:])
  clf = clfs["plain"]
  maps = explanations.explain(clfs, batch["image"], batch["label"],
                              methods, batch_size=e.batch_size)
  return config, report, maps, batch, clf


def _assert_summaries_equal(got, expect):
  assert set(got) == set(expect)
  for k, v in expect.items():
    if isinstance(v, float) and np.isnan(v):
      assert np.isnan(got[k]), k
    else:
      assert got[k] == pytest.approx(v, abs=1e-6), k


def test_streaming_report_equals_the_in_memory_numbers(run, streamed):
  """Every number of the localisation table, the map status counts, the
  classification summary and the faithfulness table equal those of the
  metric functions applied to all 128 maps held in memory."""
  config, report, maps, batch, clf = streamed
  ex = report["explanations"]
  assert ex["n_images"] == 128 and list(ex["scores"]) == list(maps)
  for name, m in maps.items():
    codes = np.asarray(validity(m, batch["mask"]))
    expect = {k: nan_summary(v) if k == "sparseness"
              else nan_summary(v, codes, worst=0.0)
              for k, v in explanations.localization_scores(
                  m, batch["mask"]).items()}
    assert list(ex["scores"][name]) == list(expect)
    for metric, summary in expect.items():
      _assert_summaries_equal(ex["scores"][name][metric], summary)
    assert ex["map_status"][name] == {
        "usable_masks": int(np.sum((codes != EMPTY_MASK)
                                   & (codes != FULL_MASK))),
        "constant_maps": int(np.sum(codes == CONSTANT_MAP)),
        "nonfinite_maps": 0}
  model, state, _ = load_state(config, str(run))
  src, _ = sources.make_source(config.data, "test")
  logits, labels = predict(state, model, src, batch_size=32)
  assert report["classification"] == classification_summary(logits, labels)
  faith = report["faithfulness"]
  ok = np.flatnonzero(batch["label"] > 0)[:config.evaluation
                                          .faithfulness_images]
  assert faith["n_images"] == len(ok)
  for name, m in maps.items():
    values, skipped = explanations.faithfulness_scores(
        clf, batch["image"][ok], batch["label"][ok], m[ok],
        key=jax.random.fold_in(jax.random.key(0), 3),
        steps=config.evaluation.faithfulness_steps, baseline=0.0)
    assert faith["sic_aic_skipped"][name] == skipped
    for metric, v in values.items():
      _assert_summaries_equal(faith["scores"][name][metric], nan_summary(v))
  # The evaluator's state is removed once the report is written.
  assert not (run / "eval" / "state.npz").exists()


def test_maps_on_disk_are_the_maps_and_read_back_in_order(run, streamed):
  _, _, maps, batch, _ = streamed
  on_disk = read_maps(str(run / "eval" / "maps"))
  np.testing.assert_array_equal(on_disk["index"], np.arange(128))
  np.testing.assert_array_equal(on_disk["target"], batch["label"])
  assert set(on_disk["maps"]) == set(maps)
  for name, m in maps.items():
    np.testing.assert_allclose(on_disk["maps"][name], m, atol=1e-6)


def test_a_padded_last_batch_changes_no_number(run, streamed):
  """128 images in batches of 48 (the last one 32 images and 16 padding):
  the same sums as batches of 32, for methods whose maps do not depend on
  the batch (SmoothGrad's noise is drawn per batch): a gradient method, a
  CAM and a perturbation method, which runs the model on the padding."""
  _, report, _, _, _ = streamed
  deterministic = ("guided_backprop", "grad_cam", "occlusion")
  padded = evaluate(_streamed_config(batch_size=48, methods=deterministic,
                                     write_maps=False, figure_images=0,
                                     faithfulness_images=0), str(run))
  for name in deterministic:
    for metric, summary in report["explanations"]["scores"][name].items():
      _assert_summaries_equal(padded["explanations"]["scores"][name][metric],
                              summary)


def test_report_files_and_numbers(run):
  """The SLOC config's report (the tiny run's, with SLOC's three versions
  and the faithfulness table): files, counts and sections."""
  config = sloc.get_config("tiny")
  # A CAM (also the randomisation check's method) and SLOC's three
  # versions: every method compiles its own streamed program, and the
  # other kinds (gradient, guided, stochastic, perturbation) go through
  # the same plumbing in ``streamed`` above; each method's maps are
  # checked in tests/attribution and test_methods.py.
  config.evaluation.methods = ("grad_cam", "sloc", "sloc_m", "sloc_xp")
  report = evaluate(config, str(run))
  on_disk = json.loads((run / "report.json").read_text())
  assert on_disk == json.loads(run_folder.dumps(report))   # NaN -> null
  c = report["classification"]
  assert c["n"] == config.data.num_test
  cm = np.array(c["confusion_matrix"])
  assert cm.sum() == c["n"]
  assert c["accuracy"] == pytest.approx(np.trace(cm) / c["n"])
  md = (run / "report.md").read_text()
  assert "| accuracy |" in md and "| balanced accuracy |" in md
  assert "![predictions.png](predictions.png)" in md
  assert (run / "predictions.png").stat().st_size > 10_000
  # Every configured method x every localisation metric, NaNs counted.
  scores = report["explanations"]["scores"]
  assert list(scores) == list(config.evaluation.methods)
  for per_metric in scores.values():
    assert set(per_metric) == {
        "pointing_game", "relevance_mass", "relevance_rank",
        "top_k_intersection", "roc_auc", "iou", "f1", "region_attribution",
        "sparseness"}
    # Background-only images (a quarter) have no clue: NaN, counted.
    rma = per_metric["relevance_mass"]
    assert rma["nan"] >= config.evaluation.num_images // 4
    assert rma["n"] + rma["nan"] == config.evaluation.num_images
  # Per method, the maps without a score, counted on the clue images.
  clue_images = int(np.sum(sources.make_source(config.data, "test")[0].get(
      np.arange(config.evaluation.num_images))["label"] > 0))
  for status in report["explanations"]["map_status"].values():
    assert status["usable_masks"] == clue_images
  assert "### Maps without a score" in md and "### Worst case" in md
  assert "saliency" not in report        # not trained with explain_loss
  sanity = report["sanity"]["grad_cam"]
  assert sanity["layers"][0] == "head"
  assert sanity["spearman"][0] == pytest.approx(1.0)
  assert "## Explanations" in md and "## Cascading randomisation" in md
  for f in ("explanations.png", "sanity.png"):
    assert (run / f).stat().st_size > 10_000
  assert {"sloc", "sloc_xp", "sloc_m"} <= set(scores)
  faith = report["faithfulness"]
  assert all(p in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65,
                   0.7, 0.75, 0.8) for p in faith["sloc_xp_p"])
  assert faith["n_images"] == config.evaluation.faithfulness_images
  for per_metric in faith["scores"].values():
    assert list(per_metric) == ["pos", "neg", "del", "ins", "npd", "idd",
                                "aic", "sic"]
    for name in ("pos", "neg", "del", "ins"):
      s = per_metric[name]
      assert s["n"] == faith["n_images"] and 0 <= s["mean"] <= 100
  assert "## Faithfulness" in md and "| sloc_m |" in md


def test_saliency_report_scores_grad_cam_against_the_boxes(run):
  """Paper 001's metrics, checked against a direct computation: Grad-CAM
  of the true class at the layer, min-max normalised, union box mask."""
  config = default.get_config("tiny")
  config.evaluation.methods = ("grad_cam",)
  config.evaluation.sanity_methods = ()
  config.evaluation.saliency_report = True
  config.explain_loss.layer = "block2"
  report = evaluate(config, str(run))
  section = report["saliency"]["scores"]
  model, state, _ = load_state(config, str(run))
  src, _ = sources.make_source(config.data, "test")
  b = src.get(np.arange(config.evaluation.num_images))
  pos = b["label"] > 0                # every clue image has boxes
  clf = from_flax(model, {"params": state.params,
                          "batch_stats": state.batch_stats},
                  layers=["block2"])
  h = np.asarray(explain_loss.normalize_minmax(attr.grad_cam(
      clf, jnp.asarray(b["image"][pos]), b["label"][pos], layer="block2",
      resize=False)))
  m = np.asarray(explain_loss.box_mask(b["boxes"][pos], b["boxes_valid"][pos],
                                       h.shape[1:], b["image"].shape[1:3]))
  ok = h.sum((1, 2)) > 0
  expect = (h * m).sum((1, 2))[ok] / h.sum((1, 2))[ok]
  assert section["all_precision"]["n"] == ok.sum()
  assert section["all_precision"]["nan"] == pos.sum() - ok.sum()
  assert section["all_precision"]["mean"] == pytest.approx(expect.mean(),
                                                           rel=1e-5)
  assert section["top_precision"]["n"] + section["top_precision"]["nan"] == (
      pos.sum())
  assert "## Saliency" in (run / "report.md").read_text()


def test_no_checkpoint_is_explained(tmp_path):
  (tmp_path / "config.json").write_text(default.get_config("tiny")
                                        .to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*train "
                     "first"):
    evaluate(None, str(tmp_path))


def test_not_a_run_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a lapjax run folder"):
    evaluate(None, str(tmp_path / "nothing"))


def test_lap_evaluation_of_detached_laps_on_a_trained_run(run,
                                                         detached_lap):
  from lapjax.evaluation.lap_report import BINARIZATIONS

  _, vanilla, _ = load_state(default.get_config("tiny"), str(run))
  jax.tree.map(np.testing.assert_array_equal,
               detached_lap.state.params["backbone"], vanilla.params)
  report = detached_lap.lap_evaluation(methods=("gradient", "grad_cam"),
                                       lap_images=64)
  assert report["n_images"] > 0
  assert set(report["iou"]) == {"gradient", "grad_cam", "lap", "lap1",
                                "lap2"}
  assert set(report["iou"]["lap"]) <= set(BINARIZATIONS)
  assert "lap_0.5" in report["iou"]["lap"]
  assert "lap_0.5" not in report["iou"]["grad_cam"]
  for s in report["srg"].values():
    assert s["n"] == report["n_images"]
  assert len(report["keep_top_accuracy"]["grad_cam"]) == 5
  assert set(report["standalone"]) == {"lap1", "lap2"}
