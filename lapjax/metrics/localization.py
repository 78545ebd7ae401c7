"""Localisation metrics: does an attribution map point at the evidence?

Pure, jittable functions of maps ``[B, H, W]`` and ground-truth masks
``[B, H, W] bool``, returning per-example values ``[B]``, higher is better,
and NaN where there is no score:

* **invalid**: the map holds a NaN or an infinity (a failed method); every
  metric is NaN, never a hit or a finite score;
* **undefined**: an empty mask (nothing to find), a full mask (nothing to
  miss: every map would score 1), or a map with no information for the
  metric (a constant map for the rankings, no positive mass for the mass).

``validity`` tells the two apart per example; ``nan_summary`` aggregates the
defined values and counts the NaNs (separating invalid from undefined when
given the validity codes), and ``worst_case`` scores the map's failures as
misses so that a method that fails often is not flattered by the mean.
Sign handling is an explicit argument of every metric that sums relevance
(``sign='positive'`` by default: negative relevance outside the mask must
not raise a score).

Conventions (PITFALLS.md 1-7): ties in rankings are broken by a stable sort
(lower flat index first), never at random; a constant map has no maximum or
ranking and scores NaN in the pointing game, relevance rank accuracy and
top-k intersection; boxes and masks follow ``lapjax.data.boxes``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.attribution import postprocess


def _check(maps, masks):
  maps, masks = jnp.asarray(maps), jnp.asarray(masks)
  if maps.ndim != 3 or maps.shape != masks.shape:
    raise ValueError(f"maps and masks must both be [B, H, W]; got "
                     f"{maps.shape} and {masks.shape}")
  if masks.dtype != jnp.bool_:
    raise ValueError(f"masks must be bool; got {masks.dtype}")
  return maps.astype(jnp.float32), masks


def _no_score(maps, masks):
  """``[B]`` bool: the cases every ranking or mass metric leaves NaN."""
  nonfinite = ~jnp.isfinite(maps).all(axis=(1, 2))
  return nonfinite | ~masks.any(axis=(1, 2)) | masks.all(axis=(1, 2))


def _signed(maps, sign: str):
  if sign == "positive":
    return jax.nn.relu(maps)
  if sign == "abs":
    return jnp.abs(maps)
  if sign == "all":
    return maps
  raise ValueError(f"sign must be 'positive', 'abs' or 'all'; got {sign!r}")


def _constant(maps):
  return maps.max(axis=(1, 2)) == maps.min(axis=(1, 2))


def _dilate(masks, radius: float):
  """Pixels within Euclidean ``radius`` of a mask pixel."""
  r = int(np.floor(radius))
  if r <= 0:
    return masks
  yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
  disc = jnp.asarray((yy**2 + xx**2 <= radius**2).astype(np.float32))
  hit = jax.lax.conv_general_dilated(
      masks.astype(jnp.float32)[:, None], disc[None, None], (1, 1),
      [(r, r), (r, r)])[:, 0]
  return hit > 0


def pointing_game(maps, masks, *, tolerance: float = 0.0,
                  ties: str = "fraction") -> jax.Array:
  """1 if the map's maximum lies on the mask (within ``tolerance`` px).

  A pixel is on target if it lies within ``tolerance`` pixels (Euclidean) of
  the mask. When several pixels tie for the maximum (nearest-upsampled
  maps have blocks of them), ``ties`` decides:

  * ``'fraction'`` (default): the share of tied pixels on target, i.e. the
    expected hit under a random tie-break; 0 or 1 for a unique maximum, and
    chance level, never a hit by construction, for large ties.
  * ``'all'``: a hit only if every tied pixel is on target (strict).
  * ``'any'``: a hit if any tied pixel is on target (Quantus, and so the
    LaFAM paper's protocol; lenient).

  Higher is better. NaN for an empty or full mask, a constant map or a
  non-finite map.

  References:
    Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV
    2016 (tolerance 15 px).
  """
  maps, masks = _check(maps, masks)
  near = _dilate(masks, tolerance)
  is_max = maps == maps.max(axis=(1, 2), keepdims=True)
  on = (is_max & near).sum(axis=(1, 2))
  if ties == "fraction":
    hit = on / is_max.sum(axis=(1, 2))
  elif ties == "all":
    hit = (on == is_max.sum(axis=(1, 2))).astype(jnp.float32)
  elif ties == "any":
    hit = (on > 0).astype(jnp.float32)
  else:
    raise ValueError(f"ties must be 'fraction', 'all' or 'any'; got "
                     f"{ties!r}")
  return jnp.where(_no_score(maps, masks) | _constant(maps), jnp.nan, hit)


def relevance_mass_accuracy(maps, masks, *,
                            sign: str = "positive") -> jax.Array:
  """Share of the relevance that falls in the mask, in [0, 1] for
  non-negative relevance. Higher is better. NaN for an empty or full mask,
  no relevance or a non-finite map. ``sign='all'`` is Arras et al.'s
  literal formula, which negative relevance outside the mask can inflate.

  References:
    Arras et al., "CLEVR-XAI", Information Fusion 2022.
  """
  maps, masks = _check(maps, masks)
  r = _signed(maps, sign)
  total = r.sum(axis=(1, 2))
  inside = jnp.where(masks, r, 0).sum(axis=(1, 2))
  ok = ~_no_score(maps, masks) & (total != 0)
  return jnp.where(ok, inside / jnp.where(ok, total, 1.0), jnp.nan)


def _top_k_inside(maps, masks, k):
  """Share of the ``k [B]`` highest pixels (stable order) inside the mask."""
  b, h, w = maps.shape
  order = jnp.argsort(-maps.reshape(b, -1), axis=-1, stable=True)
  ranked = jnp.take_along_axis(masks.reshape(b, -1), order, axis=-1)
  in_top = jnp.arange(h * w)[None] < k[:, None]
  return (ranked & in_top).sum(-1) / jnp.maximum(k, 1)


def relevance_rank_accuracy(maps, masks) -> jax.Array:
  """Share of the ``|mask|`` highest-ranked pixels that are in the mask.

  Higher is better. NaN for an empty or full mask, a constant map or a
  non-finite map.

  References:
    Arras et al., "CLEVR-XAI", Information Fusion 2022.
  """
  maps, masks = _check(maps, masks)
  k = masks.sum(axis=(1, 2))
  out = _top_k_inside(maps, masks, k)
  return jnp.where(_no_score(maps, masks) | _constant(maps), jnp.nan, out)


def top_k_intersection(maps, masks, *, k: int = 1000) -> jax.Array:
  """Share of the ``k`` highest pixels that are in the mask (``k`` capped at
  ``H * W``). Higher is better. NaN for an empty or full mask, a constant
  map or a non-finite map.

  References:
    Theiner et al., "Interpretable Semantic Photo Geolocation", WACV 2022.
  """
  maps, masks = _check(maps, masks)
  kk = jnp.full(maps.shape[:1], min(int(k), maps.shape[1] * maps.shape[2]))
  out = _top_k_inside(maps, masks, kk)
  return jnp.where(_no_score(maps, masks) | _constant(maps), jnp.nan, out)


def roc_auc(maps, masks) -> jax.Array:
  """Area under the ROC curve of the map's pixel scores against the mask.

  The Mann-Whitney statistic: the probability that a random mask pixel
  scores above a random non-mask pixel, ties counting 1/2 (average ranks).
  0.5 is chance, higher is better. NaN for an empty or full mask or a
  non-finite map.
  """
  maps, masks = _check(maps, masks)
  b = maps.shape[0]
  flat, lab = maps.reshape(b, -1), masks.reshape(b, -1)
  n = flat.shape[1]
  order = jnp.argsort(flat, axis=-1, stable=True)
  sorted_vals = jnp.take_along_axis(flat, order, axis=-1)

  def avg_ranks(v):   # 1-based average rank of each run of equal values
    first = jnp.searchsorted(v, v, side="left")
    last = jnp.searchsorted(v, v, side="right")
    return (first + last + 1) / 2.0

  ranks_sorted = jax.vmap(avg_ranks)(sorted_vals)
  ranks = jnp.zeros_like(ranks_sorted).at[
      jnp.arange(b)[:, None], order].set(ranks_sorted)
  n_pos = lab.sum(-1).astype(jnp.float32)
  n_neg = n - n_pos
  u = jnp.where(lab, ranks, 0).sum(-1) - n_pos * (n_pos + 1) / 2
  ok = ~_no_score(maps, masks)
  return jnp.where(ok, u / jnp.where(ok, n_pos * n_neg, 1.0), jnp.nan)


def _sort_keys(values):
  """int32 keys in the order of float32 ``values`` (-0 and +0 equal, NaN
  at the ends): XLA:CPU sorts one int32 operand several times faster than
  floats (whose comparator is a total order) or a key and its indices."""
  values = jnp.where(values == 0, 0.0, values)        # -0.0 -> +0.0
  bits = jax.lax.bitcast_convert_type(values, jnp.int32)
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _from_sort_keys(keys):
  """The float32 values of ``_sort_keys`` (a bijection)."""
  bits = jnp.where(keys < 0, keys ^ jnp.int32(0x7FFFFFFF), keys)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _top_inside(keys, ascending, masks, k):
  """Mask pixels among the ``k [B]`` highest, ties taken in flat order (the
  stable argsort's top ``k``), from the sorted keys: every pixel above
  the ``k``-th highest key and the first of the pixels equal to it."""
  n = keys.shape[1]
  kk = jnp.clip(k, 1, n)
  kth = jnp.take_along_axis(ascending, (n - kk)[:, None], axis=-1)
  above = keys > kth
  tied = keys == kth
  need = kk[:, None] - above.sum(-1, keepdims=True)
  taken = tied & (jnp.cumsum(tied, axis=-1, dtype=jnp.int32) <= need)
  hits = (masks & (above | taken)).sum(-1)
  return jnp.where(k > 0, hits, 0) / jnp.maximum(k, 1)


def ranking_metrics(maps, masks, *, k: int = 1000,
                    sparseness_sign: str = "abs") -> dict[str, jax.Array]:
  """The four sort-based metrics from one sort per map.

  ``relevance_rank_accuracy``, ``top_k_intersection(k=k)``, ``roc_auc``
  and ``complexity.sparseness(sign=sparseness_sign)`` each order every
  map's ``n = H W`` pixels, and sorting costs more than everything else
  they do (XLA:CPU's comparison sort of floats, ``O(n log n)`` a map).
  Here each map's values are sorted once, as int32 keys in the floats'
  order (a single int32 operand sorts 5 to 8 times faster on XLA:CPU than
  a stable argsort of the floats: ``benchmarks/eval_throughput.py``), and
  all four are read off that sort:

  * rank accuracy and top-k: the ``k``-th highest value ``t``; the top
    ``k`` are the pixels above ``t`` and, of those equal to ``t``, the
    first in flat order (the stable argsort's tie-break);
  * ROC AUC: each pixel's average rank ``(#{< v} + #{<= v} + 1) / 2``,
    two binary searches in the sorted values;
  * sparseness: the Gini index needs ``|map|`` ascending, which is the
    sorted map itself when no value is negative; a batch with a negative
    value sorts ``|map|`` once more (``lax.cond``: CAMs and other
    non-negative maps pay one sort).

  Returns ``{'relevance_rank', 'top_k_intersection', 'roc_auc',
  'sparseness'}``, each ``[B]``, equal to the separate functions
  (including ties, constant maps, empty or full masks and non-finite maps,
  which score NaN as there). Jittable.

  Args:
    maps: ``[B, H, W]`` attribution maps.
    masks: ``[B, H, W]`` bool ground truth.
    k: the top-k intersection's ``k`` (capped at ``H * W``).
    sparseness_sign: ``'abs'`` or ``'positive'``, as ``sparseness``'s
      ``sign``.
  """
  maps, masks = _check(maps, masks)
  if sparseness_sign not in ("abs", "positive"):
    raise ValueError(f"sparseness_sign must be 'abs' or 'positive'; got "
                     f"{sparseness_sign!r}")
  b, h, w = maps.shape
  n = h * w
  flat, lab = maps.reshape(b, -1), masks.reshape(b, -1)
  keys = _sort_keys(flat)
  ascending = jax.lax.sort(keys, dimension=1, is_stable=False)
  n_pos = lab.sum(-1)

  no_rank = _no_score(maps, masks) | _constant(maps)
  rank = jnp.where(no_rank, jnp.nan, _top_inside(keys, ascending, lab,
                                                 n_pos))
  top_k = jnp.where(no_rank, jnp.nan, _top_inside(
      keys, ascending, lab, jnp.full((b,), min(int(k), n))))

  def avg_ranks(sorted_row, row):       # 1-based average rank of each pixel
    below = jnp.searchsorted(sorted_row, row, side="left")
    upto = jnp.searchsorted(sorted_row, row, side="right")
    return (below + upto + 1) / 2.0

  ranks = jax.vmap(avg_ranks)(ascending, keys)
  n_pos_f = n_pos.astype(jnp.float32)
  n_neg = n - n_pos_f
  u = jnp.where(lab, ranks, 0).sum(-1) - n_pos_f * (n_pos_f + 1) / 2
  ok = ~_no_score(maps, masks)
  auc = jnp.where(ok, u / jnp.where(ok, n_pos_f * n_neg, 1.0), jnp.nan)

  values = _from_sort_keys(ascending)
  if sparseness_sign == "abs":
    magnitudes = jax.lax.cond(
        (flat < 0).any(),
        lambda: _from_sort_keys(jax.lax.sort(
            _sort_keys(jnp.abs(flat)), dimension=1, is_stable=False)),
        lambda: jnp.abs(values))
  else:   # relu keeps the order
    magnitudes = jax.nn.relu(values)
  i = jnp.arange(1, n + 1, dtype=jnp.float32)
  total = magnitudes.sum(-1)
  gini = ((2 * i - n - 1) * magnitudes).sum(-1) / (
      n * jnp.where(total > 0, total, 1.0))
  finite = jnp.isfinite(maps).all(axis=(1, 2))
  sparse = jnp.where((total > 0) & finite, gini, jnp.nan)
  return {"relevance_rank": rank, "top_k_intersection": top_k,
          "roc_auc": auc, "sparseness": sparse}


def iou(binary_maps, masks) -> jax.Array:
  """Intersection over union of binarised maps with the masks.

  Binarise first with ``lapjax.attribution.postprocess`` (top-k, mean +
  std, threshold): the binarisation is part of the result and must be
  reported. Higher is better. NaN for an empty mask (nothing to localise).
  """
  a, m = _check_binary(binary_maps, masks)
  inter = (a & m).sum(axis=(1, 2))
  union = (a | m).sum(axis=(1, 2))
  return jnp.where(m.any(axis=(1, 2)), inter / jnp.maximum(union, 1),
                   jnp.nan)


def f1(binary_maps, masks) -> jax.Array:
  """F1 (Dice) of binarised maps with the masks: ``2|A n M| / (|A| + |M|)``.

  Higher is better. NaN for an empty mask (nothing to localise).
  """
  a, m = _check_binary(binary_maps, masks)
  inter = (a & m).sum(axis=(1, 2))
  denom = a.sum(axis=(1, 2)) + m.sum(axis=(1, 2))
  return jnp.where(m.any(axis=(1, 2)), 2 * inter / jnp.maximum(denom, 1),
                   jnp.nan)


def _check_binary(a, m):
  a, m = jnp.asarray(a), jnp.asarray(m)
  if a.dtype != jnp.bool_ or m.dtype != jnp.bool_:
    raise ValueError(f"iou / f1 take bool maps and masks (binarise first); "
                     f"got {a.dtype} and {m.dtype}")
  if a.ndim != 3 or a.shape != m.shape:
    raise ValueError(f"maps and masks must both be [B, H, W]; got {a.shape} "
                     f"and {m.shape}")
  return a, m


def region_attribution(maps, masks, *, blur_sigma: float | None = 2.0,
                       kernel_size: int = 11) -> jax.Array:
  """Region attribution (RA) of paper 003, App. B.1.1.

  The positive part of the map, Gaussian-blurred (11 x 11, sigma 2, so
  diffuse maps are not rewarded; ``blur_sigma=None`` skips the blur), then
  the share of its mass inside the region. Higher is better. NaN for an
  empty or full region, no positive relevance or a non-finite map.
  """
  maps, masks = _check(maps, masks)
  r = jnp.where(jnp.isfinite(maps), jax.nn.relu(maps), jnp.nan)
  if blur_sigma is not None:
    r = postprocess.gaussian_blur(r, sigma=blur_sigma,
                                  kernel_size=kernel_size)
  return relevance_mass_accuracy(r, masks, sign="all")


def learned_threshold(maps, masks, *, alpha: float = 1.0) -> float:
  """A global threshold learned from validation pixels (LAP App. D.2.2).

  Each map is divided by its maximum; a ridge classifier (targets -1 / +1,
  class-balanced sample weights ``n / (2 n_c)``, penalty ``alpha`` on the
  slope, intercept free: scikit-learn's ``RidgeClassifier(alpha,
  class_weight='balanced')``) is fit to tell mask pixels from the rest by
  that one value; the threshold is where its decision is zero. Apply it
  to max-normalised maps (``binarize_learned``).

  Raises:
    ValueError: a non-finite map value, no mask pixels, no background
      pixels, or a decision that does not increase with the map (no usable
      threshold).
  """
  maps, masks = _check(maps, masks)
  x = np.asarray(maps, np.float64)
  if not np.isfinite(x).all():
    bad = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
    raise ValueError(f"learned_threshold: maps {bad.tolist()} hold NaN or "
                     "infinite values")
  x = (x / np.maximum(x.max(axis=(1, 2), keepdims=True), 1e-12)).reshape(-1)
  y = np.asarray(masks).reshape(-1)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"learned_threshold needs mask and background pixels; "
                     f"got {n_pos} and {n_neg}")
  w = np.where(y, y.size / (2 * n_pos), y.size / (2 * n_neg))
  t = np.where(y, 1.0, -1.0)
  xm, tm = np.average(x, weights=w), np.average(t, weights=w)
  slope = (np.sum(w * (x - xm) * (t - tm))
           / (np.sum(w * (x - xm) ** 2) + alpha))
  if not slope > 0:
    raise ValueError("learned_threshold: the map does not separate mask "
                     f"pixels from the rest (slope {slope:.3g} <= 0)")
  return float(xm - tm / slope)


def binarize_learned(maps, threshold: float) -> jax.Array:
  """Max-normalised maps above a ``learned_threshold``."""
  maps = jnp.asarray(maps)
  peak = jnp.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)
  return maps / peak > threshold


# Validity codes, one per example (``validity``), in order of precedence.
VALID = 0           # a finite, non-constant map and a partial mask
NONFINITE_MAP = 1   # invalid: the map holds NaN or infinite values
EMPTY_MASK = 2      # undefined: nothing to localise
FULL_MASK = 3       # undefined: nothing to miss
CONSTANT_MAP = 4    # undefined for rankings: the map has no maximum
VALIDITY_NAMES = ("valid", "nonfinite_map", "empty_mask", "full_mask",
                  "constant_map")


def validity(maps, masks=None) -> jax.Array:
  """``[B]`` int32 code telling why an example can have no score.

  The first that applies of ``NONFINITE_MAP`` (1: the map holds NaN or
  infinite values; *invalid*, the method failed), ``EMPTY_MASK`` (2) and
  ``FULL_MASK`` (3) (the mask leaves nothing to find or nothing to miss:
  *undefined* whatever the map), ``CONSTANT_MAP`` (4: an all-zero map, say;
  *undefined* for the rankings: pointing game, rank accuracy, top-k), else
  ``VALID`` (0). ``VALIDITY_NAMES[code]`` names a code. A map with no
  positive mass but not constant is ``VALID`` here and NaN for
  ``relevance_mass_accuracy``: a NaN score on a ``VALID`` or
  ``CONSTANT_MAP`` example is the map's failure, counted as undefined.

  Args:
    maps: ``[B, H, W]`` maps.
    masks: ``[B, H, W]`` bool masks, or None for map-only metrics
      (faithfulness, sparseness): then only codes 0, 1 and 4 occur.

  Returns:
    ``[B]`` int32 codes, jittable.

  Example:
    >>> import numpy as np
    >>> maps = np.stack([np.eye(3), np.full((3, 3), np.nan), np.zeros((3, 3))])
    >>> masks = np.ones((3, 3, 3), bool)
    >>> masks[:, 0] = False
    >>> validity(maps, masks).tolist()
    [0, 1, 4]
  """
  if masks is None:
    maps = jnp.asarray(maps, jnp.float32)
    if maps.ndim != 3:
      raise ValueError(f"maps must be [B, H, W]; got shape {maps.shape}")
  else:
    maps, masks = _check(maps, masks)
  code = jnp.where(_constant(maps), CONSTANT_MAP, VALID)
  if masks is not None:
    code = jnp.where(masks.all(axis=(1, 2)), FULL_MASK, code)
    code = jnp.where(~masks.any(axis=(1, 2)), EMPTY_MASK, code)
  code = jnp.where(~jnp.isfinite(maps).all(axis=(1, 2)), NONFINITE_MAP, code)
  return code.astype(jnp.int32)


def worst_case(values, codes, *, worst: float = 0.0) -> np.ndarray:
  """Scores with the map's failures counted as misses.

  A NaN value whose example has a usable mask (``codes`` other than
  ``EMPTY_MASK`` and ``FULL_MASK``: a non-finite map, a constant or
  all-zero map, no positive mass) becomes ``worst``; NaN from the mask side
  stays NaN and drops out of the mean, as no map could score there. The mean
  of the result is the "worst case" column: a method that often returns
  all-zero maps is not flattered by scoring only its successes.

  Args:
    values: ``[B]`` per-example scores of one metric (higher is better).
    codes: ``[B]`` from ``validity`` on the same maps and masks.
    worst: the score of a miss (0 for every localisation metric here).

  Returns:
    ``[B]`` float64 NumPy array.
  """
  v = np.asarray(values, np.float64).reshape(-1)
  c = np.asarray(codes).reshape(-1)
  if v.shape != c.shape:
    raise ValueError(f"values and codes must have the same length; got "
                     f"{v.shape} and {c.shape}")
  map_side = np.isnan(v) & (c != EMPTY_MASK) & (c != FULL_MASK)
  return np.where(map_side, worst, v)


def nan_summary(values, codes=None, *, worst: float = 0.0
                ) -> dict[str, float | int]:
  """Mean, std and count over the defined values, plus the NaN count.

  Without ``codes``: ``{'mean', 'std', 'n', 'nan'}``. With ``codes``
  (``validity`` of the same maps and masks), the NaNs are split into
  ``'invalid'`` (non-finite maps) and ``'undefined'`` (everything else:
  empty or full masks, constant maps, no mass), and ``'worst_mean'`` is the
  mean of ``worst_case(values, codes, worst=worst)`` (NaN if no example
  has a usable mask).
  """
  v = np.asarray(values, np.float64).reshape(-1)
  ok = v[~np.isnan(v)]
  out = {"mean": float(ok.mean()) if ok.size else float("nan"),
         "std": float(ok.std()) if ok.size else float("nan"),
         "n": int(ok.size), "nan": int(v.size - ok.size)}
  if codes is None:
    return out
  c = np.asarray(codes).reshape(-1)
  invalid = int(np.sum(np.isnan(v) & (c == NONFINITE_MAP)))
  w = worst_case(v, c, worst=worst)
  w = w[~np.isnan(w)]
  return {**out, "invalid": invalid, "undefined": out["nan"] - invalid,
          "worst_mean": float(w.mean()) if w.size else float("nan")}
