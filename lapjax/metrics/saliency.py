"""Saliency precision and annotation coverage (paper 001, Sec. 3.3).

All take min-max normalised heatmaps ``H_hat [B, h, w]`` (non-negative, e.g.
``explain_loss.normalize_minmax`` of Grad-CAM) and box masks at the same
resolution; higher is better for all; NaN where undefined (no box, or a map
with no mass), counted by ``nan_summary``. The top set ``H_plus`` is the
hard top ``fraction`` of ``H_hat`` (``H_hat >= `` its ``1 - fraction``
quantile; ties at the threshold are all kept).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lapjax.explain_loss import box_mask, check_fraction


def top_set(h_hat: jax.Array, fraction: float = 0.5) -> jax.Array:
  """``[B, h, w]`` float 0/1: the hard top ``fraction`` of each map."""
  check_fraction(fraction)
  q = jnp.quantile(h_hat.reshape(h_hat.shape[0], -1), 1.0 - fraction,
                   axis=-1)[:, None, None]
  return (h_hat >= q).astype(jnp.float32)


def _ratio(num, den):
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def top_saliency_precision(h_hat: jax.Array, mask: jax.Array, *,
                           fraction: float = 0.5) -> jax.Array:
  """``[B]``: the fraction of the top set inside the mask (Eq. 7); NaN for an
  empty mask."""
  plus = top_set(h_hat, fraction)
  m = jnp.asarray(mask, jnp.float32)
  out = _ratio((plus * m).sum((1, 2)), plus.sum((1, 2)))
  return jnp.where(m.sum((1, 2)) > 0, out, jnp.nan)


def all_saliency_precision(h_hat: jax.Array, mask: jax.Array) -> jax.Array:
  """``[B]``: the fraction of the saliency mass inside the mask (Eq. 8); NaN
  for an empty mask or a map with no mass."""
  m = jnp.asarray(mask, jnp.float32)
  out = _ratio((h_hat * m).sum((1, 2)), h_hat.sum((1, 2)))
  return jnp.where(m.sum((1, 2)) > 0, out, jnp.nan)


def per_box_coverage(h_hat: jax.Array, boxes: jax.Array, valid: jax.Array,
                     image_size: tuple[int, int], *, fraction: float = 0.5
                     ) -> jax.Array:
  """``[B, N]``: the fraction of each box's heatmap cells in the top set
  (Eq. 9's left side); NaN for invalid boxes and boxes covering no cell."""
  plus = top_set(h_hat, fraction)
  b, n = valid.shape
  size = h_hat.shape[1:]
  masks = box_mask(jnp.asarray(boxes).reshape(b * n, 1, 4),
                   jnp.asarray(valid).reshape(b * n, 1), size, image_size)
  masks = masks.reshape(b, n, *size)
  area = masks.sum((2, 3))
  cov = _ratio((masks * plus[:, None]).sum((2, 3)), area)
  return jnp.where(jnp.asarray(valid, bool), cov, jnp.nan)


def annotation_coverage(h_hat: jax.Array, boxes: jax.Array, valid: jax.Array,
                        image_size: tuple[int, int], *,
                        fraction: float = 0.5, tau: float = 0.01
                        ) -> jax.Array:
  """``[B]``: the fraction of an image's boxes covered, a box being covered
  when at least ``tau`` of its cells are in the top set (Eq. 9). The paper
  reports the fraction over all boxes of a set: ``nansum(covered) /
  number of valid boxes``; per image here, NaN without boxes."""
  cov = per_box_coverage(h_hat, boxes, valid, image_size, fraction=fraction)
  covered = jnp.where(jnp.isnan(cov), 0.0, (cov >= tau).astype(jnp.float32))
  n = jnp.asarray(valid, jnp.float32).sum(-1)
  return _ratio(covered.sum(-1), n)
