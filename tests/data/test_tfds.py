"""tensorflow-datasets pipelines, offline with tfds.testing.mock_data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lapjax.data import boxes, sources
from lapjax.data.tfds import TfdsSource, dataset_info
from lapjax.train.config import base_config


def test_classification_dataset_batches():
  with tfds.testing.mock_data(num_examples=10):
    src = TfdsSource("mnist", split="train", image_size=(16, 12),
                     max_examples=7)
    assert src.num_examples == 7
    batch = src.get(np.array([0, 3, 6]))
    raw = tfds.data_source("mnist", split="train")[3]
  assert batch["image"].shape == (3, 16, 12, 1)
  assert batch["image"].dtype == np.float32
  assert 0 <= batch["image"].min() and batch["image"].max() <= 1
  assert batch["label"].dtype == np.int32 and batch["label"][1] == raw["label"]
  assert "boxes" not in batch
  assert src.info == {"num_classes": 10, "class_names": [str(i) for i in
                                                         range(10)],
                      "image_shape": (16, 12, 1)}


def test_detection_dataset_gives_boxes_of_the_largest_objects_class():
  h, w = 40, 24
  with tfds.testing.mock_data(num_examples=6):
    src = TfdsSource("voc/2007", split="train", image_size=(h, w))
    batch = src.get(np.arange(6))
    raws = [tfds.data_source("voc/2007", split="train")[i] for i in range(6)]
  assert batch["boxes"].shape == (6, 16, 4)
  for i, raw in enumerate(raws):
    n = min(len(raw["objects"]["bbox"]), len(raw["objects"]["label"]))
    bb = np.asarray(raw["objects"]["bbox"], np.float32)[:n]
    lo, hi = np.minimum(bb[:, :2], bb[:, 2:]), np.maximum(bb[:, :2],
                                                          bb[:, 2:])
    px = np.concatenate([lo, hi], 1) * [h, w, h, w]
    area = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])
    label = raw["objects"]["label"][:n][np.argmax(area)]
    assert batch["label"][i] == label
    same = np.asarray(raw["objects"]["label"][:n]) == label
    assert batch["boxes_valid"][i].sum() == min(same.sum(), 16)
    np.testing.assert_allclose(batch["boxes"][i, 0], px[np.argmax(area)],
                               rtol=1e-5)
  boxes.validate_boxes(batch["boxes"][batch["boxes_valid"]], h, w)
  np.testing.assert_array_equal(
      batch["mask"],
      boxes.boxes_to_mask(batch["boxes"], batch["boxes_valid"], h, w))


def test_make_source_from_config():
  data = base_config().data
  data.name = "tfds:cifar10"
  data.image_size = (8, 8)
  data.num_test = 3
  with tfds.testing.mock_data(num_examples=10):
    src, info = sources.make_source(data, "test")
    assert info["image_shape"] == (8, 8, 3) and info["num_classes"] == 10
    assert src.num_examples == 3
    assert src.get(np.arange(3))["image"].shape == (3, 8, 8, 3)


def test_unknown_dataset_name_is_named_with_close_matches():
  with pytest.raises(ValueError, match=r"does not know the dataset 'mnsit'"
                     r".*close names: \[.*'mnist'"):
    dataset_info("mnsit", image_size=(8, 8))


def test_not_a_classification_dataset():
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match="not an image classification"):
      dataset_info("squad", image_size=(8, 8))


def test_multi_label_gives_every_present_class_and_its_boxes():
  h, w = 24, 20
  with tfds.testing.mock_data(num_examples=6):
    src = TfdsSource("voc/2007", split="test", image_size=(h, w),
                     multi_label=True)
    batch = src.get(np.arange(6))
    raws = [tfds.data_source("voc/2007", split="test")[i] for i in range(6)]
  for i, raw in enumerate(raws):
    n = min(len(raw["objects"]["bbox"]), len(raw["objects"]["label"]))
    bb = np.asarray(raw["objects"]["bbox"], np.float32)[:n]
    lab = np.asarray(raw["objects"]["label"])[:n]
    px = np.concatenate([np.minimum(bb[:, :2], bb[:, 2:]),
                         np.maximum(bb[:, :2], bb[:, 2:])], 1) * [h, w, h, w]
    area = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])
    present = np.unique(lab[area > 0])
    got = batch["labels"][i]
    np.testing.assert_array_equal(got[got >= 0], present[:8])
    assert (got[len(present):] == -1).all()
    for j, c in enumerate(present[:8]):
      mine = px[(lab == c) & (area > 0)]
      ref = boxes.boxes_to_mask(mine[None], np.ones((1, len(mine)), bool),
                                h, w)[0]
      np.testing.assert_array_equal(batch["class_masks"][i, j], ref)
    assert not batch["class_masks"][i, len(present):].any()


def test_resize_size_is_the_cards_resize_then_centre_crop():
  from lapjax.photos import preprocess
  with tfds.testing.mock_data(num_examples=3):
    src = TfdsSource("voc/2007", split="test", image_size=(16, 16),
                     resize_size=20)
    batch = src.get(np.arange(3))
    raws = [tfds.data_source("voc/2007", split="test")[i] for i in range(3)]
  for i, raw in enumerate(raws):
    image = np.asarray(raw["image"])
    ref = preprocess(image, resize_size=20, input_size=(16, 16),
                     mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(batch["image"][i], ref, atol=1e-6)
    # A box follows: scale by the resize, shift by the crop, clip.
    ih, iw = image.shape[:2]
    s = 20 / min(ih, iw)
    nh, nw = int(20 if ih <= iw else ih * s), int(20 if iw <= ih else iw * s)
    top, left = round((nh - 16) / 2), round((nw - 16) / 2)
    n = min(len(raw["objects"]["bbox"]), len(raw["objects"]["label"]))
    bb = np.asarray(raw["objects"]["bbox"], np.float32)[:n]
    px = np.concatenate([np.minimum(bb[:, :2], bb[:, 2:]),
                         np.maximum(bb[:, :2], bb[:, 2:])], 1)
    moved = np.clip(px * [nh, nw, nh, nw] - [top, left, top, left], 0, 16)
    kept = batch["boxes"][i][batch["boxes_valid"][i]]
    for box in kept:     # every kept box is one of the moved boxes
      assert np.abs(moved - box).max(1).min() < 1e-3


def test_unprepared_imagenet_names_the_archives_and_where(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
  with pytest.raises(ValueError) as e:
    TfdsSource("imagenet2012", split="validation", image_size=(8, 8),
               data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  msg = str(e.value)
  assert "is not prepared as array_record" in msg
  assert "tfds:" in msg                           # tfds's own message
  assert "ILSVRC2012_img_train.tar" in msg and str(manual) in msg
  assert "(missing: ['ILSVRC2012_img_train.tar'])" in msg
  assert "tfds build imagenet2012" in msg and "--manual_dir" in msg


def test_min_object_fraction_drops_small_objects():
  h, w = 24, 20
  with tfds.testing.mock_data(num_examples=6):
    big = TfdsSource("voc/2007", split="test", image_size=(h, w),
                     multi_label=True, min_object_fraction=0.3
                     ).get(np.arange(6))
    raws = [tfds.data_source("voc/2007", split="test")[i] for i in range(6)]
  for i, raw in enumerate(raws):
    n = min(len(raw["objects"]["bbox"]), len(raw["objects"]["label"]))
    bb = np.asarray(raw["objects"]["bbox"], np.float32)[:n]
    lab = np.asarray(raw["objects"]["label"])[:n]
    px = np.concatenate([np.minimum(bb[:, :2], bb[:, 2:]),
                         np.maximum(bb[:, :2], bb[:, 2:])], 1) * [h, w, h, w]
    area = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])
    present = np.unique(lab[area >= 0.3 * h * w])[:8]
    got = big["labels"][i]
    np.testing.assert_array_equal(got[got >= 0], present)
    kept = big["boxes"][i][big["boxes_valid"][i]]
    assert ((kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1])
            >= 0.3 * h * w - 1e-3).all()
