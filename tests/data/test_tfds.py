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
