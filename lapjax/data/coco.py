"""COCO-format instance annotations: every present class, its boxes and
masks.

tensorflow-datasets' ``coco`` builder needs TensorFlow to construct
(``tf.int64`` in its features), so lapjax reads COCO the way it ships:
an instances file (``annotations/instances_val2017.json``) and an image
folder (``val2017/``). Per image: ``image [H, W, 3]`` in ``[0, 1]`` (a
card's transform: shorter side to ``resize_size``, centre crop to
``image_size``; or a plain resize), ``labels [L]`` (every present class,
-1 padded; classes are the file's categories in id order, 0..79 for
COCO), ``class_masks [L, H, W]`` (the union of that class's instance
masks: polygons rasterised, uncompressed RLE decoded), ``boxes [N, 4]``
``(y0, x0, y1, x1)`` (the tight boxes of the transformed instance masks,
the largest first) with ``boxes_valid``, and ``label`` and ``mask`` (the
class of the largest object and its mask). Crowd annotations
(``iscrowd = 1``) are left out, and so are objects whose mask covers less
than ``min_object_fraction`` of the transformed image (paper 003 on COCO:
1 %).

References:
  Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014
  (the annotation format: https://cocodataset.org/#format-data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from lapjax.data.boxes import mask_to_box
from lapjax.data.decode import check_indices, resize_and_crop

MAX_LABELS = 8     # present classes kept per image (the largest first)
MAX_BOXES = 16     # instance boxes kept per image (the largest first)


def rle_decode(counts: Sequence[int], height: int, width: int
               ) -> np.ndarray:
  """``[H, W]`` bool of an uncompressed COCO RLE: run lengths over the
  column-major (Fortran-order) pixels, starting with a run of 0s."""
  flat = np.zeros(height * width, bool)
  pos, value = 0, False
  for run in counts:
    if value:
      flat[pos:pos + run] = True
    pos += int(run)
    value = not value
  if pos != height * width:
    raise ValueError(f"RLE counts sum to {pos}, not {height} x {width}")
  return flat.reshape(width, height).T


def instance_mask(segmentation, height: int, width: int) -> np.ndarray:
  """``[H, W]`` bool of an annotation's ``segmentation``: polygons
  ``[[x1, y1, x2, y2, ...], ...]`` (pixel coordinates) or an uncompressed
  RLE ``{'counts': [...], 'size': [H, W]}``.

  Raises:
    ValueError: a compressed (string) RLE, which needs pycocotools.
  """
  if isinstance(segmentation, dict):
    if isinstance(segmentation["counts"], str):
      raise ValueError("compressed RLE masks (string counts) are not "
                       "supported; pass instance files with polygons")
    return rle_decode(segmentation["counts"], height, width)
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  for polygon in segmentation:
    if len(polygon) >= 6:
      draw.polygon([float(v) for v in polygon], outline=1, fill=1)
  return np.asarray(canvas, bool)


class CocoSource:
  """Random-access COCO images with every present class's mask.

  Args:
    annotations: the instances JSON file.
    images: the folder of its images.
    image_size: ``(H, W)`` of the returned images.
    resize_size: shorter side before the centre crop (None: resize).
    min_object_fraction: drop objects whose mask covers less of the image.
    max_examples: at most this many images (in the file's order; images
      without any kept object are skipped).
  """

  def __init__(self, annotations: str, images: str, *,
               image_size: Sequence[int] = (224, 224),
               resize_size: int | None = 256,
               min_object_fraction: float = 0.0,
               max_examples: int | None = None):
    with open(annotations) as f:
      data = json.load(f)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    self.class_names = [c["name"] for c in categories]
    self._class = {c["id"]: i for i, c in enumerate(categories)}
    self.image_size = tuple(image_size)
    self.resize_size = resize_size
    self.min_object_fraction = float(min_object_fraction)
    self._folder = images
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
      if not a.get("iscrowd", 0):
        by_image.setdefault(a["image_id"], []).append(a)
    self._images = [im for im in data["images"] if im["id"] in by_image]
    self._annotations = by_image
    if max_examples is not None:
      self._images = self._images[:max_examples]
    self.num_examples = len(self._images)
    if not self.num_examples:
      raise ValueError(f"{annotations} has no image with a non-crowd "
                       "annotation")

  def _transform(self, img: Image.Image, resample) -> Image.Image:
    return resize_and_crop(img, self.image_size, self.resize_size,
                           resample)[0]

  def _one(self, i: int) -> dict[str, np.ndarray]:
    info = self._images[i]
    ih, iw = info["height"], info["width"]
    with Image.open(os.path.join(self._folder, info["file_name"])) as img:
      image = np.asarray(self._transform(img.convert("RGB"),
                                         Image.BILINEAR), np.float32)
    h, w = self.image_size
    objects = []
    for a in self._annotations[info["id"]]:
      m = instance_mask(a["segmentation"], ih, iw)
      m = np.asarray(self._transform(Image.fromarray(m), Image.NEAREST),
                     bool)
      if m.any() and m.mean() >= self.min_object_fraction:
        objects.append((self._class[a["category_id"]], m))
    objects.sort(key=lambda o: -o[1].sum())
    labels = np.full(MAX_LABELS, -1, np.int32)
    masks = np.zeros((MAX_LABELS, h, w), bool)
    present = list(dict.fromkeys(c for c, _ in objects))[:MAX_LABELS]
    for j, c in enumerate(present):
      labels[j] = c
      masks[j] = np.any([m for k, m in objects if k == c], axis=0)
    boxes = np.zeros((MAX_BOXES, 4), np.float32)
    kept = [m for _, m in objects][:MAX_BOXES]
    if kept:
      boxes[:len(kept)] = mask_to_box(np.stack(kept))
    return {"image": image / 255.0,
            "label": np.int32(present[0] if present else 0),
            "labels": labels, "class_masks": masks, "boxes": boxes,
            "boxes_valid": np.arange(MAX_BOXES) < len(kept),
            "mask": masks[0]}

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = check_indices(indices, self.num_examples)
    rows = [self._one(int(i)) for i in indices]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
