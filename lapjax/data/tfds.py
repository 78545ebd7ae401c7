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

Options for the papers' protocols (``configs/protocols/``):
``resize_size`` resizes the shorter side and centre-crops to
``image_size`` (a model card's evaluation transform, as
``lapjax.photos.preprocess``, without the normalisation the model does
itself); ``multi_label`` gives every present class of a detection dataset
(``labels [B, L]``, -1 padded, and ``class_masks [B, L, H, W]``: the union
of each class's boxes), so that an evaluation explains one map per present
class; ``min_object_fraction`` drops objects smaller than that fraction
of the image (paper 003 on COCO: 1 %).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lapjax.data import boxes as boxes_lib
from lapjax.data.decode import check_indices, resize_and_crop

MAX_BOXES = 16   # boxes kept per image (the largest first)
MAX_LABELS = 8   # present classes kept per image (multi_label)
# Files a dataset prepared from manual downloads needs in its manual_dir.
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar",
                                 "ILSVRC2012_img_val.tar")}


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


def _data_source(name: str, split: str, data_dir: str | None,
                 manual_dir: str | None):
  """``tfds.data_source``, with what to do when the dataset is not
  prepared (array_record) in ``data_dir``."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except (NotImplementedError, FileNotFoundError, AssertionError) as e:
    builder = _builder(name, data_dir)
    where = builder.data_dir
    base = name.split("/")[0]
    steps = (f"prepare it first: tfds build {name} --data_dir "
             f"{data_dir or '<data_dir>'} --file_format array_record")
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
      manual = manual_dir or os.path.join(
          data_dir or os.path.expanduser("~/tensorflow_datasets"),
          "downloads", "manual")
      needed = MANUAL_FILES.get(base, ())
      missing = [f for f in needed
                 if not os.path.exists(os.path.join(manual, f))]
      files = (f" needs the files {list(needed)} in its manual_dir {manual}"
               + (f" (missing: {missing})" if missing else "")
               if needed else f" needs its manual_dir ({manual})")
      steps = (f"{name}{files}; {' '.join(instructions.split())} Then: "
               f"tfds build "
               f"{name} --data_dir {data_dir or '<data_dir>'} --manual_dir "
               f"{manual} --file_format array_record")
    raise ValueError(f"dataset {name!r} is not prepared as array_record in "
                     f"{where} (tfds: {e}); {steps}") from e


class TfdsSource:
  """Random-access batches of one split of a prepared tfds dataset.

  Args:
    name: tfds name, e.g. ``'cifar10'``, ``'voc/2007'``.
    split: tfds split string, e.g. ``'train'``, ``'test[:50%]'``.
    image_size: ``(H, W)`` every image is resized (or cropped) to.
    data_dir: where the dataset was prepared (tfds default if None).
    max_examples: use at most this many examples (the first ones).
    resize_size: None resizes to ``image_size``; a number resizes the
      shorter side to it, then centre-crops ``image_size`` (a card's
      transform; boxes follow).
    interpolation: ``'bilinear'`` or ``'bicubic'`` (with ``resize_size``).
    multi_label: detection datasets only: every present class
      (``labels``, ``class_masks``) beside the largest object's ``label``.
    min_object_fraction: objects whose box covers less than this fraction
      of the (resized) image are dropped.
    manual_dir: where manually downloaded archives are (named in the error
      when the dataset is not prepared).

  Raises:
    ValueError: the dataset is unknown, or not prepared in ``data_dir``
      (the message says how to prepare it and, for ``imagenet2012``, which
      archives are needed where).
  """

  def __init__(self, name: str, *, split: str, image_size: Sequence[int],
               data_dir: str | None = None, max_examples: int | None = None,
               resize_size: int | None = None,
               interpolation: str = "bilinear", multi_label: bool = False,
               min_object_fraction: float = 0.0,
               manual_dir: str | None = None):
    self.info = dataset_info(name, image_size=image_size, data_dir=data_dir)
    self._where, _ = _label_spec(_builder(name, data_dir).info.features)
    self._has_boxes = self._where == "objects"
    if multi_label and not self._has_boxes:
      raise ValueError(f"multi_label needs a detection dataset (objects/"
                       f"label); {name!r} has one label per image")
    if interpolation not in ("bilinear", "bicubic"):
      raise ValueError(f"interpolation must be 'bilinear' or 'bicubic'; "
                       f"got {interpolation!r}")
    self.image_size = tuple(image_size)
    self.resize_size, self.interpolation = resize_size, interpolation
    self.multi_label = multi_label
    self.min_object_fraction = float(min_object_fraction)
    self._source = _data_source(name, split, data_dir, manual_dir)
    n = len(self._source)
    self.num_examples = n if max_examples is None else min(n, max_examples)

  def _image(self, image: np.ndarray) -> tuple[np.ndarray, tuple]:
    """The resized (and cropped) image in [0, 1] and the box transform
    ``(scale_y, scale_x, offset_y, offset_x)`` in pixels of the input."""
    h, w = self.image_size
    rgb = image[..., 0] if image.shape[-1] == 1 else image
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[
        self.interpolation]
    out, geometry = resize_and_crop(Image.fromarray(rgb), self.image_size,
                                    self.resize_size, resample)
    return (np.asarray(out, np.float32).reshape(h, w, -1) / 255.0,
            geometry)

  def _one(self, record: dict) -> dict[str, np.ndarray]:
    h, w = self.image_size
    image = np.asarray(record["image"])
    resized, (sy, sx, oy, ox) = self._image(image)
    out = {"image": resized}
    if not self._has_boxes:
      out["label"] = np.int32(record["label"])
      return out
    ih, iw = image.shape[:2]
    objects = record["objects"]
    n = min(len(objects["bbox"]), len(objects["label"]))
    bbox = np.asarray(objects["bbox"], np.float32)[:n].reshape(n, 4)
    labels = np.asarray(objects["label"], np.int64)[:n]
    # tfds boxes are normalised (ymin, xmin, ymax, xmax).
    lo = np.minimum(bbox[:, :2], bbox[:, 2:])
    hi = np.maximum(bbox[:, :2], bbox[:, 2:])
    pixel = np.clip(np.concatenate([lo, hi], -1), 0, 1) * np.array(
        [ih, iw, ih, iw], np.float32)
    pixel = np.clip(boxes_lib.scale_boxes(pixel, sy, sx, oy, ox), 0,
                    np.array([h, w, h, w], np.float32))
    area = (pixel[:, 2] - pixel[:, 0]) * (pixel[:, 3] - pixel[:, 1])
    big = area > 0
    if self.min_object_fraction > 0:
      big &= area >= self.min_object_fraction * h * w
    pixel, labels, area = pixel[big], labels[big], area[big]
    label = labels[np.argmax(area)] if len(labels) else 0
    keep = np.flatnonzero(labels == label)
    keep = keep[np.argsort(-area[keep], kind="stable")][:MAX_BOXES]
    boxes = np.zeros((MAX_BOXES, 4), np.float32)
    boxes[:len(keep)] = pixel[keep]
    valid = np.arange(MAX_BOXES) < len(keep)
    out.update(label=np.int32(label), boxes=boxes, boxes_valid=valid)
    if self.multi_label:
      present = np.unique(labels)[:MAX_LABELS]
      out["labels"] = np.full(MAX_LABELS, -1, np.int32)
      out["labels"][:len(present)] = present
      masks = np.zeros((MAX_LABELS, h, w), bool)
      for j, c in enumerate(present):
        mine = pixel[labels == c]
        masks[j] = boxes_lib.boxes_to_mask(
            mine[None], np.ones((1, len(mine)), bool), h, w)[0]
      out["class_masks"] = masks
    return out

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = check_indices(indices, self.num_examples)
    rows = [self._one(self._source[int(i)]) for i in indices]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    if self._has_boxes:
      h, w = self.image_size
      batch["mask"] = boxes_lib.boxes_to_mask(batch["boxes"],
                                              batch["boxes_valid"], h, w)
    return batch
