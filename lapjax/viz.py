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


def explanation_grid(images: np.ndarray, masks: np.ndarray,
                     maps: dict[str, np.ndarray], titles: Sequence[str],
                     path: str) -> None:
  """Rows: images; columns: input, ground truth, one overlay per method.

  Overlays show each map's positive part scaled to its own maximum (display
  only; the metrics use the raw maps).
  """
  n = len(images)
  names = list(maps)
  cols = 2 + len(names)
  fig, axes = plt.subplots(n, cols, figsize=(1.5 * cols, 1.6 * n),
                           squeeze=False)
  for i in range(n):
    _show(axes[i, 0], images[i], None, None, None)
    axes[i, 0].set_ylabel(titles[i], fontsize=6)
    _show(axes[i, 1], images[i], masks[i], None, None)
    for j, name in enumerate(names):
      m = np.maximum(np.asarray(maps[name][i]), 0)
      m = m / m.max() if m.max() > 0 else m
      ax = axes[i, 2 + j]
      ax.imshow(np.clip(images[i], 0, 1).mean(-1), cmap="gray",
                interpolation="nearest")
      ax.imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
  for j, title in enumerate(["input", "ground truth"] + names):
    axes[0, j].set_title(title, fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def sanity_curves(results: dict[str, dict], path: str,
                  similarity: str = "spearman") -> None:
  """Similarity to the trained model's maps per randomisation step.

  ``results[name]`` holds ``layers``, the curve under ``similarity`` and
  optionally its spread ``similarity + '_std_over_keys'`` (error bars).
  """
  fig, ax = plt.subplots(figsize=(6, 3.5))
  layers = None
  for name, r in results.items():
    s = np.asarray(r[similarity])
    err = np.asarray(r.get(similarity + "_std_over_keys", np.zeros_like(s)))
    ax.errorbar(np.arange(len(s)), s, yerr=err, marker="o", capsize=2,
                label=name)
    layers = r["layers"]
  ax.set_xticks(range(len(layers) + 1))
  ax.set_xticklabels(["trained"] + list(layers), rotation=30, fontsize=7)
  ax.set_ylabel(f"{similarity} to trained maps")
  ax.set_xlabel("randomised cumulatively, output to input")
  ax.axhline(0, color="gray", linewidth=0.5)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
