"""Faithfulness metrics: perturbation curves scored by the model (paper 004).

Conventions shared by every metric here:

* **Ranking.** Maps are ``[B, H, W]`` (reduce channel maps first); pixels are
  ranked by the map (most relevant first), ties broken by a stable sort: the
  lower flat index ``y * W + x`` comes first. Signs are used as given (pass
  ``abs`` maps explicitly if wanted).
* **Perturbing** a pixel sets all its channels to the baseline (PITFALLS 8):
  a number (default 0, i.e. black for images in ``[0, 1]``; pass the
  normalised black pixel for normalised inputs: never the image minimum), an
  array broadcast to the images, or ``'blur'`` (the image Gaussian-blurred).
* **Fractions.** ``k`` = ``round(f * H * W)`` pixels at fraction ``f``.
* **AUC** is the trapezoidal area over evenly spaced points on ``x in [0,
  1]`` (the mean of the trapezoids), times 100: independent of the number of
  steps for a linear curve (PITFALLS 9); the first point (nothing perturbed or
  nothing revealed) is included.
* **Score**: ``'prob'`` (softmax of the explained class), ``'logit'``, or
  ``'accuracy'`` (1 when the explained class is the top-1 class).
* **Invalid maps**: a map holding NaN or infinite values has no ranking;
  its curves and scores are NaN (``metrics.validity`` code
  ``NONFINITE_MAP``), never the finite score of an arbitrary order.

Forward passes run ``chunk_size`` images at a time (``lax.map``), jittable.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.attribution import core, postprocess
from lapjax.classifier import Classifier

POS_NEG_FRACTIONS = tuple(k / 10 for k in range(10))      # 0 %, 10 %, ... 90 %
# PAIR's saliency notebook thresholds for SIC / AIC.
PIC_THRESHOLDS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13,
                  0.21, 0.34, 0.5, 0.75)
SCORES = ("prob", "logit", "accuracy")


def auc(curve: jax.Array) -> jax.Array:
  """``[..., S] -> [...]``: 100 x trapezoidal area over ``x in [0, 1]`` with
  ``S`` evenly spaced points (the mean of the ``S - 1`` trapezoids)."""
  curve = jnp.asarray(curve)
  if curve.shape[-1] < 2:
    raise ValueError(f"a curve needs at least 2 points; got {curve.shape}")
  return 100.0 * (curve[..., 1:] + curve[..., :-1]).mean(-1) / 2


def _check(classifier, x, maps, targets):
  x = jnp.asarray(x)
  core.check_finite_images(x)
  maps = jnp.asarray(maps, jnp.float32)
  if maps.shape != x.shape[:3]:
    raise ValueError(f"maps must be [B, H, W] = {x.shape[:3]} (one map per "
                     f"image, channels reduced); got shape {maps.shape}")
  t = jnp.asarray(targets)
  if t.shape != (x.shape[0],) or not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f"targets must be int [B] = [{x.shape[0]}] (the "
                     f"explained classes); got {t.dtype} {t.shape}")
  k = core.num_classes_of(classifier, x)
  if core._is_concrete(t) and t.size:
    lo, hi = int(np.min(np.asarray(t))), int(np.max(np.asarray(t)))
    if lo < 0 or hi >= k:
      raise ValueError(f"targets must be in [0, {k}); got [{lo}, {hi}]")
  return x, maps, t


def score_images(classifier: Classifier, images: jax.Array,
                 targets: jax.Array, score: str) -> jax.Array:
  """``[n, B, H, W, C]`` -> ``[n, B]`` scores of each image's target."""
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}; got {score!r}")
  n, b = images.shape[:2]
  logits = classifier.apply(images.reshape(n * b, *images.shape[2:]))[0]
  logits = logits.reshape(n, b, -1)
  if score == "accuracy":
    return (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  out = jax.nn.softmax(logits) if score == "prob" else logits
  return jnp.take_along_axis(out, targets[None, :, None], -1)[..., 0]


def perturbation_curve(classifier: Classifier, x: jax.Array, maps: jax.Array,
                       targets: jax.Array, *, fractions: Sequence[float],
                       mode: str = "delete", baseline=0.0,
                       blur_sigma: float = 5.0, score: str = "prob",
                       chunk_size: int = 64) -> jax.Array:
  """``[B, len(fractions)]`` scores as the top-ranked pixels change.

  ``mode='delete'``: the top ``f`` fraction of pixels is set to the
  baseline. ``mode='insert'``: the image starts as the baseline and the top
  ``f`` fraction is revealed. Rank by ``-maps`` for least-relevant-first.
  Rows of maps holding NaN or infinite values are NaN.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]`` images.
    maps: ``[B, H, W]`` attribution maps.
    targets: ``[B]`` explained classes.
    fractions: values in ``[0, 1]``.
    mode: ``'delete'`` or ``'insert'``.
    baseline, blur_sigma: see ``core.baseline_images``.
    score: ``'prob'``, ``'logit'`` or ``'accuracy'``.
    chunk_size: images per forward pass.
  """
  x, maps, targets = _check(classifier, x, maps, targets)
  if mode not in ("delete", "insert"):
    raise ValueError(f"mode must be 'delete' or 'insert'; got {mode!r}")
  f = np.asarray(fractions, np.float64)
  if f.ndim != 1 or f.size < 1 or np.any((f < 0) | (f > 1)):
    raise ValueError(f"fractions must be values in [0, 1]; got {fractions}")
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}; got {score!r}")
  b, h, w = maps.shape
  counts = jnp.asarray(np.rint(f * h * w), jnp.int32)
  r = postprocess.pixel_ranks(maps)[..., None]
  base = core.baseline_images(x, baseline, blur_sigma)

  def chunk(k):                                       # [n] -> [n, B]
    top = r[None] < k[:, None, None, None, None]      # [n, B, H, W, 1]
    if mode == "delete":
      images = jnp.where(top, base[None], x[None])
    else:
      images = jnp.where(top, x[None], base[None])
    return score_images(classifier, images, targets, score)

  curves = core.chunked_map(chunk, counts,
                            core.points_per_pass(chunk_size, b)).T
  return jnp.where(_nonfinite(maps)[:, None], jnp.nan, curves)


def _nonfinite(maps):
  """``[B]`` bool: maps holding NaN or infinite values (no ranking)."""
  return ~jnp.isfinite(maps).all(axis=(1, 2))


def positive_negative(classifier: Classifier, x: jax.Array, maps: jax.Array,
                      targets: jax.Array, *,
                      fractions: Sequence[float] = POS_NEG_FRACTIONS,
                      baseline=0.0, score: str = "accuracy",
                      chunk_size: int = 64) -> dict[str, jax.Array]:
  """POS / NEG perturbation tests (Chefer et al. 2021), per image.

  POS deletes the most relevant pixels first (lower is better), NEG the least
  relevant first (higher is better); fractions 0 %, 10 %, ..., 90 % (the
  clean image first); score top-1 accuracy w.r.t. the explained class;
  ``npd = neg - pos`` (higher is better). AUCs in percent.

  Returns:
    ``{'pos', 'neg', 'npd': [B], 'pos_curve', 'neg_curve': [B, S]}``.
  """
  kw = dict(fractions=fractions, mode="delete", baseline=baseline,
            score=score, chunk_size=chunk_size)
  pos = perturbation_curve(classifier, x, maps, targets, **kw)
  neg = perturbation_curve(classifier, x, -jnp.asarray(maps), targets, **kw)
  return {"pos": auc(pos), "neg": auc(neg), "npd": auc(neg) - auc(pos),
          "pos_curve": pos, "neg_curve": neg}


def insertion_deletion(classifier: Classifier, x: jax.Array, maps: jax.Array,
                       targets: jax.Array, *, steps: int = 20, baseline=0.0,
                       blur_sigma: float = 5.0, score: str = "prob",
                       chunk_size: int = 64) -> dict[str, jax.Array]:
  """Insertion / deletion (Petsiuk et al. 2018), per image.

  ``steps + 1`` evenly spaced fractions from 0 to 1, both end points
  included. Deletion removes the most relevant pixels first (lower is
  better); insertion reveals them first from the baseline (higher is
  better); ``idd = ins - del`` (higher is better). Score: the explained
  class's softmax probability by default. AUCs in percent.

  Returns:
    ``{'ins', 'del', 'idd': [B], 'ins_curve', 'del_curve': [B, steps+1]}``.
  """
  core.check_positive("steps", steps)
  kw = dict(fractions=np.linspace(0, 1, steps + 1), baseline=baseline,
            blur_sigma=blur_sigma, score=score, chunk_size=chunk_size)
  dele = perturbation_curve(classifier, x, maps, targets, mode="delete", **kw)
  ins = perturbation_curve(classifier, x, maps, targets, mode="insert", **kw)
  return {"ins": auc(ins), "del": auc(dele), "idd": auc(ins) - auc(dele),
          "ins_curve": ins, "del_curve": dele}


# LAP paper App. D.2.3: retention ratios of the SRG curves (1.0 added as
# the common end point, where nothing is removed).
SRG_RETENTION = (0.5, 0.6, 0.7, 0.8, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)
KEEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def srg(classifier: Classifier, x: jax.Array, maps: jax.Array,
        targets: jax.Array, *, retention: Sequence[float] = SRG_RETENTION,
        baseline=0.0, score: str = "accuracy", chunk_size: int = 64
        ) -> dict[str, jax.Array]:
  """SRG (Bluecher et al. 2024; LAP paper App. D.2.3), per image.

  Pixel flipping keeps a fraction ``r`` of the pixels and sets the rest to
  the baseline: LIF (least important removed first: the top ``r`` kept)
  and MIF (most important removed first: the bottom ``r`` kept). SRG is the
  trapezoidal area between the LIF and MIF curves over ``r`` (not
  normalised: over the default ``[0.5, 1]`` the maximum is just under 0.5,
  as in the paper). Higher is better. Score: top-1 accuracy w.r.t.
  ``targets`` (pass the model's predictions, as the paper does).

  Returns:
    ``{'srg': [B], 'lif_curve', 'mif_curve': [B, S]}``.
  """
  r = np.asarray(retention, np.float64)
  if r.ndim != 1 or r.size < 2 or np.any(np.diff(r) <= 0) or r[0] < 0 \
     or r[-1] > 1:
    raise ValueError(f"retention must be increasing values in [0, 1], at "
                     f"least 2; got {retention}")
  kw = dict(fractions=1 - r, mode="delete", baseline=baseline, score=score,
            chunk_size=chunk_size)
  lif = perturbation_curve(classifier, x, -jnp.asarray(maps), targets, **kw)
  mif = perturbation_curve(classifier, x, maps, targets, **kw)
  gap = lif - mif
  area = ((gap[:, 1:] + gap[:, :-1]) / 2 * jnp.asarray(np.diff(r),
                                                        jnp.float32)).sum(-1)
  return {"srg": area, "lif_curve": lif, "mif_curve": mif}


def keep_top_accuracy(classifier: Classifier, x: jax.Array, maps: jax.Array,
                      targets: jax.Array, *,
                      fractions: Sequence[float] = KEEP_FRACTIONS,
                      baseline=0.0, chunk_size: int = 64) -> jax.Array:
  """``[B, S]``: 1 where the image with only its top ``k`` fraction of
  pixels kept (the rest set to the baseline, zero by default) is still
  classified as ``targets`` (LAP paper Sec. 3.3, Fig. 5: pass the original
  predictions). Higher is better."""
  return perturbation_curve(classifier, x, maps, targets,
                            fractions=fractions, mode="insert",
                            baseline=baseline, score="accuracy",
                            chunk_size=chunk_size)


# -- SIC / AIC -----------------------------------------------------------------

def webp_information(images: np.ndarray) -> np.ndarray:
  """``[..., H, W, C]`` images in ``[0, 1]`` -> lossless WebP size in bytes
  (PAIR's entropy estimate)."""
  from PIL import Image

  flat = np.asarray(images).reshape(-1, *np.shape(images)[-3:])
  sizes = []
  for img in flat:
    u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    if u8.shape[-1] == 1:
      u8 = u8[..., 0]
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="WEBP", lossless=True, quality=100)
    sizes.append(buf.tell())
  return np.asarray(sizes, np.float64).reshape(np.shape(images)[:-3])


def sic_aic(classifier: Classifier, x: jax.Array, maps: jax.Array,
            targets: jax.Array | None = None, *, key: jax.Array,
            thresholds: Sequence[float] = PIC_THRESHOLDS,
            blur_sigma: float | None = None, random_fraction: float = 0.01,
            min_pred_value: float = 0.8,
            information: Callable[[np.ndarray], np.ndarray] = webp_information,
            to_pixels: Callable[[np.ndarray], np.ndarray] | None = None,
            chunk_size: int = 64) -> dict[str, np.ndarray | int]:
  """Softmax and accuracy information curves (Kapishnikov et al. 2019).

  The explained class ``c`` is ``targets`` or, if None, the model's
  prediction on the clean image (PAIR's choice).
  The start image is the Gaussian-blurred image (``blur_sigma``, default a
  tenth of the shorter side) with a random ``random_fraction`` of pixels
  sharp (from ``key``); at each threshold ``f`` the top ``f`` fraction of
  pixels by the map is also made sharp. Each image's information is
  ``information(pixels)`` (lossless WebP bytes by default, as in PAIR),
  normalised to ``[0, 1]`` between the start image and the clean image;
  SIC's y is ``(p_c - p_c(start)) / (p_c(clean) - p_c(start))`` clipped to
  ``[0, 1]``, AIC's is 1 when ``c`` is the top-1 class. Points ``(0, 0)``
  and ``(1, 1)`` are added, points are sorted by information, and the area
  under the piecewise-linear curve is the image's AUC (percent, higher is
  better).

  Images are **skipped** (NaN, counted in ``n_skipped``) when the clean
  prediction's probability is below ``min_pred_value`` or the start image is
  already classified as ``c`` (PAIR's two filters), or when the start image
  is not less informative or less confident than the clean one (the
  normalisation would divide by zero). Differences from PAIR:
  the start image is a Gaussian blur, not an interpolation from the random
  pixels, and no monotonic post-processing; aggregate with the mean of the
  per-image AUCs. Information is computed on the host.

  Args:
    x: ``[B, H, W, C]``; ``maps``: ``[B, H, W]`` for the explained class.
    targets: ``[B]`` explained classes, or None for the predictions.
    to_pixels: maps model inputs to ``[0, 1]`` pixels for ``information``
      (default: identity, clipped).

  Maps holding NaN or infinite values are **invalid**: NaN, flagged in
  ``invalid`` and counted in ``n_invalid``, not among the skipped.

  Returns:
    ``{'sic', 'aic': [B] (NaN if skipped or invalid), 'skipped', 'invalid':
    [B] bool, 'n_skipped', 'n_invalid': int}``.
  """
  x = jnp.asarray(x)
  logits = classifier.apply(x)[0]
  pred = jnp.argmax(logits, -1) if targets is None else targets
  x, maps, pred = _check(classifier, x, maps, pred)
  b, h, w = maps.shape
  f = np.asarray(thresholds, np.float64)
  if np.any((f < 0) | (f > 1)):
    raise ValueError(f"thresholds must be in [0, 1]; got {thresholds}")
  sigma = blur_sigma if blur_sigma is not None else min(h, w) / 10
  random_on = jax.random.uniform(key, (h, w)) < random_fraction
  blurred = core.baseline_images(x, "blur", sigma)
  start = jnp.where(random_on[None, ..., None], x, blurred)
  counts = jnp.asarray(np.rint(f * h * w), jnp.int32)
  r = postprocess.pixel_ranks(maps)[..., None]

  def chunk(k):
    sharp = (r[None] < k[:, None, None, None, None]) | random_on[..., None]
    return jnp.where(sharp, x[None], start[None])

  per_pass = core.points_per_pass(chunk_size, b)
  images = core.chunked_map(chunk, counts, per_pass)         # [S, B, H, W, C]
  probs = jax.nn.softmax(core.chunked_map(
      lambda im: classifier.apply(im.reshape(-1, *im.shape[2:]))[0].reshape(
          *im.shape[:2], -1), images, per_pass), -1)          # [S, B, K]
  p_curve = np.asarray(jnp.take_along_axis(probs, pred[None, :, None],
                                           -1)[..., 0]).T      # [B, S]
  hit = np.asarray(jnp.argmax(probs, -1) == pred[None]).T.astype(np.float64)
  p_clean = np.asarray(jax.nn.softmax(logits, -1))[np.arange(b),
                                                   np.asarray(pred)]
  start_logits = np.asarray(classifier.apply(start)[0])
  p_start = np.asarray(jax.nn.softmax(start_logits, -1))[np.arange(b),
                                                         np.asarray(pred)]
  skipped = (p_clean < min_pred_value) | (start_logits.argmax(-1)
                                          == np.asarray(pred))
  invalid = np.asarray(_nonfinite(maps))
  convert = to_pixels or (lambda v: np.clip(v, 0, 1))
  info = information(convert(np.asarray(images)))                # [S, B]
  info_clean = information(convert(np.asarray(x)))
  info_start = information(convert(np.asarray(start)))
  # A start image as informative as the clean one has no information axis.
  skipped |= (info_clean <= info_start) | (p_clean <= p_start)
  span = np.where(skipped, 1.0, info_clean - info_start)
  xs = np.clip((info.T - info_start[:, None]) / span[:, None], 0, 1)
  gain = np.where(skipped, 1.0, p_clean - p_start)
  y_sic = np.clip((p_curve - p_start[:, None]) / gain[:, None], 0, 1)
  out = {}
  for name, ys in (("sic", y_sic), ("aic", hit)):
    px = np.pad(xs, ((0, 0), (1, 0)), constant_values=0.0)
    px = np.pad(px, ((0, 0), (0, 1)), constant_values=1.0)
    py = np.pad(ys, ((0, 0), (1, 0)), constant_values=0.0)
    py = np.pad(py, ((0, 0), (0, 1)), constant_values=1.0)
    order = np.argsort(px, axis=1, kind="stable")
    area = np.trapezoid(np.take_along_axis(py, order, 1),
                        np.take_along_axis(px, order, 1), axis=1)
    out[name] = np.where(skipped | invalid, np.nan, 100.0 * area)
  out["skipped"] = skipped
  out["n_skipped"] = int(skipped.sum())
  out["invalid"] = invalid
  out["n_invalid"] = int(invalid.sum())
  return out
