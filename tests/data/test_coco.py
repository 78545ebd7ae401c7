"""COCO-format instance files (lapjax.data.coco), on generated files."""

import json

import numpy as np
import pytest
from PIL import Image

from lapjax.data.coco import CocoSource, instance_mask, rle_decode


def test_rle_is_column_major_starting_with_zeros():
  # 2 x 3 image, column-major order: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2).
  got = rle_decode([1, 2, 3], 2, 3)
  np.testing.assert_array_equal(got, [[False, True, False],
                                      [True, False, False]])
  with pytest.raises(ValueError, match="sum to 5"):
    rle_decode([1, 4], 2, 3)


def test_polygon_mask_covers_its_rectangle():
  m = instance_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 10)  # x, y pairs
  assert m[1:5, 2:7].all() and m.sum() == 4 * 5
  with pytest.raises(ValueError, match="compressed RLE"):
    instance_mask({"counts": "abc", "size": [8, 10]}, 8, 10)


def write_coco(root, *, h=20, w=30):
  """Three images: classes 7 (two instances) and 3 (an RLE); a crowd
  annotation only (skipped); a tiny class-5 object beside a class-3 one."""
  rng = np.random.default_rng(0)
  (root / "images").mkdir()
  for name in ("a.png", "b.png", "c.png"):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(
        root / "images" / name)

  def rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]
  data = {
      "images": [{"id": 1, "file_name": "a.png", "height": h, "width": w},
                 {"id": 2, "file_name": "b.png", "height": h, "width": w},
                 {"id": 3, "file_name": "c.png", "height": h, "width": w}],
      "categories": [{"id": 3, "name": "three"}, {"id": 5, "name": "five"},
                     {"id": 7, "name": "seven"}],
      "annotations": [
          {"image_id": 1, "category_id": 7, "iscrowd": 0,
           "segmentation": rect(0, 0, 10, 10)},
          {"image_id": 1, "category_id": 7, "iscrowd": 0,
           "segmentation": rect(20, 10, 29, 19)},
          {"image_id": 1, "category_id": 3, "iscrowd": 0,
           "segmentation": {"counts": [0, h * w // 2, h * w // 2],
                            "size": [h, w]}},
          {"image_id": 2, "category_id": 3, "iscrowd": 1,
           "segmentation": rect(0, 0, 5, 5)},
          {"image_id": 3, "category_id": 5, "iscrowd": 0,
           "segmentation": rect(0, 0, 1, 1)},
          {"image_id": 3, "category_id": 3, "iscrowd": 0,
           "segmentation": rect(0, 0, 29, 19)}]}
  path = root / "instances.json"
  path.write_text(json.dumps(data))
  return str(path), str(root / "images")


def test_every_present_class_with_the_union_of_its_instances(tmp_path):
  ann, images = write_coco(tmp_path)
  src = CocoSource(ann, images, image_size=(20, 30), resize_size=None,
                   min_object_fraction=0.02)
  assert src.num_examples == 2                   # the crowd-only image
  assert src.class_names == ["three", "five", "seven"]
  b = src.get(np.arange(2))
  # Image a: class 3 (the left half, by RLE: 300 pixels) is the largest
  # object, then the two class-7 rectangles.
  np.testing.assert_array_equal(b["labels"][0, :3], [0, 2, -1])
  assert b["label"][0] == 0
  left = np.zeros((20, 30), bool)
  left[:, :15] = True
  np.testing.assert_array_equal(b["class_masks"][0, 0], left)
  seven = instance_mask([[0, 0, 10, 0, 10, 10, 0, 10]], 20, 30) | \
      instance_mask([[20, 10, 29, 10, 29, 19, 20, 19]], 20, 30)
  np.testing.assert_array_equal(b["class_masks"][0, 1], seven)
  assert b["boxes_valid"][0].sum() == 3
  # Image c: the 4-pixel class-5 object is under 2 % of 600 pixels.
  np.testing.assert_array_equal(b["labels"][1, :2], [0, -1])
  np.testing.assert_allclose(b["image"][0], np.asarray(
      Image.open(tmp_path / "images" / "a.png"), np.float32) / 255)
