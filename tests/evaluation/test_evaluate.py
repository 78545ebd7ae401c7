"""evaluate(): the report of a trained run, and its errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, sloc
from lapjax import attribution as attr
from lapjax import explain_loss, from_flax
from lapjax.data import sources
from lapjax.evaluation.evaluate import evaluate
from lapjax.train import load_state, predict, run_folder, train_and_evaluate


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
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  train_and_evaluate(default.get_config("tiny"), str(workdir), progress=False)
  return workdir


def test_report_files_and_numbers(run):
  report = evaluate(None, str(run))
  on_disk = json.loads((run / "report.json").read_text())
  assert on_disk == json.loads(run_folder.dumps(report))   # NaN -> null
  c = report["classification"]
  config = default.get_config("tiny")
  assert c["n"] == config.data.num_test
  cm = np.array(c["confusion_matrix"])
  assert cm.sum() == c["n"]
  assert c["accuracy"] == pytest.approx(np.trace(cm) / c["n"])
  # The numbers are those of the checkpointed model on the test split.
  model, state, _ = load_state(config, str(run))
  src, _ = sources.make_source(config.data, "test")
  logits, labels = predict(state, model, src, batch_size=32)
  assert c["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
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


def test_saliency_report_scores_grad_cam_against_the_boxes(run):
  """Paper 001's metrics, checked against a direct computation: Grad-CAM
  of the true class at the layer, min-max normalised, union box mask."""
  config = default.get_config("tiny")
  config.evaluation.methods = ("grad_cam",)
  config.evaluation.sanity_methods = ("grad_cam",)
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


def test_sloc_config_adds_slocs_and_the_faithfulness_table(run):
  config = sloc.get_config("tiny")
  report = evaluate(config, str(run))
  assert {"sloc", "sloc_xp", "sloc_m"} <= set(report["explanations"]["scores"])
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
  md = (run / "report.md").read_text()
  assert "## Faithfulness" in md and "| sloc_m |" in md


def test_no_checkpoint_is_explained(tmp_path):
  (tmp_path / "config.json").write_text(default.get_config("tiny")
                                        .to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*train "
                     "first"):
    evaluate(None, str(tmp_path))


def test_not_a_run_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a lapjax run folder"):
    evaluate(None, str(tmp_path / "nothing"))


def test_lap_evaluation_of_detached_laps_on_a_trained_run(run):
  import jax

  from configs import lap as lap_configs
  from lapjax.evaluation.lap_report import BINARIZATIONS, lap_evaluation
  from lapjax.train import loop
  from lapjax.train.state import create_train_state

  c = lap_configs.get_config("lap_detached,multi,tiny")
  c.init_from = str(run)
  c.evaluation.methods = ("gradient", "grad_cam")
  c.evaluation.lap_images = 64
  test, info = sources.make_source(c.data, "test")
  val, _ = sources.make_source(c.data, "validation")
  model = loop.build_model(c, info)
  tx, _ = loop.make_optimizer(c)
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  state = loop.init_from_run(state, tx, str(run), into="backbone")
  _, vanilla, _ = load_state(default.get_config("tiny"), str(run))
  jax.tree.map(np.testing.assert_array_equal, state.params["backbone"],
               vanilla.params)
  report = lap_evaluation(
      c, model, {"params": state.params, "batch_stats": state.batch_stats},
      test, val, lap_layers=loop.lap_map_layers(c),
      membership=loop.dc_membership(info), key=jax.random.key(0))
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
