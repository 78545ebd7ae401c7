"""LAP supervision losses (paper 000, Eq. 4-5, 8, 9; App. C.4-C.7).

Pure functions of importance maps ``[B, h, w, M]`` (probabilities, one map
per DC), labels ``[B]`` and a ``DCSystem``. Logs are clipped at ``EPS``, so
maps that are exactly 0 or 1 give finite losses and gradients.

* ``lap_supervision_loss`` (Eq. 4-5): for DC ``m``, on DC-present samples
  (label in DC+) MinAR ``-2/K mean log I`` over the ``K_MinAR = ceil(g_min
  n_e)`` elements ranked highest by the reference map, and MaxAR ``-1/K sum
  log(1 - I)`` over the ``K_MaxAR = ceil((1 - g_max) n_e)`` ranked lowest; on
  DC-absent samples (label in DC-) IAR ``-1/K sum log(1 - I)`` over the
  ``K_IAR = ceil(g_iar n_e)`` elements the map itself scores highest (the
  hard negatives; Algorithm 2 ranks IAR by the LAP's own map). Each sum is
  divided by that DC's ``n+`` or ``n-`` in the batch (a term with no samples
  is 0), and the DCs are summed.
* ``discriminative_loss`` (App. C.5): the same with every element selected
  (``K_MinAR = K_IAR = n_e``) and no MaxAR, for the discriminative scoring
  module.
* ``expert_loss`` (Eq. 8): MinAR over the annotated elements, MaxAR over
  the others, IAR as above with a fixed ``g_iar``.
* ``concordance_loss`` (Eq. 9): the Jensen-Shannon term between consecutive
  LAPs, the deeper map resized to the shallower one's grid (``resize_grid``:
  cells repeated for nested grids, bilinear otherwise).
* ``reference_maps`` (App. C.4-C.5): the sum over LAPs of the (main +
  discriminative) maps, resized to each LAP's grid, under stop-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.lap.aggregate import resize_grid
from lapjax.lap.dcs import DCSystem, check_labels

EPS = 1e-7


def safe_log(p: jax.Array) -> jax.Array:
  """``log(clip(p, EPS, 1))``: finite for ``p`` exactly 0."""
  return jnp.log(jnp.clip(p, EPS, 1.0))


def count(gamma: float, n: int) -> int:
  """``ceil(gamma * n)``, robust to float noise (``0.7 * 10 = 7.0000001``)."""
  return math.ceil(round(gamma * n, 6))


def check_ratio(name: str, gamma: float | None, *, allow_none: bool = False
                ) -> None:
  """A ratio must be in (0, 1] (None only where the term can be off)."""
  if gamma is None and allow_none:
    return
  if gamma is None or not 0 < gamma <= 1:
    raise ValueError(f"{name} must be in (0, 1]; got {gamma}"
                     + (" (None switches the term off)" if allow_none else ""))


def _check_maps(maps: jax.Array, dcs: DCSystem, labels, name: str = "maps"
                ) -> None:
  if maps.ndim != 4 or maps.shape[-1] != dcs.num_dcs:
    raise ValueError(f"{name} must be [B, h, w, M] with M = {dcs.num_dcs} "
                     f"DCs; got shape {maps.shape}")
  if jnp.shape(labels) != maps.shape[:1]:
    raise ValueError(f"labels must be [B] = [{maps.shape[0]}]; got shape "
                     f"{jnp.shape(labels)}")
  if not isinstance(labels, jax.core.Tracer):
    check_labels(labels, dcs)


def _presence(labels: jax.Array, dcs: DCSystem) -> tuple[jax.Array,
                                                          jax.Array]:
  """``(present, absent)`` float ``[B, M]``: label in DC+ / in DC-."""
  member = jnp.asarray(dcs.membership.T)[labels]      # [B, M]
  return ((member == 1).astype(jnp.float32),
          (member == -1).astype(jnp.float32))


def _per_dc_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """``sum_b w v / n`` per DC (0 where ``n = 0``), summed over DCs."""
  n = weights.sum(0)
  return jnp.sum(jnp.where(n > 0, (weights * values).sum(0)
                           / jnp.maximum(n, 1), 0.0))


def _flat(maps: jax.Array) -> jax.Array:           # [B, h, w, M] -> [B, M, n]
  b, h, w, m = maps.shape
  return jnp.moveaxis(maps, -1, 1).reshape(b, m, h * w)


def _mean_of_top(values: jax.Array, ranking: jax.Array, k: int) -> jax.Array:
  """Mean of ``values`` over the ``k`` highest ``ranking`` (last axis).

  The ``k``-th highest ranking value is found by bisection (32 halvings of
  ``[min, max]``, below float32 resolution) instead of a sort: the same
  selection, 2-14x faster than ``lax.top_k`` on XLA:CPU for the paper's
  ratios (``benchmarks/lap.py``). Elements tied at the boundary share the
  remaining places equally, a deterministic rule.
  """
  if k >= values.shape[-1]:
    return values.mean(-1)
  lo = ranking.min(-1, keepdims=True)
  hi = jnp.nextafter(ranking.max(-1, keepdims=True), jnp.inf)

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) / 2
    enough = (ranking >= mid).sum(-1, keepdims=True) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  lo, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  above = ranking >= hi                        # fewer than k: all selected
  tied = (ranking >= lo) & ~above              # share the remaining places
  n_above = above.sum(-1)
  share = (k - n_above) / jnp.maximum(tied.sum(-1), 1)
  return (jnp.where(above, values, 0).sum(-1)
          + share * jnp.where(tied, values, 0).sum(-1)) / k


def lap_supervision_loss(maps: jax.Array, labels: jax.Array, dcs: DCSystem,
                         *, reference: jax.Array | None = None,
                         gamma_min: float = 0.1,
                         gamma_max: float | None = 0.5,
                         gamma_iar: float = 0.1
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weakly supervised LAP loss of one LAP (Eq. 4-5).

  Args:
    maps: ``[B, h, w, M]`` importance probabilities.
    labels: ``[B]`` classes of ``dcs``.
    dcs: the DC system.
    reference: ``[B, h, w, M]`` map that ranks elements for MinAR / MaxAR
      (``reference_maps``); None ranks by ``maps``. Not differentiated.
    gamma_min: ``g_MinAR`` in (0, 1]: expected DC size (the paper: 0.1).
    gamma_max: ``g_MaxAR`` in (0, 1), the largest DC size; None switches
      MaxAR off (the paper's ``g_MaxAR = 1``).
    gamma_iar: ``g_IAR`` in (0, 1] (the paper: equal to ``gamma_min``).

  Returns:
    ``(loss, {'min_ar', 'max_ar', 'iar'})``, each summed over DCs.
  """
  _check_maps(maps, dcs, labels)
  check_ratio("gamma_min", gamma_min)
  check_ratio("gamma_iar", gamma_iar)
  check_ratio("gamma_max", gamma_max, allow_none=True)
  n_e = maps.shape[1] * maps.shape[2]
  if gamma_max is not None and count(1 - gamma_max, n_e) == 0:
    raise ValueError(
        f"gamma_max={gamma_max} selects zero elements for MaxAR (K = "
        f"ceil((1 - gamma_max) * {n_e}) = 0); pass gamma_max=None to switch "
        "MaxAR off (the paper's gamma_MaxAR = 1)")
  if reference is not None and reference.shape != maps.shape:
    raise ValueError(f"reference must have the shape of maps {maps.shape}; "
                     f"got {reference.shape}")
  p = _flat(maps)
  rank = jax.lax.stop_gradient(_flat(maps if reference is None
                                     else reference))
  log_p, log_q = safe_log(p), safe_log(1 - p)
  present, absent = _presence(labels, dcs)
  min_ar = -2 * _mean_of_top(log_p, rank, count(gamma_min, n_e))
  iar = -_mean_of_top(log_q, jax.lax.stop_gradient(p), count(gamma_iar, n_e))
  parts = {"min_ar": _per_dc_mean(min_ar, present),
           "iar": _per_dc_mean(iar, absent)}
  if gamma_max is not None:
    max_ar = -_mean_of_top(log_q, -rank, count(1 - gamma_max, n_e))
    parts["max_ar"] = _per_dc_mean(max_ar, present)
  return sum(parts.values()), parts


def discriminative_loss(maps: jax.Array, labels: jax.Array, dcs: DCSystem
                        ) -> jax.Array:
  """The discriminative scoring module's loss (App. C.5): Eq. 4-5 with
  every element selected and no MaxAR (per-element cross-entropy with the
  image-level DC presence)."""
  return lap_supervision_loss(maps, labels, dcs, gamma_min=1.0,
                              gamma_max=None, gamma_iar=1.0)[0]


def annotation_maps(masks: jax.Array, labels: jax.Array, dcs: DCSystem,
                    size: tuple[int, int]) -> jax.Array:
  """Expert annotation per DC at a LAP's grid, ``[B, h, w, M]`` bool.

  An element is annotated for DC ``m`` when the image's label is in DC+ of
  ``m`` and the element's cell overlaps the (box) mask ``[B, H, W]``; the
  grid must divide the image (checked).
  """
  b, hh, ww = masks.shape
  h, w = size
  if hh % h or ww % w:
    raise ValueError(f"annotation grid {size} must divide the mask size "
                     f"{(hh, ww)}")
  cells = masks.reshape(b, h, hh // h, w, ww // w).any((2, 4))
  present = _presence(labels, dcs)[0] > 0                  # [B, M]
  return cells[..., None] & present[:, None, None, :]


def expert_loss(maps: jax.Array, labels: jax.Array, dcs: DCSystem,
                annotations: jax.Array, *, gamma_iar: float
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The expert-annotation LAP loss (Eq. 8, App. C.6).

  Args:
    maps: ``[B, h, w, M]``.
    labels: ``[B]``.
    dcs: the DC system.
    annotations: ``[B, h, w, M]`` bool at the maps' grid
      (``annotation_maps``).
    gamma_iar: ``K_IAR / n_e``: the mean annotated fraction over DC-present
      training samples (Eq. 8), in (0, 1].

  Returns:
    ``(loss, {'min_ar', 'max_ar', 'iar'})``. A DC-present sample with no
    annotated element (or no unannotated one) leaves that term out.
  """
  _check_maps(maps, dcs, labels)
  check_ratio("gamma_iar", gamma_iar)
  if annotations.shape != maps.shape or annotations.dtype != jnp.bool_:
    raise ValueError(f"annotations must be bool with the maps' shape "
                     f"{maps.shape}; got {annotations.dtype} "
                     f"{annotations.shape}")
  p, a = _flat(maps), _flat(annotations).astype(jnp.float32)
  log_p, log_q = safe_log(p), safe_log(1 - p)
  present, absent = _presence(labels, dcs)
  n_pos, n_neg = a.sum(-1), (1 - a).sum(-1)
  min_ar = -2 * (a * log_p).sum(-1) / jnp.maximum(n_pos, 1)
  max_ar = -((1 - a) * log_q).sum(-1) / jnp.maximum(n_neg, 1)
  n_e = maps.shape[1] * maps.shape[2]
  iar = -_mean_of_top(log_q, jax.lax.stop_gradient(p), count(gamma_iar, n_e))
  parts = {"min_ar": _per_dc_mean(min_ar, present * (n_pos > 0)),
           "max_ar": _per_dc_mean(max_ar, present * (n_neg > 0)),
           "iar": _per_dc_mean(iar, absent)}
  return sum(parts.values()), parts


def reference_maps(maps: Sequence[jax.Array],
                   disc_maps: Sequence[jax.Array] | None = None, *,
                   across_laps: bool = True) -> list[jax.Array]:
  """The ranking maps of App. C.4-C.5, one per LAP, under stop-gradient:
  ``sum over LAPs l' of resize(I^l' (+ D^l'))`` at each LAP's grid, or
  each LAP's own ``I^l (+ D^l)`` with ``across_laps=False``."""
  summed = [jax.lax.stop_gradient(m if disc_maps is None else m + d)
            for m, d in zip(maps, disc_maps or maps)]
  if not across_laps:
    return summed
  return [sum(resize_grid(s, m.shape[1:3]) for s in summed) for m in maps]


def concordance_loss(maps: Sequence[jax.Array]) -> jax.Array:
  """Eq. 9 summed over consecutive pairs (shallow to deep) and DCs, averaged
  over the batch: ``1/(2 n_e) sum_i [(p - q) ln(p/q) + (q - p)
  ln((1-p)/(1-q))]``, ``q`` the deeper map resized to the shallower grid
  (``resize_grid``)."""
  total = jnp.zeros(())
  for shallow, deep in zip(maps[:-1], maps[1:]):
    p, q = shallow, resize_grid(deep, shallow.shape[1:3])
    js = ((p - q) * (safe_log(p) - safe_log(q))
          + (q - p) * (safe_log(1 - p) - safe_log(1 - q)))
    total = total + 0.5 * js.mean((1, 2)).sum(-1).mean()
  return total


def mean_annotated_fraction(masks: np.ndarray, labels: np.ndarray,
                            dcs: DCSystem) -> float:
  """The expert loss's ``gamma_iar`` (Eq. 8): mean annotated fraction of the
  DC-present images of a sample of the training set."""
  present = (dcs.membership.T[np.asarray(labels)] == 1).any(-1)
  if not present.any():
    raise ValueError("no DC-present image in the sample; cannot estimate "
                     "the annotated fraction")
  return float(np.asarray(masks)[present].mean())
