"""Box-capture sensitivity and truncated IoU (paper 000, App. D.2.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.data import boxes as boxes_lib
from lapjax.metrics import box_localization as bl

H, W = 8, 10                                  # H != W on purpose


def _boxes(*rows):
  """``[1, N, 4]`` boxes and ``[1, N]`` validity from ``(y0, x0, y1, x1)``
  rows (None: an invalid row)."""
  b = np.array([r if r is not None else (0, 0, 0, 0) for r in rows],
               np.float32)[None]
  return b, np.array([[r is not None for r in rows]])


def test_box_masks_agree_with_the_data_convention():
  boxes = np.array([[[2, 1, 6, 5], [0.6, 0.6, 2.4, 2.4], [5, 7, 8, 10]],
                    [[0, 0, 8, 10], [1, 1, 2, 2], [0, 0, 0, 0]]], np.float32)
  valid = np.array([[True, True, False], [False, True, True]])
  masks = np.asarray(bl.box_masks(boxes, valid, H, W))
  assert masks.shape == (2, 3, H, W)
  for n in range(3):                    # each row alone, via boxes.py
    np.testing.assert_array_equal(masks[:, n], boxes_lib.boxes_to_mask(
        boxes[:, n:n + 1], valid[:, n:n + 1], H, W))
  # Pixel centres 0.5, 1.5, 2.5: only (1, 1) lies in [0.6, 2.4)^2.
  assert masks[0, 1].sum() == 1 and masks[0, 1, 1, 1]


def test_box_capture_at_exactly_half():
  boxes, valid = _boxes((2, 1, 6, 5), None)            # 4 x 4 = 16 pixels
  half = np.zeros((1, H, W), bool)
  half[0, 2:4, 1:5] = True                             # 8 of 16
  out = bl.box_capture(half, boxes, valid)
  np.testing.assert_allclose(out["coverage"][0, 0], 0.5)
  assert np.isnan(out["coverage"][0, 1])               # the invalid row
  assert bool(out["captured"][0, 0]) and not bool(out["captured"][0, 1])
  assert int(out["n_captured"][0]) == 1 and int(out["n_boxes"][0]) == 1
  one_less = half.copy()
  one_less[0, 3, 4] = False                            # 7 of 16
  out = bl.box_capture(one_less, boxes, valid)
  np.testing.assert_allclose(out["coverage"][0, 0], 7 / 16)
  assert int(out["n_captured"][0]) == 0
  np.testing.assert_array_equal(out["sensitivity"], [0.0])
  # Marked pixels outside the box do not count.
  outside = np.zeros((1, H, W), bool)
  outside[0, 6:, :] = True
  assert float(bl.box_capture(outside, boxes, valid)["coverage"][0, 0]) == 0


def test_box_capture_pools_boxes_over_images():
  boxes = np.array([[[0, 0, 2, 2], [4, 4, 8, 8]],
                    [[0, 0, 4, 4], [0, 0, 0, 0]],
                    [[0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
  valid = np.array([[True, True], [True, False], [False, False]])
  a = np.zeros((3, H, W), bool)
  a[0, :2, :2] = True                  # image 0: first box only
  a[1, :4, :4] = True                  # image 1: its box
  out = bl.box_capture(a, boxes, valid)
  np.testing.assert_array_equal(out["n_captured"], [1, 1, 0])
  np.testing.assert_array_equal(out["n_boxes"], [2, 1, 0])
  np.testing.assert_array_equal(out["sensitivity"][:2], [0.5, 1.0])
  assert np.isnan(out["sensitivity"][2])           # no box: undefined
  # The data set's sensitivity: 2 captured of 3 boxes.
  assert out["n_captured"].sum() / out["n_boxes"].sum() == pytest.approx(2 / 3)
  strict = bl.box_capture(a, boxes, valid, min_coverage=1.0)
  np.testing.assert_array_equal(strict["n_captured"], [1, 1, 0])


def test_truncated_target_keeps_the_best_half_of_each_box():
  boxes, valid = _boxes((2, 1, 6, 5))                  # 16 pixels
  maps = np.zeros((1, H, W), np.float32)
  maps[0, 4:6, 1:5] = 1.0                              # the box's lower half
  target = np.asarray(bl.truncated_box_mask(maps, boxes, valid))
  expected = np.zeros((1, H, W), bool)
  expected[0, 4:6, 1:5] = True
  np.testing.assert_array_equal(target, expected)
  # A map marking exactly the truncated target scores 1, although its IoU
  # with the whole box is only 8 / 16.
  t = bl.truncated_iou(maps, maps > 0.5, boxes, valid)
  np.testing.assert_allclose(t, [1.0])
  # Marking the whole box: 8 / 16.
  whole = np.zeros((1, H, W), bool)
  whole[0, 2:6, 1:5] = True
  np.testing.assert_allclose(bl.truncated_iou(maps, whole, boxes, valid),
                             [0.5])


def test_truncated_target_odd_boxes_ties_and_overlaps():
  # A 3 x 3 box keeps ceil(9 / 2) = 5 pixels; a constant map keeps the
  # first five in raster order (stable tie-breaking).
  boxes, valid = _boxes((1, 1, 4, 4))
  target = np.asarray(bl.truncated_box_mask(np.zeros((1, H, W)), boxes,
                                            valid))
  expected = np.zeros((H, W), bool)
  expected[1, 1:4] = True
  expected[2, 1:3] = True
  np.testing.assert_array_equal(target[0], expected)
  # Two overlapping boxes: the union of their own best halves. The map
  # grows by 1 per column and 0.1 per row: box A (rows 0-1, cols 0-3)
  # keeps its two right columns, box B (rows 0-3, cols 2-3) its right one.
  boxes, valid = _boxes((0, 0, 2, 4), (0, 2, 4, 4))
  maps = (np.arange(H)[:, None] * 0.1 + np.arange(W)[None, :])[None]
  target = np.asarray(bl.truncated_box_mask(maps, boxes, valid))
  expected = np.zeros((H, W), bool)
  expected[0:2, 2:4] = True                     # A: 4 pixels
  expected[0:4, 3] = True                       # B: 4 pixels, 2 shared
  np.testing.assert_array_equal(target[0], expected)
  a = np.zeros((1, H, W), bool)
  a[0, 0:4, 3] = True                           # 4 pixels, all in target
  a[0, 7, 0] = True                             # and 1 outside
  np.testing.assert_allclose(bl.truncated_iou(maps, a, boxes, valid),
                             [4 / 7])


def test_truncated_iou_undefined_without_boxes_or_with_nan_maps():
  boxes = np.array([[[2, 1, 6, 5]], [[0, 0, 0, 0]], [[2, 1, 6, 5]]],
                   np.float32)
  valid = np.array([[True], [False], [True]])
  maps = np.ones((3, H, W), np.float32)
  maps[2, 0, 0] = np.nan
  out = np.asarray(bl.truncated_iou(maps, maps > 0.5, boxes, valid))
  assert np.isfinite(out[0])
  assert np.isnan(out[1]) and np.isnan(out[2])
  # All pixels marked: the union is the image, the target 8 pixels.
  np.testing.assert_allclose(out[0], 8 / (H * W))


def test_jit_and_batch_independence():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(4, H, W)).astype(np.float32)
  binary = maps > 0.3
  boxes = np.array([[[1, 2, 5, 7], [0, 0, 3, 3]]] * 4, np.float32)
  valid = np.array([[True, True], [True, False], [False, True],
                    [True, True]])
  eager = bl.truncated_iou(maps, binary, boxes, valid)
  jitted = jax.jit(bl.truncated_iou)(maps, binary, boxes, valid)
  np.testing.assert_array_equal(eager, jitted)
  single = bl.truncated_iou(maps[1:2], binary[1:2], boxes[1:2], valid[1:2])
  np.testing.assert_array_equal(eager[1:2], single)
  cap = jax.jit(bl.box_capture)(binary, boxes, valid)
  np.testing.assert_array_equal(
      cap["n_captured"], bl.box_capture(binary, boxes, valid)["n_captured"])


def test_bad_inputs_are_refused():
  boxes, valid = _boxes((2, 1, 6, 5))
  with pytest.raises(ValueError, match="binarise first"):
    bl.box_capture(jnp.ones((1, H, W)), boxes, valid)
  with pytest.raises(ValueError, match="min_coverage"):
    bl.box_capture(jnp.ones((1, H, W), bool), boxes, valid, min_coverage=0)
  with pytest.raises(ValueError, match="keep_fraction"):
    bl.truncated_box_mask(jnp.ones((1, H, W)), boxes, valid,
                          keep_fraction=1.5)
  with pytest.raises(ValueError, match=r"\[B, N, 4\]"):
    bl.box_masks(np.zeros((1, 4)), np.ones((1,), bool), H, W)
  with pytest.raises(ValueError, match="same batch size"):
    bl.truncated_iou(jnp.ones((2, H, W)), jnp.ones((2, H, W), bool), boxes,
                     valid)
  with pytest.raises(ValueError, match="shape of maps"):
    bl.truncated_iou(jnp.ones((1, H, W)), jnp.ones((1, W, H), bool), boxes,
                     valid)
