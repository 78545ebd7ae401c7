"""ImageNet-S-style image + mask folders (lapjax.data.image_dir)."""

import os

import numpy as np
import pytest
from PIL import Image

from lapjax.data.image_dir import ImageDirSource, mask_ids
from lapjax.photos import preprocess


def _write(root, wnid, name, image, ids):
  for sub in ("validation", "validation-segmentation"):
    os.makedirs(root / sub / wnid, exist_ok=True)
  Image.fromarray(image).save(root / "validation" / wnid / f"{name}.png")
  if ids is not None:
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(
        root / "validation-segmentation" / wnid / f"{name}.png")


def test_mask_ids_are_red_plus_256_green():
  rgb = np.array([[[44, 1, 0], [0, 0, 0], [232, 3, 9]]], np.uint8)
  np.testing.assert_array_equal(mask_ids(rgb), [[300, 0, 1000]])


def test_folder_gives_card_transformed_images_labels_and_object_masks(
    tmp_path):
  rng = np.random.default_rng(0)
  h, w = 30, 50
  image = rng.integers(0, 255, (h, w, 3), np.uint8)
  ids = np.zeros((h, w), np.int64)
  ids[5:20, 10:40] = 300          # the object (G channel used)
  ids[:, 40:] = 1000              # ignored: not object
  _write(tmp_path, "n02", "a", image, ids)
  _write(tmp_path, "n01", "b", image[::-1].copy(), ids[::-1].copy())
  _write(tmp_path, "n01", "no_mask", image, None)    # skipped
  src = ImageDirSource(str(tmp_path), image_size=(16, 16), resize_size=20)
  assert src.num_examples == 2 and src.class_names == ["n01", "n02"]
  batch = src.get(np.array([1, 0]))
  np.testing.assert_array_equal(batch["label"], [1, 0])
  ref = preprocess(image, resize_size=20, input_size=(16, 16),
                   mean=(0, 0, 0), std=(1, 1, 1))
  np.testing.assert_allclose(batch["image"][0], ref, atol=1e-6)
  # The mask, resized (nearest) and cropped with the same geometry: shorter
  # side 30 -> 20 (x 2/3), width 50 -> 33, crop offsets (2, 8).
  obj = (ids != 0) & (ids != 1000)
  ref_mask = np.asarray(Image.fromarray(obj.astype(np.uint8) * 255).resize(
      (33, 20), Image.NEAREST))[2:18, 8:24] > 0
  np.testing.assert_array_equal(batch["mask"][0], ref_mask)
  assert batch["mask"][0].any() and not batch["mask"][0].all()


def test_class_list_orders_labels_and_unknown_folders_are_named(tmp_path):
  img = np.zeros((8, 8, 3), np.uint8)
  ids = np.ones((8, 8), np.int64)
  _write(tmp_path, "n05", "a", img, ids)
  _write(tmp_path, "n07", "b", img, ids)
  listing = tmp_path / "classes.txt"
  listing.write_text("n07 seven\nn09 nine\nn05 five\n")
  src = ImageDirSource(str(tmp_path), image_size=(8, 8), resize_size=None,
                       class_list=str(listing))
  np.testing.assert_array_equal(src.get(np.arange(2))["label"], [2, 0])
  listing.write_text("n07\n")
  with pytest.raises(ValueError, match=r"\['n05'\].*not in the class list"):
    ImageDirSource(str(tmp_path), image_size=(8, 8), class_list=str(listing))


def test_missing_mask_folder_is_named(tmp_path):
  os.makedirs(tmp_path / "validation" / "n01")
  with pytest.raises(FileNotFoundError, match="validation-segmentation"):
    ImageDirSource(str(tmp_path), image_size=(8, 8))
