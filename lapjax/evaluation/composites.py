"""Two-image composites and their insertion / deletion test (paper 003).

Paper 003 (Sec. 4.2, Table 2 and App. Table 12) scores attribution maps
by insertion and deletion on a controlled two-object input: images whose
object lies mostly in the central half of the width are cropped to that
half and two such crops, of two distinct classes, are put side by side:

.. math:: x = [\\,x_a[:, W/4 : 3W/4] \\;|\\; x_b[:, W/4 : 3W/4]\\,]
   \\in \\mathbb{R}^{H \\times W \\times C}

(an image is kept when at least 80 % of its object pixels lie in the
central band ``[W/4, 3W/4)``). Each composite is explained once for each of
its two classes (``[G, 2]`` targets, one method call), optionally refined by
Attribution Lens with the class set ``C' = {a, b}``, and each map is scored
by insertion (reveal the top pixels into a blurred copy; the AUC of the
explained class's softmax probability, higher is better) and deletion
(blur the top pixels away; lower is better), ``metrics.insertion_deletion``.
No crop is resized, so the composite shows each object at its own scale.

References:
  Paper 003 in ``shared/papers`` ("Hidden in Plain Sight - Class
  Competition Focuses Attribution Maps"), Sec. 4.2, App. Fig. 7, Tables 2
  and 12; Petsiuk et al., "RISE", BMVC 2018 (insertion / deletion).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import metrics
from lapjax.attribution import lens_refine
from lapjax.classifier import Classifier
from lapjax.data import grid

SIDES = 2
CENTRED_FRACTION = 0.8   # object pixels inside the central band (paper)


def band(width: int) -> tuple[int, int]:
  """``(start, stop)`` columns of the central half of ``width`` (even)."""
  if width % 4:
    raise ValueError(f"two-image composites need a width divisible by 4 "
                     f"(two central halves side by side); got {width}")
  return width // 4, 3 * width // 4


def centred(masks: np.ndarray, *, fraction: float = CENTRED_FRACTION
            ) -> np.ndarray:
  """``[N]`` bool: masks ``[N, H, W]`` with at least ``fraction`` of their
  object pixels in the central half of the width (empty masks: False)."""
  masks = np.asarray(masks, bool)
  lo, hi = band(masks.shape[-1])
  total = masks.sum((1, 2))
  inside = masks[:, :, lo:hi].sum((1, 2))
  return (total > 0) & (inside >= fraction * np.maximum(total, 1))


def choose_pairs(labels: np.ndarray, num_composites: int, *, seed: int
                 ) -> np.ndarray:
  """``[G, 2]`` indices of images of two distinct classes (left, right),
  deterministic in ``seed`` (``grid.choose_distinct``).

  Raises:
    ValueError: fewer than two distinct classes in ``labels``.
  """
  return grid.choose_distinct(labels, num_composites, SIDES, seed=seed,
                              what="a two-image composite")


def make_composites(batch: dict[str, np.ndarray], pairs: np.ndarray
                    ) -> dict[str, np.ndarray]:
  """Composes two-image composites from a batch of single images.

  Args:
    batch: ``image [N, H, W, C]`` (W divisible by 4), ``label [N]`` and
      optionally ``mask [N, H, W]`` (the objects).
    pairs: ``[G, 2]`` indices into the batch (e.g. ``choose_pairs``), left
      then right.

  Returns:
    ``image [G, H, W, C]``, ``labels [G, 2]`` (left, right), ``half_mask
    [G, 2, H, W]`` (which columns came from which image) and, when the
    batch has masks, ``mask [G, 2, H, W]`` (each object, moved with its
    crop; object pixels outside the band are cut off).
  """
  image = np.asarray(batch["image"])
  n, h, w = image.shape[:3]
  lo, hi = band(w)
  pairs = np.asarray(pairs)
  if pairs.ndim != 2 or pairs.shape[1] != SIDES:
    raise ValueError(f"pairs must be [G, 2]; got shape {pairs.shape}")
  if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
    raise ValueError(f"pairs must index the batch of {n}; got "
                     f"[{pairs.min()}, {pairs.max()}]")
  half = hi - lo
  out = {"image": np.concatenate([image[pairs[:, 0], :, lo:hi],
                                  image[pairs[:, 1], :, lo:hi]], axis=2),
         "labels": np.asarray(batch["label"])[pairs]}
  sides = np.zeros((len(pairs), SIDES, h, w), bool)
  sides[:, 0, :, :half] = True
  sides[:, 1, :, half:] = True
  out["half_mask"] = sides
  if "mask" in batch:
    m = np.asarray(batch["mask"], bool)
    masks = np.zeros((len(pairs), SIDES, h, w), bool)
    masks[:, 0, :, :half] = m[pairs[:, 0], :, lo:hi]
    masks[:, 1, :, half:] = m[pairs[:, 1], :, lo:hi]
    out["mask"] = masks
  return out


def composite_insertion_deletion(classifier: Classifier, images: jax.Array,
                                 labels: jax.Array, maps: jax.Array, *,
                                 steps: int = 20, baseline="blur",
                                 blur_sigma: float = 5.0,
                                 chunk_size: int = 64
                                 ) -> dict[str, jax.Array]:
  """Insertion and deletion AUCs of class-wise composite maps.

  Args:
    classifier: the model.
    images: ``[G, H, W, C]`` composites.
    labels: ``[G, 2]`` their two classes.
    maps: ``[G, 2, H, W]``, the map of each class (raw or lens-refined).
    steps, baseline, blur_sigma, chunk_size: as in
      ``metrics.insertion_deletion`` (default baseline: the blurred
      composite, as the paper).

  Returns:
    ``{'ins', 'del', 'idd': [G, 2]}``: AUCs in percent of the explained
    class's softmax probability (insertion higher is better, deletion
    lower is better, ``idd = ins - del``).
  """
  images = jnp.asarray(images)
  labels = jnp.asarray(labels, jnp.int32)
  maps = jnp.asarray(maps, jnp.float32)
  g = images.shape[0]
  if labels.shape != (g, SIDES) or maps.shape != (g, SIDES,
                                                   *images.shape[1:3]):
    raise ValueError(f"labels must be [G, 2] and maps [G, 2, H, W] for "
                     f"images {images.shape}; got {labels.shape} and "
                     f"{maps.shape}")
  x = jnp.repeat(images, SIDES, axis=0)
  scores = metrics.insertion_deletion(
      classifier, x, maps.reshape(g * SIDES, *maps.shape[2:]),
      labels.reshape(-1), steps=steps, baseline=baseline,
      blur_sigma=blur_sigma, chunk_size=chunk_size)
  return {k: scores[k].reshape(g, SIDES) for k in ("ins", "del", "idd")}


def with_lens(maps: jax.Array) -> jax.Array:
  """Attribution Lens over the two classes of each composite:
  ``lens_refine`` of ``[G, 2, H, W]`` maps (paper form, ``C' = {a, b}``)."""
  return lens_refine(jnp.asarray(maps))


def paired_summary(base: np.ndarray, lens: np.ndarray) -> dict[str, float]:
  """Paired comparison of per-map scores with and without the lens.

  Returns the means, the mean paired difference ``lens - base`` with its
  standard error ``std(d, ddof=1) / sqrt(n)`` over the pairs where both
  are defined, and the relative change ``mean(lens) / mean(base) - 1``
  (the paper's "+x %").
  """
  base = np.asarray(base, np.float64).reshape(-1)
  lens = np.asarray(lens, np.float64).reshape(-1)
  ok = np.isfinite(base) & np.isfinite(lens)
  d = lens[ok] - base[ok]
  n = int(ok.sum())
  se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
  mb, ml = float(base[ok].mean()), float(lens[ok].mean())
  return {"n": n, "base": mb, "lens": ml, "diff": float(d.mean()),
          "diff_se": se, "relative": ml / mb - 1 if mb else float("nan")}
