"""Grid pointing game composition."""

import numpy as np
import pytest

from lapjax.data import boxes, clues, grid


def test_quadrants_hold_the_half_size_tiles_with_labels_masks_and_boxes():
  cfg = clues.CluesConfig(image_size=(56, 64), num_clue_classes=4)
  batch = clues.render(cfg, "test", np.arange(40))
  tiles = grid.choose_tiles(batch["label"], 6, seed=0)
  out = grid.make_grids(batch, tiles)
  assert out["image"].shape == (6, 56, 64, 3)
  for g in range(6):
    assert len(set(out["labels"][g].tolist())) == 4       # distinct classes
  np.testing.assert_array_equal(out["labels"], batch["label"][tiles])
  # Bottom-left quadrant of grid 0 is tile 2, area-averaged 2x2.
  src = batch["image"][tiles[0, 2]]
  expected = src.reshape(28, 2, 32, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(out["image"][0, 28:, :32], expected, rtol=1e-6)
  # Quadrant masks partition the grid.
  np.testing.assert_array_equal(out["quadrant_mask"].sum(1), 1)
  assert out["quadrant_mask"][0, 1, 0, 63] and out["quadrant_mask"][0, 2, 55, 0]
  # Evidence masks stay inside their quadrant, boxes cover them.
  assert not np.any(out["mask"] & ~out["quadrant_mask"])
  # Halved boxes sit on half pixels: they cover the mask to half a pixel.
  grown = out["boxes"] + np.array([-0.5, -0.5, 0.5, 0.5], np.float32)
  union = boxes.boxes_to_mask(grown, out["boxes_valid"], 56, 64)
  assert np.all(union >= out["mask"].any(1))
  exact = boxes.boxes_to_mask(out["boxes"], out["boxes_valid"], 56, 64)
  assert (exact & out["mask"].any(1)).sum() > 0.9 * out["mask"].sum()
  q = out["box_quadrant"]
  for g in range(6):
    for row in np.flatnonzero(out["boxes_valid"][g]):
      y0, x0, y1, x1 = out["boxes"][g, row]
      cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
      assert out["quadrant_mask"][g, q[row], int(cy), int(cx)]


def test_choose_tiles_is_deterministic_and_needs_four_classes():
  labels = np.arange(20) % 5
  a = grid.choose_tiles(labels, 3, seed=1)
  np.testing.assert_array_equal(a, grid.choose_tiles(labels, 3, seed=1))
  assert not np.array_equal(a, grid.choose_tiles(labels, 3, seed=2))
  with pytest.raises(ValueError, match="4 distinct classes.*have 3"):
    grid.choose_tiles(np.arange(9) % 3, 1, seed=0)


def test_bad_tiles_and_odd_sizes():
  batch = {"image": np.zeros((4, 7, 8, 3), np.float32),
           "label": np.arange(4)}
  with pytest.raises(ValueError, match="even image size"):
    grid.make_grids(batch, [[0, 1, 2, 3]])
  batch["image"] = np.zeros((4, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match=r"tiles must be \[G, 4\]"):
    grid.make_grids(batch, [[0, 1, 2]])
  with pytest.raises(ValueError, match="index the batch of 4"):
    grid.make_grids(batch, [[0, 1, 2, 4]])
