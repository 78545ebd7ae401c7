"""The LAP report's protocol additions: paired tests, binary rates, tables.

The end-to-end report of a trained run is tested in test_evaluate.py; here
the pieces on hand-made values.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.evaluation import lap_report
from lapjax.lap import dcs as dcs_lib
from lapjax.metrics.significance import paired_t_test


def test_binary_positive_class():
  assert lap_report.binary_positive_class(dcs_lib.binary()) == 1
  assert lap_report.binary_positive_class(dcs_lib.binary(positive=0)) == 0
  assert lap_report.binary_positive_class(
      dcs_lib.one_vs_others(4, bgo=0)) is None
  assert lap_report.binary_positive_class(dcs_lib.one_vs_others(2)) is None


def test_paired_comparisons_lap_against_every_other_method():
  lap = np.array([0.5, 0.6, np.nan, 0.7, 0.4])
  gc = np.array([0.3, 0.5, 0.2, 0.4, 0.4])
  ig = np.array([0.1, 0.2, 0.1, 0.3, np.nan])
  per_image = {
      "iou/mu_sigma": {"lap": lap, "lap1": lap - 0.1, "grad_cam": gc,
                       "gradient": ig},
      "iou/lap_0.5": {"lap": lap, "lap1": lap},         # no other method
      "iou/learned": {"grad_cam": gc},                   # no LAP
  }
  out = lap_report.paired_comparisons(per_image)
  assert set(out) == {"iou/mu_sigma"}
  assert set(out["iou/mu_sigma"]) == {"grad_cam", "gradient"}
  r = out["iou/mu_sigma"]["grad_cam"]
  assert r == paired_t_test(lap, gc)
  assert (r["n"], r["n_dropped"]) == (4, 1)
  assert r["mean_difference"] == pytest.approx(np.mean([0.2, 0.1, 0.3, 0.0]))
  assert out["iou/mu_sigma"]["gradient"]["n"] == 3


def test_box_scores_pool_the_boxes_of_all_images():
  # Image 0: one 4 x 4 box; image 1: two 2 x 2 boxes. The map ranks the
  # upper rows first; "half" marks the upper half of every box, "one"
  # only image 1's first box.
  boxes = np.array([[[0, 0, 4, 4], [0, 0, 0, 0]],
                    [[0, 0, 2, 2], [3, 3, 5, 5]]], np.float32)
  valid = np.array([[True, False], [True, True]])
  maps = np.broadcast_to(-np.arange(6.0)[:, None], (2, 6, 6))
  half = np.zeros((2, 6, 6), bool)
  half[0, 0:2, 0:4] = True
  half[1, 0, 0:2] = True
  half[1, 3, 3:5] = True
  one = np.zeros((2, 6, 6), bool)
  one[1, 0:2, 0:2] = True
  scores = lap_report.box_scores(
      jnp.asarray(maps), {"half": jnp.asarray(half), "one": jnp.asarray(one)},
      jnp.asarray(boxes), jnp.asarray(valid))
  pooled = {b: lap_report.pooled_capture(s["n_captured"].sum(),
                                         s["n_boxes"].sum())
            for b, s in scores.items()}
  np.testing.assert_array_equal(scores["half"]["n_boxes"], [1, 2])
  assert pooled["half"] == {"sensitivity": 1.0, "n_captured": 3,
                            "n_boxes": 3}
  np.testing.assert_array_equal(scores["one"]["n_captured"], [0, 1])
  assert pooled["one"]["sensitivity"] == pytest.approx(1 / 3)
  # "half" is exactly the truncated target: 1 on both images; "one" marks
  # 4 pixels of which the 2 upper ones are in image 1's 4-pixel target.
  np.testing.assert_allclose(scores["half"]["truncated_iou"], [1.0, 1.0])
  np.testing.assert_allclose(scores["one"]["truncated_iou"], [0.0, 2 / 6])
  assert lap_report.pooled_capture(0, 0)["sensitivity"] != \
      lap_report.pooled_capture(0, 0)["sensitivity"]        # NaN, no boxes


def test_report_streamed_in_padded_batches_equals_one_batch(detached_lap,
                                                            monkeypatch):
  # 40 test images in batches of 16 (16, 16, 8 padded to 16) give the
  # report of one batch of 40: per-image scores do not depend on the batch.
  # The tiny run classifies almost nothing right, so every clue image is
  # scored here (the selection is not what this test is about).
  import jax

  correct = lap_report._correct_clue_images

  def every_clue_image(clf, batch, dcs):
    _, pred = correct(clf, batch, dcs)
    return np.flatnonzero(batch["label"] != dcs.bgo), pred

  monkeypatch.setattr(lap_report, "_correct_clue_images", every_clue_image)
  one, streamed = [
      detached_lap.lap_evaluation(methods=("grad_cam",), lap_images=40,
                                  lap_val_images=32, batch_size=batch_size)
      for batch_size in (40, 16)]
  assert one["n_images"] > 16                # more than one batch's worth
  assert set(one["iou"]) == {"grad_cam", "lap", "lap1", "lap2"}
  jax.tree.map(_assert_same, one, streamed)


def _assert_same(a, b):
  if isinstance(a, str):
    assert a == b
  else:
    np.testing.assert_allclose(a, b, rtol=1e-6)


def _report():
  summary = {"mean": 0.25, "std": 0.05, "n": 4, "nan": 0}
  return {
      "n_images": 4, "n_validation_images": 2,
      "iou": {"lap": {"mu_sigma": summary, "lap_0.5": summary},
              "grad_cam": {"mu_sigma": summary}},
      "srg": {"lap": summary, "grad_cam": summary},
      "keep_top_accuracy": {"fractions": [0.1, 0.5],
                            "lap": [0.75, 1.0], "grad_cam": [0.25, 0.5]},
      "learned_thresholds": {},
      "box_capture": {
          "lap": {"mu_sigma": {"sensitivity": 0.6, "n_captured": 3,
                               "n_boxes": 5}},
          "grad_cam": {"mu_sigma": {"sensitivity": float("nan"),
                                    "n_captured": 0, "n_boxes": 0}}},
      "truncated_iou": {"lap": {"mu_sigma": summary},
                        "grad_cam": {"mu_sigma": summary}},
      "significance": {"test": "paired t-test over images, two-sided",
                       "reference": "lap",
                       "scores": {"iou/mu_sigma": {"grad_cam": paired_t_test(
                           [0.5, 0.6, 0.7, 0.4], [0.3, 0.5, 0.4, 0.4])}}},
      "classification": {"n": 8, "accuracy": 0.75, "sensitivity": 0.5,
                         "specificity": 1.0, "balanced_accuracy": 0.75,
                         "f1": 2 / 3},
      "standalone": {"lap1": {"predictivity_f1": 0.9,
                              "compatibility_f1": 0.8,
                              "sensitivity": 0.7,
                              "specificity": float("nan")}},
  }


def test_markdown_shows_the_new_numbers():
  text = "\n".join(lap_report.markdown(_report()))
  assert "| method | 10 % | 50 % |" in text
  assert "| lap | 75.0 | 100.0 |" in text           # keep-top-k, percent
  assert "| grad_cam | 25.0 | 50.0 |" in text
  assert "percent of the 5 clue boxes" in text
  row = next(line for line in text.splitlines()
             if line.startswith("| lap | 60.0"))      # capture mu_sigma
  assert "25.0 ± 5.0" in row                         # tIoU mu_sigma
  assert "| grad_cam | n/a |" in text                # no box: undefined
  # LAP minus Grad-CAM: (0.2 + 0.1 + 0.3 + 0) / 4 = 15 points.
  r = _report()["significance"]["scores"]["iou/mu_sigma"]["grad_cam"]
  assert (f"| grad_cam | +15.0 ± {100 * r['standard_error']:.1f} "
          f"(p = {r['p_value']:.3f}, n=4) |") in text
  assert "| 0.750 | 0.500 | 1.000 | 0.750 | 0.667 |" in text
  assert "| lap1 | 0.900 | 0.800 | 0.700 | n/a |" in text


def test_markdown_without_the_optional_parts():
  report = _report()
  for k in ("box_capture", "truncated_iou", "significance",
            "classification"):
    report.pop(k)
  report["standalone"] = {"lap1": {"predictivity_f1": 0.9,
                                   "compatibility_f1": 0.8,
                                   "mlp_predictivity_top1": 0.625,
                                   "mlp_compatibility_top1": 0.5}}
  text = "\n".join(lap_report.markdown(report))
  assert "Box-capture" not in text and "paired t-test" not in text
  assert "sensitivity" not in text and "top-5" not in text
  assert ("| LAP as a predictor | predictivity F1 | compatibility F1 | MLP "
          "predictivity top-1 | MLP compatibility top-1 |") in text
  assert "| lap1 | 0.900 | 0.800 | 0.625 | 0.500 |" in text
  assert "| lap | 75.0 | 100.0 |" in text


def test_standalone_classes_from_the_peaks_of_the_dc_maps():
  # one_vs_others(4, bgo=0): DCs 0, 1, 2 stand for classes 1, 2, 3; a DC
  # is detected above 0.5 (not at it), the highest detected peak wins.
  dcs = dcs_lib.one_vs_others(4, bgo=0)
  peaks = np.array([[0.9, 0.2, 0.7], [0.1, 0.3, 0.4], [0.6, 0.2, 0.8],
                    [0.5, 0.5, 0.5]])
  np.testing.assert_array_equal(
      lap_report.standalone_classes(peaks, dcs), [1, 0, 3, 0])
  # Without BGO the best DC wins, detected or not.
  np.testing.assert_array_equal(lap_report.standalone_classes(
      peaks, dcs_lib.one_vs_others(3)), [0, 2, 2, 0])
  # From the maps [B, h, w, M]: each DC's peak at one of four pixels.
  maps = np.zeros((4, 2, 2, 3))
  maps[:, 1, 0] = peaks
  np.testing.assert_array_equal(
      lap_report.standalone_predictions([maps], dcs)[0], [1, 0, 3, 0])
