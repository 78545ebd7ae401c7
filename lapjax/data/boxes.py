"""Boxes and masks: the one box convention of lapjax.

A box is ``(y0, x0, y1, x1)`` in continuous pixel coordinates, float32: pixel
``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``, so a box that covers exactly the
rows ``3..5`` has ``y0 = 3`` and ``y1 = 6``. A pixel belongs to a box when its
centre ``(i + 0.5, j + 0.5)`` lies inside it. Resizing an image by a factor
multiplies the box coordinates by the same factor. Batches carry
``boxes [B, N, 4]`` with ``boxes_valid [B, N] bool``; invalid rows are ignored.
"""

from __future__ import annotations

import numpy as np


def validate_boxes(boxes: np.ndarray, height: int, width: int,
                   *, name: str = "boxes") -> None:
  """Raises ValueError unless ``boxes [..., 4]`` are ordered, in the image."""
  boxes = np.asarray(boxes)
  if boxes.shape[-1:] != (4,):
    raise ValueError(
        f"{name} must have a last axis of size 4 (y0, x0, y1, x1); got shape "
        f"{boxes.shape}")
  y0, x0, y1, x1 = np.moveaxis(boxes, -1, 0)
  if np.any(y1 < y0) or np.any(x1 < x0):
    raise ValueError(
        f"{name} must satisfy y0 <= y1 and x0 <= x1 (convention y0, x0, y1, "
        f"x1); got {boxes[(y1 < y0) | (x1 < x0)][:3].tolist()}")
  if (np.any(y0 < 0) or np.any(x0 < 0) or np.any(y1 > height)
      or np.any(x1 > width)):
    raise ValueError(
        f"{name} must lie inside the image [0, {height}] x [0, {width}] "
        f"(y, x); got min {boxes.min(axis=tuple(range(boxes.ndim - 1)))} and "
        f"max {boxes.max(axis=tuple(range(boxes.ndim - 1)))}")


def boxes_to_mask(boxes: np.ndarray, valid: np.ndarray, height: int,
                  width: int) -> np.ndarray:
  """Union of boxes as a pixel mask.

  Args:
    boxes: ``[B, N, 4]`` boxes ``(y0, x0, y1, x1)``.
    valid: ``[B, N]`` bool, which rows are boxes.
    height: mask height ``H``.
    width: mask width ``W``.

  Returns:
    ``[B, H, W]`` bool, True where a pixel centre lies in a valid box.
  """
  boxes = np.asarray(boxes, np.float32)
  valid = np.asarray(valid, bool)
  yc = np.arange(height, dtype=np.float32) + 0.5
  xc = np.arange(width, dtype=np.float32) + 0.5
  y0, x0, y1, x1 = (boxes[..., k, None] for k in range(4))   # [B, N, 1]
  in_y = (yc >= y0) & (yc < y1)                                  # [B, N, H]
  in_x = (xc >= x0) & (xc < x1)                                  # [B, N, W]
  inside = in_y[..., :, None] & in_x[..., None, :]               # [B, N, H, W]
  return np.any(inside & valid[..., None, None], axis=1)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
  """Tight box of the True pixels of each ``[..., H, W]`` mask.

  Returns ``[..., 4]`` float32 ``(y0, x0, y1, x1)``; an empty mask gives
  ``(0, 0, 0, 0)``.
  """
  mask = np.asarray(mask, bool)
  rows = mask.any(axis=-1)
  cols = mask.any(axis=-2)

  def span(any_along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = any_along.shape[-1]
    first = np.argmax(any_along, axis=-1)
    last = n - np.argmax(any_along[..., ::-1], axis=-1)
    empty = ~any_along.any(axis=-1)
    return np.where(empty, 0, first), np.where(empty, 0, last)

  y0, y1 = span(rows)
  x0, x1 = span(cols)
  return np.stack([y0, x0, y1, x1], axis=-1).astype(np.float32)


def scale_boxes(boxes: np.ndarray, scale_y: float, scale_x: float,
                offset_y: float = 0.0, offset_x: float = 0.0) -> np.ndarray:
  """Boxes after resizing an image by ``(scale_y, scale_x)`` then shifting."""
  factor = np.array([scale_y, scale_x, scale_y, scale_x], np.float32)
  offset = np.array([offset_y, offset_x, offset_y, offset_x], np.float32)
  return np.asarray(boxes, np.float32) * factor + offset


def coarsen_boxes(boxes: np.ndarray, valid: np.ndarray, height: int,
                  width: int, *, padding: float) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """Deliberately coarse annotations, as a hurried expert would draw them.

  Each box grows by ``padding`` times its own side on every side (clipped to
  the image), then boxes that overlap are merged into their enclosing box,
  repeatedly, so the result never has two overlapping boxes.

  Args:
    boxes: ``[B, N, 4]``.
    valid: ``[B, N]`` bool.
    height: image height.
    width: image width.
    padding: fraction of each side added on each side, ``>= 0``.

  Returns:
    ``(boxes [B, N, 4], valid [B, N])``; merged boxes keep the first slot.
  """
  if padding < 0:
    raise ValueError(f"padding must be >= 0; got {padding}")
  boxes = np.array(boxes, np.float32)
  valid = np.array(valid, bool)
  size = np.concatenate([boxes[..., 2:] - boxes[..., :2]] * 2, axis=-1)
  grown = boxes + padding * size * np.array([-1, -1, 1, 1], np.float32)
  grown = np.clip(grown, 0, [height, width, height, width]).astype(np.float32)
  grown = np.round(grown)   # annotators draw on the pixel grid
  # At most a handful of boxes per image: a fixed-point loop over pairs.
  for b in range(boxes.shape[0]):
    changed = True
    while changed:
      changed = False
      idx = np.flatnonzero(valid[b])
      for i in idx:
        for j in idx:
          if j <= i or not (valid[b, i] and valid[b, j]):
            continue
          p, q = grown[b, i], grown[b, j]
          if p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]:
            grown[b, i] = [min(p[0], q[0]), min(p[1], q[1]),
                           max(p[2], q[2]), max(p[3], q[3])]
            valid[b, j] = False
            grown[b, j] = 0
            changed = True
  return grown, valid
