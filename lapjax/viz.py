"""Figures: image grids with ground-truth outlines (matplotlib, headless)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax, image: np.ndarray, mask: np.ndarray | None,
          boxes: np.ndarray | None, valid: np.ndarray | None) -> None:
  ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
  if mask is not None and mask.any():
    ax.contour(mask.astype(float), levels=[0.5], colors="lime",
               linewidths=0.8)
  if boxes is not None:
    for (y0, x0, y1, x1), ok in zip(boxes, valid):
      if ok:
        # Box edges sit on pixel boundaries; imshow centres pixels on integers.
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                   fill=False, edgecolor="red", linewidth=0.8))
  ax.set_xticks([])
  ax.set_yticks([])


def sample_grid(batch: dict[str, np.ndarray], titles: Sequence[str],
                path: str, *, columns: int = 8) -> None:
  """Writes a PNG grid of ``batch['image']`` with mask contours and boxes.

  Args:
    batch: dict with ``image [B, H, W, 3]`` and optionally ``mask [B, H, W]``,
      ``boxes [B, N, 4]`` and ``boxes_valid [B, N]``.
    titles: ``B`` strings drawn above the images (e.g. label and prediction).
    path: output PNG.
    columns: images per row.
  """
  images = np.asarray(batch["image"])
  n = len(images)
  cols = min(columns, n)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.axis("off")
      continue
    _show(ax, images[i],
          None if "mask" not in batch else np.asarray(batch["mask"][i]),
          None if "boxes" not in batch else np.asarray(batch["boxes"][i]),
          None if "boxes" not in batch else np.asarray(batch["boxes_valid"][i]))
    ax.set_title(titles[i], fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
