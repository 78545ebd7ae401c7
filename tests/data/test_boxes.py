"""The box convention: (y0, x0, y1, x1), pixel centres, H != W."""

import numpy as np
import pytest

from lapjax.data import boxes


def test_box_to_mask_covers_exact_pixels_off_centre_and_h_ne_w():
  # Rows 2..4 and columns 5..10 of a 7 x 13 image.
  b = np.array([[[2, 5, 5, 11]]], np.float32)
  mask = boxes.boxes_to_mask(b, np.array([[True]]), 7, 13)
  expected = np.zeros((1, 7, 13), bool)
  expected[0, 2:5, 5:11] = True
  np.testing.assert_array_equal(mask, expected)


def test_mask_to_box_is_the_inverse_on_rectangles_and_tight():
  mask = np.zeros((2, 9, 16), bool)
  mask[0, 1:4, 10:15] = True
  mask[1, 6, 0] = True
  got = boxes.mask_to_box(mask)
  np.testing.assert_array_equal(got, [[1, 10, 4, 15], [6, 0, 7, 1]])
  back = boxes.boxes_to_mask(got[:, None], np.ones((2, 1), bool), 9, 16)
  np.testing.assert_array_equal(back, mask)


def test_empty_mask_gives_zero_box_and_invalid_rows_are_ignored():
  assert boxes.mask_to_box(np.zeros((4, 5), bool)).tolist() == [0, 0, 0, 0]
  m = boxes.boxes_to_mask(np.array([[[0, 0, 4, 5]]], np.float32),
                          np.array([[False]]), 4, 5)
  assert not m.any()


def test_scale_boxes_follows_image_resize():
  b = np.array([[2, 4, 6, 8]], np.float32)
  np.testing.assert_allclose(boxes.scale_boxes(b, 0.5, 0.25, 10, 20),
                             [[11, 21, 13, 22]])


def test_validate_boxes_names_the_problem():
  with pytest.raises(ValueError, match="y0 <= y1"):
    boxes.validate_boxes(np.array([[5, 0, 2, 3]]), 10, 10)
  with pytest.raises(ValueError, match="inside the image"):
    boxes.validate_boxes(np.array([[0, 0, 11, 3]]), 10, 10)
  with pytest.raises(ValueError, match="last axis of size 4"):
    boxes.validate_boxes(np.zeros((2, 3)), 10, 10)


def test_coarsen_boxes_pads_and_merges_overlaps():
  b = np.array([[[10, 10, 20, 20], [21, 21, 25, 25], [0, 40, 4, 44]]],
               np.float32)
  valid = np.ones((1, 3), bool)
  out, ok = boxes.coarsen_boxes(b, valid, 50, 50, padding=0.2)
  # The first two overlap once padded and merge; the third stays apart.
  assert ok.tolist() == [[True, False, True]]
  np.testing.assert_array_equal(out[0, 0], [8, 8, 26, 26])
  np.testing.assert_array_equal(out[0, 2], [0, 39, 5, 45])  # clipped at 0
  exact = boxes.boxes_to_mask(b, valid, 50, 50)
  coarse = boxes.boxes_to_mask(out, ok, 50, 50)
  assert np.all(coarse >= exact)   # coarse boxes contain the exact ones
