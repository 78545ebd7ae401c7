"""Images and segmentation masks from a directory, as ImageNet-S ships them.

ImageNet-S (Gao et al., TPAMI 2022) has pixel masks for ImageNet
validation images, which tensorflow-datasets does not have. Its layout::

  <root>/<split>/<wnid>/<name>.JPEG                 images
  <root>/<split>-segmentation/<wnid>/<name>.png     masks

A mask is an RGB PNG whose class id is ``R + 256 G``: ``0`` the "other"
category (background), ``1000`` ignored pixels, anything else the image's
annotated object. ``ImageDirSource`` gives ``image [B, H, W, 3]`` in
``[0, 1]``, ``label [B]`` (the class folder's index in ``class_list``, by
default the sorted folder names) and ``mask [B, H, W]`` (the object pixels;
ignored pixels are not object), every image resized (shorter side to
``resize_size``, then centre-cropped to ``image_size``, as a model card's
evaluation transform; masks with nearest interpolation) or, without
``resize_size``, resized to ``image_size``. Images without a mask file are
skipped (ImageNet-S annotates a subset).

References:
  Gao et al., "Large-scale Unsupervised Semantic Segmentation", TPAMI 2022
  (https://github.com/LUSSeg/ImageNet-S, "How to get the class id").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from lapjax.data.decode import check_indices, resize_and_crop

IGNORED = 1000           # ImageNet-S id of ignored pixels
BACKGROUND = 0           # ImageNet-S id of the "other" category
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def mask_ids(rgb: np.ndarray) -> np.ndarray:
  """``[H, W, 3]`` uint8 ImageNet-S mask -> ``[H, W]`` int class ids
  (``R + 256 G``)."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] < 3:
    raise ValueError(f"an ImageNet-S mask is an RGB image; got shape "
                     f"{rgb.shape}")
  return rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)


def read_class_list(path: str) -> list[str]:
  """Class folder names (e.g. wnids) in the model's class order, one a
  line; a line may hold more after the name (``n01440764 tench``)."""
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


class ImageDirSource:
  """Random-access images and object masks of an ImageNet-S-style folder.

  Args:
    root: the dataset folder (e.g. ``.../ImageNetS919``).
    split: ``'validation'`` (masks in ``validation-segmentation``) or
      another split with a ``<split>-segmentation`` folder.
    image_size: ``(H, W)`` of the returned images.
    resize_size: shorter side before the centre crop (None: resize to
      ``image_size``).
    class_list: a file of class folder names in the model's class order
      (e.g. ImageNet's 1,000 wnids, sorted); None: the sorted folders.
    max_examples: at most this many images (in sorted order).

  Raises:
    FileNotFoundError: a missing split or mask folder (named).
    ValueError: a class folder that ``class_list`` does not have.
  """

  def __init__(self, root: str, *, split: str = "validation",
               image_size: Sequence[int] = (224, 224),
               resize_size: int | None = 256,
               class_list: str | None = None,
               max_examples: int | None = None):
    images = os.path.join(root, split)
    masks = os.path.join(root, f"{split}-segmentation")
    for folder in (images, masks):
      if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder} not found: an ImageNet-S folder has <split>/<wnid>/"
            f"*.JPEG images and <split>-segmentation/<wnid>/*.png masks")
    folders = sorted(d for d in os.listdir(images)
                     if os.path.isdir(os.path.join(images, d)))
    classes = read_class_list(class_list) if class_list else folders
    index = {c: i for i, c in enumerate(classes)}
    unknown = [d for d in folders if d not in index]
    if unknown:
      raise ValueError(f"class folders {unknown[:5]} of {images} are not in "
                       f"the class list ({len(classes)} classes)")
    self.class_names = list(classes)
    self.image_size = tuple(image_size)
    self.resize_size = resize_size
    self.items: list[tuple[str, str, int]] = []
    for d in folders:
      for name in sorted(os.listdir(os.path.join(images, d))):
        stem, ext = os.path.splitext(name)
        mask = os.path.join(masks, d, stem + ".png")
        if ext.lower() in IMAGE_EXTENSIONS and os.path.exists(mask):
          self.items.append((os.path.join(images, d, name), mask, index[d]))
    if max_examples is not None:
      self.items = self.items[:max_examples]
    self.num_examples = len(self.items)
    if not self.num_examples:
      raise FileNotFoundError(f"no image with a mask in {images} and "
                              f"{masks}")

  def _resize(self, img: Image.Image, resample) -> Image.Image:
    return resize_and_crop(img, self.image_size, self.resize_size,
                           resample)[0]

  def _one(self, i: int) -> dict[str, np.ndarray]:
    image_path, mask_path, label = self.items[i]
    with Image.open(image_path) as img:
      image = self._resize(img.convert("RGB"), Image.BILINEAR)
    with Image.open(mask_path) as m:
      ids = mask_ids(np.asarray(self._resize(m.convert("RGB"),
                                             Image.NEAREST)))
    return {"image": np.asarray(image, np.float32) / 255.0,
            "label": np.int32(label),
            "mask": (ids != BACKGROUND) & (ids != IGNORED)}

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = check_indices(indices, self.num_examples)
    rows = [self._one(int(i)) for i in indices]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
