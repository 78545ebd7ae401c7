"""Grid pointing game: 2x2 mosaics of images of four distinct classes.

Each tile is an image resized to half size (area averaging when the size
halves exactly, else bilinear) and placed in a quadrant, in the order
top-left, top-right, bottom-left, bottom-right. A grid carries the four
quadrant labels, the quadrant masks (which pixels belong to which tile), and,
when the sources have them, each tile's evidence mask and boxes moved into its
quadrant. This is the benchmark of the Attribution Lens paper (paper 003,
Sec. 4): explain each of the four labels and check where the map falls.

References:
  Böhle et al., "Convolutional Dynamic Alignment Networks", CVPR 2021 (grid
  pointing game); paper 003 in ``shared/papers``.
"""

from __future__ import annotations

import numpy as np

from lapjax.data import boxes as boxes_lib

QUADRANTS = 4


def _half(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Resizes ``[N, H, W, ...]`` to ``[N, out_h, out_w, ...]``."""
  n, h, w = images.shape[:3]
  if h == 2 * out_h and w == 2 * out_w:
    x = images.astype(np.float32).reshape(n, out_h, 2, out_w, 2,
                                          *images.shape[3:])
    return x.mean(axis=(2, 4))
  from PIL import Image  # general sizes
  out = []
  for img in images.astype(np.float32):
    chans = img.reshape(h, w, -1)
    out.append(np.stack([np.asarray(Image.fromarray(chans[..., c]).resize(
        (out_w, out_h), Image.BILINEAR)) for c in range(chans.shape[-1])],
                        -1).reshape(out_h, out_w, *images.shape[3:]))
  return np.stack(out)


def choose_distinct(labels: np.ndarray, num: int, per_item: int, *,
                    seed: int, what: str) -> np.ndarray:
  """Picks ``[num, per_item]`` example indices whose labels are distinct.

  Deterministic in ``seed``; the ``per_item`` classes of each item are
  drawn uniformly among the classes present, then one example of each.

  Raises:
    ValueError: fewer than ``per_item`` distinct classes in ``labels``
      (the message names ``what`` needs them).
  """
  labels = np.asarray(labels).reshape(-1)
  classes = np.unique(labels)
  if len(classes) < per_item:
    raise ValueError(f"{what} needs {per_item} distinct classes; labels "
                     f"have {len(classes)}: {classes.tolist()}")
  by_class = {c: np.flatnonzero(labels == c) for c in classes}
  rng = np.random.default_rng(seed)
  out = np.empty((num, per_item), np.int64)
  for g in range(num):
    chosen = rng.choice(classes, per_item, replace=False)
    out[g] = [rng.choice(by_class[c]) for c in chosen]
  return out


def choose_tiles(labels: np.ndarray, num_grids: int, *,
                 seed: int) -> np.ndarray:
  """``[num_grids, 4]`` example indices of four distinct classes each
  (``choose_distinct``)."""
  return choose_distinct(labels, num_grids, QUADRANTS, seed=seed,
                         what="a grid")


def make_grids(batch: dict[str, np.ndarray], tiles: np.ndarray
               ) -> dict[str, np.ndarray]:
  """Composes 2x2 grids from a batch of single images.

  Args:
    batch: ``image [N, H, W, C]`` (H, W even), ``label [N]``, optionally
      ``mask [N, H, W]`` and ``boxes [N, M, 4]`` + ``boxes_valid [N, M]``.
    tiles: ``[G, 4]`` indices into the batch (e.g. from ``choose_tiles``),
      quadrant order top-left, top-right, bottom-left, bottom-right.

  Returns:
    ``image [G, H, W, C]``, ``labels [G, 4]``, ``quadrant_mask [G, 4, H, W]``
    and, when the batch has them, ``mask [G, 4, H, W]`` (each tile's evidence,
    in its quadrant) and ``boxes [G, 4 * M, 4]``, ``boxes_valid [G, 4 * M]``
    with ``box_quadrant [4 * M]`` saying which tile each box row came from.
    Boxes are scaled exactly (continuous coordinates, possibly on half
    pixels); masks are area-averaged and thresholded at 0.5, so the two agree
    to half a pixel.
  """
  image = np.asarray(batch["image"])
  n, h, w, c = image.shape
  if h % 2 or w % 2:
    raise ValueError(f"grid tiles need an even image size; got {(h, w)}")
  tiles = np.asarray(tiles)
  if tiles.ndim != 2 or tiles.shape[1] != QUADRANTS:
    raise ValueError(f"tiles must be [G, 4]; got shape {tiles.shape}")
  if tiles.min() < 0 or tiles.max() >= n:
    raise ValueError(f"tiles must index the batch of {n}; got "
                     f"[{tiles.min()}, {tiles.max()}]")
  g = len(tiles)
  hh, hw = h // 2, w // 2
  offsets = [(0, 0), (0, hw), (hh, 0), (hh, hw)]
  small = _half(image[tiles.reshape(-1)], hh, hw).reshape(g, QUADRANTS, hh,
                                                          hw, c)
  grid = np.zeros((g, h, w, c), np.float32)
  quadrant = np.zeros((g, QUADRANTS, h, w), bool)
  for q, (oy, ox) in enumerate(offsets):
    grid[:, oy:oy + hh, ox:ox + hw] = small[:, q]
    quadrant[:, q, oy:oy + hh, ox:ox + hw] = True
  out = {"image": grid, "labels": np.asarray(batch["label"])[tiles],
         "quadrant_mask": quadrant}
  if "mask" in batch:
    m = _half(np.asarray(batch["mask"], np.float32)[tiles.reshape(-1)], hh,
              hw).reshape(g, QUADRANTS, hh, hw) >= 0.5
    masks = np.zeros((g, QUADRANTS, h, w), bool)
    for q, (oy, ox) in enumerate(offsets):
      masks[:, q, oy:oy + hh, ox:ox + hw] = m[:, q]
    out["mask"] = masks
  if "boxes" in batch:
    b = np.asarray(batch["boxes"])[tiles]                   # [G, 4, M, 4]
    valid = np.asarray(batch["boxes_valid"])[tiles]         # [G, 4, M]
    moved = np.stack([boxes_lib.scale_boxes(b[:, q], 0.5, 0.5, oy, ox)
                      for q, (oy, ox) in enumerate(offsets)], 1)
    m_per = b.shape[2]
    out["boxes"] = moved.reshape(g, QUADRANTS * m_per, 4)
    out["boxes_valid"] = valid.reshape(g, QUADRANTS * m_per)
    out["box_quadrant"] = np.repeat(np.arange(QUADRANTS), m_per)
  return out
