"""Saliency precision and annotation coverage (paper 001, Sec. 3.3).

All take min-max normalised heatmaps ``H_hat [B, h, w]`` (non-negative, e.g.
``explain_loss.normalize_minmax`` of Grad-CAM) and box masks at the same
resolution; higher is better for all; NaN where undefined (no box, or a map
with no mass), counted by ``nan_summary``. The top set ``H_plus`` is the
hard top ``fraction`` of ``H_hat`` (``H_hat >= `` its ``1 - fraction``
quantile; ties at the threshold are all kept).

Inputs are checked as in ``metrics.localization``: maps ``[B, h, w]``
floating and non-negative, masks of the same shape, bool or 0/1 numbers
(``explain_loss.box_mask``); a mask of 0/255 or soft values is refused, as
it would give a precision above 1. The value checks run on concrete
arrays; under ``jit`` masks are read as ``mask != 0``. A map holding NaN or
infinite values gives NaN (invalid; ``metrics.validity``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.attribution import core
from lapjax.explain_loss import box_mask, check_fraction


def _check_map(h_hat):
  h_hat = jnp.asarray(h_hat)
  if h_hat.ndim != 3 or not jnp.issubdtype(h_hat.dtype, jnp.floating):
    raise ValueError(f"heatmaps must be float [B, h, w]; got {h_hat.dtype} "
                     f"{h_hat.shape}")
  if core._is_concrete(h_hat) and h_hat.size:
    lowest = float(jnp.nanmin(jnp.where(jnp.isinf(h_hat), 0, h_hat)))
    if lowest < 0:
      raise ValueError(f"heatmaps must be non-negative (min-max normalised, "
                       f"e.g. explain_loss.normalize_minmax); got a minimum "
                       f"of {lowest:.3g}")
  return h_hat


def _check(h_hat, mask):
  h_hat = _check_map(h_hat)
  mask = jnp.asarray(mask)
  if mask.shape != h_hat.shape:
    raise ValueError(f"heatmaps and masks must both be [B, h, w]; got "
                     f"{h_hat.shape} and {mask.shape}")
  if mask.dtype != jnp.bool_:
    if not (jnp.issubdtype(mask.dtype, jnp.integer)
            or jnp.issubdtype(mask.dtype, jnp.floating)):
      raise ValueError(f"masks must be bool or 0/1 numbers; got {mask.dtype}")
    if core._is_concrete(mask) and mask.size:
      values = np.unique(np.asarray(mask))
      if not np.isin(values, (0, 1)).all():
        raise ValueError(f"masks must be bool or 0/1 numbers; got values "
                         f"{values[:5].tolist()} (binarise first, e.g. "
                         f"mask > 0)")
  return h_hat, mask != 0


def _finite(h_hat):
  return jnp.isfinite(h_hat).all(axis=(1, 2))


def top_set(h_hat: jax.Array, fraction: float = 0.5) -> jax.Array:
  """``[B, h, w]`` float 0/1: the hard top ``fraction`` of each map."""
  check_fraction(fraction)
  h_hat = _check_map(h_hat)
  q = jnp.quantile(h_hat.reshape(h_hat.shape[0], -1), 1.0 - fraction,
                   axis=-1)[:, None, None]
  return (h_hat >= q).astype(jnp.float32)


def _ratio(num, den):
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def top_saliency_precision(h_hat: jax.Array, mask: jax.Array, *,
                           fraction: float = 0.5) -> jax.Array:
  """``[B]``: the fraction of the top set inside the mask (Eq. 7); NaN for an
  empty mask."""
  h_hat, mask = _check(h_hat, mask)
  plus = top_set(h_hat, fraction)
  m = mask.astype(jnp.float32)
  out = _ratio((plus * m).sum((1, 2)), plus.sum((1, 2)))
  return jnp.where((m.sum((1, 2)) > 0) & _finite(h_hat), out, jnp.nan)


def all_saliency_precision(h_hat: jax.Array, mask: jax.Array) -> jax.Array:
  """``[B]``: the fraction of the saliency mass inside the mask (Eq. 8); NaN
  for an empty mask or a map with no mass."""
  h_hat, mask = _check(h_hat, mask)
  m = mask.astype(jnp.float32)
  out = _ratio((h_hat * m).sum((1, 2)), h_hat.sum((1, 2)))
  return jnp.where((m.sum((1, 2)) > 0) & _finite(h_hat), out, jnp.nan)


def per_box_coverage(h_hat: jax.Array, boxes: jax.Array, valid: jax.Array,
                     image_size: tuple[int, int], *, fraction: float = 0.5
                     ) -> jax.Array:
  """``[B, N]``: the fraction of each box's heatmap cells in the top set
  (Eq. 9's left side); NaN for invalid boxes and boxes covering no cell."""
  h_hat = _check_map(h_hat)
  boxes, valid = jnp.asarray(boxes), jnp.asarray(valid)
  if (valid.ndim != 2 or valid.shape[0] != h_hat.shape[0]
      or boxes.shape != (*valid.shape, 4)):
    raise ValueError(f"boxes must be [B, N, 4] and valid [B, N] with B = "
                     f"{h_hat.shape[0]}; got {boxes.shape} and {valid.shape}")
  plus = top_set(h_hat, fraction)
  b, n = valid.shape
  size = h_hat.shape[1:]
  masks = box_mask(jnp.asarray(boxes).reshape(b * n, 1, 4),
                   jnp.asarray(valid).reshape(b * n, 1), size, image_size)
  masks = masks.reshape(b, n, *size)
  area = masks.sum((2, 3))
  cov = _ratio((masks * plus[:, None]).sum((2, 3)), area)
  return jnp.where(jnp.asarray(valid, bool) & _finite(h_hat)[:, None], cov,
                   jnp.nan)


def annotation_coverage(h_hat: jax.Array, boxes: jax.Array, valid: jax.Array,
                        image_size: tuple[int, int], *,
                        fraction: float = 0.5, tau: float = 0.01
                        ) -> jax.Array:
  """``[B]``: the fraction of an image's boxes covered, a box being covered
  when at least ``tau`` of its cells are in the top set (Eq. 9). The paper
  reports the fraction over all boxes of a set: ``nansum(covered) /
  number of valid boxes``; per image here, NaN without boxes or for a
  non-finite map."""
  cov = per_box_coverage(h_hat, boxes, valid, image_size, fraction=fraction)
  covered = jnp.where(jnp.isnan(cov), 0.0, (cov >= tau).astype(jnp.float32))
  n = jnp.asarray(valid, jnp.float32).sum(-1)
  return jnp.where(_finite(h_hat), _ratio(covered.sum(-1), n), jnp.nan)
