"""tensorflow-datasets image classification data, without TensorFlow.

``tfds.data_source`` gives random access to a prepared dataset (array_record
files in ``data_dir``); this module turns records into lapjax batch dicts:
``image [B, H, W, C] float32`` in [0, 1] resized to ``image_size`` (bilinear),
``label [B] int32``, and for datasets with boxes ``boxes [B, N, 4]``
``(y0, x0, y1, x1)`` in pixels of the resized image, ``boxes_valid [B, N]``
and ``mask [B, H, W]`` (the union of the boxes).

Labels: a dataset's top-level ``label`` ClassLabel when it has one; for
detection datasets (``voc``, ``coco``: ``objects/label``) the label of the
largest object, and the boxes are those of the objects of that class (the
evidence for the label). Datasets are never downloaded from here: prepare
them first (``tfds build NAME --data_dir DIR``, or the manual steps
``imagenet2012`` needs) and pass ``data_dir``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lapjax.data import boxes as boxes_lib

MAX_BOXES = 16   # boxes kept per image (the largest first)


def _builder(name: str, data_dir: str | None):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split("/")[0], known, n=5)
    raise ValueError(
        f"tensorflow-datasets does not know the dataset {name!r}"
        + (f"; close names: {close}" if close else "")
        + " (see tfds.list_builders())") from None


def _label_spec(features) -> tuple[str, object]:
  """Where the class label lives: ``('label', ClassLabel)`` or objects."""
  if "label" in features and isinstance(features["label"],
                                        tfds.features.ClassLabel):
    return "label", features["label"]
  objects = features["objects"] if "objects" in features else None
  if objects is not None:
    inner = objects.feature
    if "label" in inner and isinstance(inner["label"],
                                       tfds.features.ClassLabel):
      return "objects", inner["label"]
  raise ValueError(
      f"dataset features {list(features.keys())} have neither a 'label' "
      "ClassLabel nor 'objects/label': not an image classification dataset")


def dataset_info(name: str, *, image_size: Sequence[int],
                 data_dir: str | None = None) -> dict:
  """``num_classes``, ``class_names``, ``image_shape`` of a tfds dataset."""
  features = _builder(name, data_dir).info.features
  _, label = _label_spec(features)
  if "image" not in features:
    raise ValueError(f"dataset {name!r} has no 'image' feature; features: "
                     f"{list(features.keys())}")
  channels = features["image"].shape[-1] or 3
  return {"num_classes": label.num_classes, "class_names": list(label.names),
          "image_shape": (*image_size, channels)}


class TfdsSource:
  """Random-access batches of one split of a prepared tfds dataset.

  Args:
    name: tfds name, e.g. ``'cifar10'``, ``'voc/2007'``.
    split: tfds split string, e.g. ``'train'``, ``'test[:50%]'``.
    image_size: ``(H, W)`` every image is resized to.
    data_dir: where the dataset was prepared (tfds default if None).
    max_examples: use at most this many examples (the first ones).
  """

  def __init__(self, name: str, *, split: str, image_size: Sequence[int],
               data_dir: str | None = None, max_examples: int | None = None):
    self.info = dataset_info(name, image_size=image_size, data_dir=data_dir)
    self._where, _ = _label_spec(_builder(name, data_dir).info.features)
    self._has_boxes = self._where == "objects"
    self.image_size = tuple(image_size)
    self._source = tfds.data_source(name, split=split, data_dir=data_dir,
                                    download=False)
    n = len(self._source)
    self.num_examples = n if max_examples is None else min(n, max_examples)

  def _one(self, record: dict) -> dict[str, np.ndarray]:
    h, w = self.image_size
    image = np.asarray(record["image"])
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    resized = np.asarray(pil.resize((w, h), Image.BILINEAR), np.float32)
    resized = resized.reshape(h, w, -1) / 255.0
    out = {"image": resized}
    if not self._has_boxes:
      out["label"] = np.int32(record["label"])
      return out
    objects = record["objects"]
    n = min(len(objects["bbox"]), len(objects["label"]))
    bbox = np.asarray(objects["bbox"], np.float32)[:n].reshape(n, 4)
    labels = np.asarray(objects["label"], np.int64)[:n]
    # tfds boxes are normalised (ymin, xmin, ymax, xmax).
    lo = np.minimum(bbox[:, :2], bbox[:, 2:])
    hi = np.maximum(bbox[:, :2], bbox[:, 2:])
    pixel = np.clip(np.concatenate([lo, hi], -1), 0, 1) * np.array(
        [h, w, h, w], np.float32)
    area = (pixel[:, 2] - pixel[:, 0]) * (pixel[:, 3] - pixel[:, 1])
    label = labels[np.argmax(area)] if n else 0
    keep = np.flatnonzero(labels == label)
    keep = keep[np.argsort(-area[keep], kind="stable")][:MAX_BOXES]
    boxes = np.zeros((MAX_BOXES, 4), np.float32)
    boxes[:len(keep)] = pixel[keep]
    valid = np.arange(MAX_BOXES) < len(keep)
    out.update(label=np.int32(label), boxes=boxes, boxes_valid=valid)
    return out

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices).reshape(-1)
    if indices.size and (indices.min() < 0
                         or indices.max() >= self.num_examples):
      raise IndexError(f"indices must be in [0, {self.num_examples}); got "
                       f"[{indices.min()}, {indices.max()}]")
    rows = [self._one(self._source[int(i)]) for i in indices]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    if self._has_boxes:
      h, w = self.image_size
      batch["mask"] = boxes_lib.boxes_to_mask(batch["boxes"],
                                              batch["boxes_valid"], h, w)
    return batch
