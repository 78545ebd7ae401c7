"""The clue benchmark: ground truth matches pixels, determinism, design."""

import numpy as np
import pytest

from lapjax.data import boxes, clues

CFG = clues.CluesConfig()


@pytest.fixture(scope="module")
def batch():
  return clues.render(CFG, "train", np.arange(256), seed=3)


def test_shapes_dtypes_and_ranges(batch):
  assert batch["image"].shape == (256, 64, 64, 3)
  assert batch["image"].dtype == np.float32
  assert 0 <= batch["image"].min() and batch["image"].max() <= 1
  assert batch["mask"].shape == (256, 64, 64) and batch["mask"].dtype == bool
  assert batch["boxes"].shape == (256, 3, 4)
  np.testing.assert_array_equal(batch["label"], np.arange(256) % 4)


def test_mask_is_exactly_the_rendered_clue_pixels(batch):
  """The clue pixels are what changes when the clues are drawn."""
  erased = clues.render(CFG, "train", np.arange(256), seed=3,
                        draw_clues=False)
  changed = np.any(batch["image"] != erased["image"], axis=-1)
  # Every changed pixel is a clue pixel; clue pixels whose colour happens to
  # equal the background after noise and clipping are vanishingly rare.
  assert not np.any(changed & ~batch["mask"])
  assert np.mean(changed[batch["mask"]]) > 0.999
  # Background-only images have no clue pixels, clue images have some.
  has_clue = batch["label"] > 0
  assert not batch["mask"][~has_clue].any()
  assert batch["mask"][has_clue].any(axis=(1, 2)).all()


def test_boxes_are_tight_around_clue_pixels(batch):
  h, w = CFG.image_size
  valid = batch["boxes_valid"]
  np.testing.assert_array_equal(valid.sum(1) > 0, batch["label"] > 0)
  union = boxes.boxes_to_mask(batch["boxes"], valid, h, w)
  assert not np.any(batch["mask"] & ~union)        # boxes cover the mask
  boxes.validate_boxes(batch["boxes"][valid], h, w)
  for i, k in zip(*np.nonzero(valid)):             # each edge touches a clue
    y0, x0, y1, x1 = batch["boxes"][i, k].astype(int)
    inside = batch["mask"][i, y0:y1, x0:x1]
    assert inside[0].any() and inside[-1].any()
    assert inside[:, 0].any() and inside[:, -1].any()


def test_clue_sizes_follow_the_config(batch):
  b = batch["boxes"][batch["boxes_valid"]]
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (64 * 64)
  # Rendered boxes are rasterised: allow one pixel of slack on each side.
  assert area.min() >= 0.5 * CFG.min_clue_fraction
  assert area.max() <= 1.3 * CFG.max_clue_fraction
  assert area.max() > 5 * area.min()               # sizes really vary
  counts = batch["boxes_valid"][batch["label"] > 0].sum(1)
  assert set(counts.tolist()) == {1, 2, 3}


def test_deterministic_and_independent_of_batch_composition():
  a = clues.render(CFG, "test", [5, 9, 2], seed=1)
  b = clues.render(CFG, "test", [9], seed=1)
  for k in a:
    np.testing.assert_array_equal(a[k][1:2], b[k])
  c = clues.render(CFG, "test", [5, 9, 2], seed=1)
  for k in a:
    np.testing.assert_array_equal(a[k], c[k])


def test_seeds_and_splits_differ():
  a = clues.render(CFG, "train", np.arange(8), seed=0)["image"]
  b = clues.render(CFG, "train", np.arange(8), seed=1)["image"]
  c = clues.render(CFG, "test", np.arange(8), seed=0)["image"]
  assert np.all(np.abs(a - b).mean(axis=(1, 2, 3)) > 0.01)
  assert np.all(np.abs(a - c).mean(axis=(1, 2, 3)) > 0.01)


def test_h_ne_w_and_binary_form():
  cfg = clues.CluesConfig(image_size=(48, 80), binary=True)
  b = clues.render(cfg, "validation", np.arange(64))
  assert b["image"].shape == (64, 48, 80, 3)
  np.testing.assert_array_equal(b["label"], np.arange(64) % 2)
  assert b["mask"][b["label"] == 1].any(axis=(1, 2)).all()
  assert not b["mask"][b["label"] == 0].any()
  union = boxes.boxes_to_mask(b["boxes"], b["boxes_valid"], 48, 80)
  assert not np.any(b["mask"] & ~union)
  assert cfg.class_names == ("no clue", "clue")
  np.testing.assert_array_equal(cfg.dc_membership, [[-1, 1]])


def test_one_vs_others_dc_metadata():
  np.testing.assert_array_equal(
      CFG.dc_membership,
      [[-1, 1, -1, -1], [-1, -1, 1, -1], [-1, -1, -1, 1]])
  assert CFG.class_names == ("background", "ring", "cross", "triangle")


def test_coarse_boxes_contain_exact_ones():
  exact = clues.render(CFG, "train", np.arange(64))
  coarse = clues.render(clues.CluesConfig(box_padding=0.3), "train",
                        np.arange(64))
  np.testing.assert_array_equal(exact["image"], coarse["image"])
  m_exact = boxes.boxes_to_mask(exact["boxes"], exact["boxes_valid"], 64, 64)
  m_coarse = boxes.boxes_to_mask(coarse["boxes"], coarse["boxes_valid"], 64,
                                 64)
  assert np.all(m_coarse >= m_exact)
  assert m_coarse.sum() > 1.3 * m_exact.sum()


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": (24, 24)}, "too small for min_clue_fraction"),
    ({"num_clue_classes": 9}, "num_clue_classes"),
    ({"min_clue_fraction": 0.2, "max_clue_fraction": 0.1}, "min_clue"),
])
def test_bad_configs_are_refused_with_the_reason(kwargs, match):
  with pytest.raises(ValueError, match=match):
    clues.CluesConfig(**kwargs)


def test_bad_split_and_indices():
  with pytest.raises(ValueError, match="split must be one of"):
    clues.render(CFG, "val", [0])
  with pytest.raises(ValueError, match="indices must be >= 0"):
    clues.render(CFG, "train", [-1])


def test_sample_grid_cli(tmp_path):
  out = tmp_path / "samples.png"
  clues._main(["--out", str(out), "--num", "8"])
  assert out.stat().st_size > 10_000
