"""What every decoded-image source shares: the model card's resize and
centre crop, and the check of requested indices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def resize_and_crop(img: Image.Image, image_size: Sequence[int],
                    resize_size: int | None, resample
                    ) -> tuple[Image.Image, tuple[float, float, int, int]]:
  """``img`` resized to ``image_size`` ``(H, W)``, or (``resize_size`` a
  number) its shorter side resized to ``resize_size`` and the centre
  ``image_size`` cropped, as torchvision's ``Resize`` + ``CenterCrop``.

  Returns the image and the pixel transform ``(scale_y, scale_x, offset_y,
  offset_x)``: an input pixel ``(y, x)`` lands on ``(y * scale_y +
  offset_y, x * scale_x + offset_x)`` (boxes follow it).
  """
  h, w = image_size
  iw, ih = img.size
  if resize_size is None:
    return img.resize((w, h), resample), (h / ih, w / iw, 0, 0)
  scale = resize_size / min(ih, iw)
  nw = int(resize_size if iw <= ih else iw * scale)
  nh = int(resize_size if ih <= iw else ih * scale)
  top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))
  out = img.resize((nw, nh), resample).crop((left, top, left + w, top + h))
  return out, (nh / ih, nw / iw, -top, -left)


def check_indices(indices, num_examples: int) -> np.ndarray:
  """``indices`` as a flat array; IndexError outside ``[0, num_examples)``."""
  indices = np.asarray(indices).reshape(-1)
  if indices.size and (indices.min() < 0 or indices.max() >= num_examples):
    raise IndexError(f"indices must be in [0, {num_examples}); got "
                     f"[{indices.min()}, {indices.max()}]")
  return indices
