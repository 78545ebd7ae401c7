"""Localisation against boxes: box-capture sensitivity and truncated IoU.

Expert boxes are rectangles around evidence that is rarely rectangular, so
the LAP paper scores binarised attribution maps with two box-aware metrics
beside plain IoU (paper 000, App. D.2.4, Tables 10-11):

* **box-capture sensitivity**: a box is *captured* when at least half of
  its pixels are in the binarised map; the score is the fraction of boxes
  captured, pooled over the data set;
* **truncated IoU**: the IoU of the binarised map with the *truncated*
  target, which keeps of each box only the half of its pixels the method
  scores highest, so that a method marking exactly the evidence inside an
  over-sized box is not penalised for the box's empty corners.

Boxes follow ``lapjax.data.boxes``: ``(y0, x0, y1, x1)`` in continuous pixel
coordinates, a pixel belongs to a box when its centre lies inside it, and a
batch carries ``boxes [B, N, 4]`` with ``boxes_valid [B, N]``. A valid box
that holds no pixel centre is treated as absent. Every function is pure and
jitted (options static); the binarisation
(``lapjax.attribution.postprocess``) is the caller's and must be reported
with the numbers.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


@partial(jax.jit, static_argnames=("height", "width"))
def box_masks(boxes: ArrayLike, boxes_valid: ArrayLike, height: int,
              width: int) -> jax.Array:
  """One pixel mask per box.

  Args:
    boxes: ``[B, N, 4]`` boxes ``(y0, x0, y1, x1)``.
    boxes_valid: ``[B, N]`` bool, which rows are boxes.
    height: mask height ``H``.
    width: mask width ``W``.

  Returns:
    ``[B, N, H, W]`` bool: pixel ``(i, j)`` of box ``n`` is True when its
    centre ``(i + 0.5, j + 0.5)`` lies in the box and the row is valid.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  valid = jnp.asarray(boxes_valid, bool)
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be [B, N, 4] (y0, x0, y1, x1); got shape "
                     f"{boxes.shape}")
  if valid.shape != boxes.shape[:2]:
    raise ValueError(f"boxes_valid must be [B, N] = {boxes.shape[:2]}; got "
                     f"{valid.shape}")
  yc = jnp.arange(height, dtype=jnp.float32) + 0.5
  xc = jnp.arange(width, dtype=jnp.float32) + 0.5
  y0, x0, y1, x1 = (boxes[..., k, None] for k in range(4))       # [B, N, 1]
  in_y = (yc >= y0) & (yc < y1)                                   # [B, N, H]
  in_x = (xc >= x0) & (xc < x1)                                   # [B, N, W]
  return in_y[..., :, None] & in_x[..., None, :] & valid[..., None, None]


def _check(maps, boxes, name):
  maps = jnp.asarray(maps)
  if maps.ndim != 3:
    raise ValueError(f"{name} must be [B, H, W]; got shape {maps.shape}")
  if jnp.shape(boxes)[:1] != maps.shape[:1]:
    raise ValueError(f"{name} {maps.shape} and boxes {jnp.shape(boxes)} must "
                     "have the same batch size")
  return maps


@partial(jax.jit, static_argnames="min_coverage")
def box_capture(binary_maps: ArrayLike, boxes: ArrayLike,
                boxes_valid: ArrayLike, *, min_coverage: float = 0.5
                ) -> dict[str, jax.Array]:
  r"""Which boxes a binarised map captures (paper 000, App. D.2.4, Tab. 10).

  The coverage of box :math:`b` by the binarised map :math:`A` is

  .. math::
    c_b = |A \cap b| / |b|,

  and the box is captured when :math:`c_b \ge` ``min_coverage`` (the paper:
  one half). The box-capture *sensitivity* is pooled over the data set,
  ``sum(n_captured) / sum(n_boxes)`` (the percentage of boxes captured);
  higher is better. An image without boxes contributes nothing; its
  per-image ``sensitivity`` is NaN.

  Args:
    binary_maps: ``[B, H, W]`` bool, the binarised attribution maps.
    boxes: ``[B, N, 4]`` boxes ``(y0, x0, y1, x1)``.
    boxes_valid: ``[B, N]`` bool.
    min_coverage: fraction of a box's pixels that must be marked, in
      ``(0, 1]``.

  Returns:
    ``{'coverage': [B, N]`` float (NaN for absent boxes), ``'captured':
    [B, N]`` bool, ``'n_captured': [B]`` and ``'n_boxes': [B]`` int32,
    ``'sensitivity': [B]`` float ``}``.
  """
  if not 0 < min_coverage <= 1:
    raise ValueError(f"min_coverage must be in (0, 1]; got {min_coverage}")
  a = _check(binary_maps, boxes, "binary_maps")
  if a.dtype != jnp.bool_:
    raise ValueError(f"binary_maps must be bool (binarise first); got "
                     f"{a.dtype}")
  masks = box_masks(boxes, boxes_valid, *a.shape[1:])            # [B,N,H,W]
  area = masks.sum(axis=(2, 3))
  inside = (masks & a[:, None]).sum(axis=(2, 3))
  present = area > 0
  coverage = jnp.where(present, inside / jnp.maximum(area, 1), jnp.nan)
  captured = present & (inside >= min_coverage * area)
  n_captured = captured.sum(-1).astype(jnp.int32)
  n_boxes = present.sum(-1).astype(jnp.int32)
  return {"coverage": coverage, "captured": captured,
          "n_captured": n_captured, "n_boxes": n_boxes,
          "sensitivity": jnp.where(n_boxes > 0, n_captured
                                   / jnp.maximum(n_boxes, 1), jnp.nan)}


@partial(jax.jit, static_argnames="keep_fraction")
def truncated_box_mask(maps: ArrayLike, boxes: ArrayLike,
                       boxes_valid: ArrayLike, *, keep_fraction: float = 0.5
                       ) -> jax.Array:
  r"""The truncated target of truncated IoU (paper 000, App. D.2.4).

  Of each box :math:`b` the :math:`k_b = \lceil` ``keep_fraction`` :math:`
  \cdot |b| \rceil` pixels with the highest map values are kept; the
  target is the union over the boxes. Ties are broken by a stable sort: the
  lower flat index ``y * W + x`` comes first.

  Args:
    maps: ``[B, H, W]`` real attribution maps (the scores that rank the
      pixels; signs used as given).
    boxes: ``[B, N, 4]`` boxes ``(y0, x0, y1, x1)``.
    boxes_valid: ``[B, N]`` bool.
    keep_fraction: fraction of each box kept, in ``(0, 1]``.

  Returns:
    ``[B, H, W]`` bool.
  """
  if not 0 < keep_fraction <= 1:
    raise ValueError(f"keep_fraction must be in (0, 1]; got {keep_fraction}")
  maps = _check(maps, boxes, "maps")
  b, h, w = maps.shape
  masks = box_masks(boxes, boxes_valid, h, w).reshape(b, -1, h * w)
  score = jnp.where(masks, maps.reshape(b, 1, h * w), -jnp.inf)
  order = jnp.argsort(-score, axis=-1, stable=True)              # best first
  rank = jnp.argsort(order, axis=-1)
  keep = jnp.ceil(keep_fraction * masks.sum(-1))                  # [B, N]
  chosen = masks & (rank < keep[..., None])
  return chosen.any(axis=1).reshape(b, h, w)


@partial(jax.jit, static_argnames="keep_fraction")
def truncated_iou(maps: ArrayLike, binary_maps: ArrayLike, boxes: ArrayLike,
                  boxes_valid: ArrayLike, *, keep_fraction: float = 0.5
                  ) -> jax.Array:
  r"""IoU of a binarised map with the truncated boxes (App. D.2.4, Tab. 11).

  .. math::
    \mathrm{tIoU} = |A \cap T| / |A \cup T|,

  with :math:`A` the binarised map and :math:`T` the union over the boxes
  of the ``keep_fraction`` of each box's pixels that ``maps`` scores highest
  (``truncated_box_mask``). Higher is better. NaN for an image without
  boxes, and for a map holding a non-finite value (no ranking).

  Args:
    maps: ``[B, H, W]`` real maps that choose the kept half of each box.
    binary_maps: ``[B, H, W]`` bool, the binarisation of ``maps`` being
      scored (mean + std, learned threshold, ...).
    boxes: ``[B, N, 4]`` boxes ``(y0, x0, y1, x1)``.
    boxes_valid: ``[B, N]`` bool.
    keep_fraction: fraction of each box kept, in ``(0, 1]``.

  Returns:
    ``[B]`` float.

  References:
    Paper 000 (LAP), App. D.2.4.
  """
  maps = _check(maps, boxes, "maps")
  a = jnp.asarray(binary_maps)
  if a.dtype != jnp.bool_ or a.shape != maps.shape:
    raise ValueError(f"binary_maps must be bool with the shape of maps "
                     f"{maps.shape}; got {a.dtype} {a.shape}")
  target = truncated_box_mask(maps, boxes, boxes_valid,
                              keep_fraction=keep_fraction)
  inter = (a & target).sum(axis=(1, 2))
  union = (a | target).sum(axis=(1, 2))
  defined = target.any(axis=(1, 2)) & jnp.isfinite(maps).all(axis=(1, 2))
  return jnp.where(defined, inter / jnp.maximum(union, 1), jnp.nan)
