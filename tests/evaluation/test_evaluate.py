"""evaluate(): the report of a trained run, and its errors."""

import json

import numpy as np
import pytest

from configs import default
from lapjax.data import sources
from lapjax.evaluation.evaluate import evaluate
from lapjax.train import load_state, predict, train_and_evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  train_and_evaluate(default.get_config("tiny"), str(workdir), progress=False)
  return workdir


def test_report_files_and_numbers(run):
  report = evaluate(None, str(run))
  on_disk = json.loads((run / "report.json").read_text())
  assert on_disk == json.loads(json.dumps(report))
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
  sanity = report["sanity"]["grad_cam"]
  assert sanity["layers"][0] == "head"
  assert sanity["spearman"][0] == pytest.approx(1.0)
  assert "## Explanations" in md and "## Cascading randomisation" in md
  for f in ("explanations.png", "sanity.png"):
    assert (run / f).stat().st_size > 10_000


def test_no_checkpoint_is_explained(tmp_path):
  (tmp_path / "config.json").write_text(default.get_config("tiny")
                                        .to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*train "
                     "first"):
    evaluate(None, str(tmp_path))


def test_not_a_run_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a lapjax run folder"):
    evaluate(None, str(tmp_path / "nothing"))
