"""The report files: strict JSON, atomic writes, early config checks, and
the per-method count of maps without a score with its worst case."""

import json

import numpy as np
import pytest

from configs import default
from lapjax.evaluation import streaming
from lapjax.evaluation.evaluate import evaluate
from lapjax.evaluation.report import write_report


def _report(**extra):
  return {"workdir": "/w", "step": 3, "split": "test", "model": "m",
          "data": "d", "class_names": ["a", "b"],
          "classification": {"n": 2, "accuracy": 0.5,
                             "balanced_accuracy": float("nan"),
                             "f1_macro": 0.5, "f1_per_class": [None, 1.0],
                             "confusion_matrix": [[1, 0], [1, 0]]},
          **extra}


def _refuse(name):
  raise ValueError(f"not strict JSON: {name}")


def test_report_json_is_strict_with_null_for_undefined(tmp_path):
  report = _report(extra={"values": [1.0, float("inf"), np.float32("nan"),
                                     np.int64(3)]})
  json_path, md_path = write_report(str(tmp_path), report)
  on_disk = json.loads((tmp_path / "report.json").read_text(),
                       parse_constant=_refuse)
  assert on_disk["classification"]["balanced_accuracy"] is None
  assert on_disk["extra"]["values"] == [1.0, None, None, 3]
  assert "| balanced accuracy | nan |" in (tmp_path / "report.md").read_text()
  assert (json_path, md_path) == (str(tmp_path / "report.json"),
                                  str(tmp_path / "report.md"))


def test_a_failed_write_leaves_the_previous_report_intact(tmp_path):
  write_report(str(tmp_path), _report())
  before = {p.name: p.read_text() for p in tmp_path.iterdir()}
  with pytest.raises(TypeError, match="not JSON serializable"):
    write_report(str(tmp_path), _report(extra=object()))
  after = {p.name: p.read_text() for p in tmp_path.iterdir()}
  assert after == before               # no partial file, no temporary left


def test_maps_without_a_score_are_counted_and_scored_as_misses():
  """Four images: two clue masks hit by their maps' peaks, one clue mask
  with an all-zero map (undefined: a CAM after its ReLU) and one empty mask
  (the background class: undefined for every map)."""
  masks = np.zeros((4, 8, 8), bool)
  masks[:3, 2:4, 2:4] = True
  maps = np.zeros((4, 8, 8), np.float32)
  maps[0, 3, 3] = maps[1, 2, 2] = 1.0
  maps[3, 5, 5] = 1.0
  scores, status = streaming.localization_summaries(maps, masks)
  assert status == {"usable_masks": 3, "constant_maps": 1,
                    "nonfinite_maps": 0}
  pg = scores["pointing_game"]
  assert (pg["mean"], pg["n"], pg["nan"]) == (1.0, 2, 2)
  assert pg["worst_mean"] == pytest.approx(2 / 3)      # hit, hit, miss
  assert "worst_mean" not in scores["sparseness"]
  from lapjax.evaluation.report import _failure_tables
  lines = "\n".join(_failure_tables(
      {"scores": {"grad_cam": scores}, "map_status": {"grad_cam": status}}))
  assert "| grad_cam | 3 | 1 | 0 |" in lines
  assert "### Worst case" in lines
  row = next(ln for ln in lines.splitlines()
             if ln.startswith("| grad_cam |") and "0.667" in ln)
  assert row.split(" | ")[1] == "0.667"                # pointing game first


def _run_folder(tmp_path, **evaluation):
  config = default.get_config("tiny")
  for k, v in evaluation.items():
    config.evaluation[k] = v
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  return config


@pytest.mark.parametrize("field, value, match", [
    ("methods", ("grad_cam", "gradcam"),
     r"unknown config.evaluation.methods \['gradcam'\]; available: "),
    ("sanity_methods", ("grad_cam", "smoothgrads"),
     r"unknown config.evaluation.sanity_methods \['smoothgrads'\]"),
    ("methods", ("lap",), r"unknown config.evaluation.methods \['lap'\]"),
    ("num_images", 0, "config.evaluation.num_images must be "
     ">= 1; got 0"),
    ("sanity_keys", 0, "sanity_keys must be >= 1; got 0"),
])
def test_evaluation_config_is_checked_before_any_work(tmp_path, field, value,
                                                       match):
  """The folder has no checkpoint: the config error comes first."""
  _run_folder(tmp_path, **{field: value})
  with pytest.raises(ValueError, match=match):
    evaluate(None, str(tmp_path))
  assert not (tmp_path / "predictions.png").exists()
