"""Perturbation attributions: occlusion, RISE, and RELAX for embeddings.

Each evaluates the model on many perturbed copies of the batch inside a
``lax.scan``, at most ``chunk_size`` images per forward pass (``max(1,
chunk_size // B)`` perturbations of the whole batch), so memory is bounded at
any batch size.
Masks are shared by all images of a batch, so an image's map does not depend
on the other images; mask ``i`` is drawn from ``fold_in(key, i)``, so maps do
not depend on ``chunk_size`` either.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lapjax.attribution import core
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier


def _scores(classifier: Classifier, xs: jax.Array, cotangents: jax.Array,
            score: str) -> jax.Array:
  """``[n*B, ...]`` images -> ``[C', n*B]`` target scores."""
  logits = classifier.apply(xs)[0]
  if score == "prob":
    logits = jax.nn.softmax(logits)
  elif score != "logit":
    raise ValueError(f"score must be 'logit' or 'prob'; got {score!r}")
  n = xs.shape[0] // cotangents.shape[1]
  return jnp.einsum("cbk,nbk->cnb", cotangents,
                    logits.reshape(n, cotangents.shape[1], -1)).reshape(
                        cotangents.shape[0], -1)


def _even_passes(n: int, per_pass: int) -> tuple[tuple[int, int], ...]:
  """``(passes, items per pass)`` groups that run ``n`` items exactly.

  The fewest passes of at most ``per_pass`` items, ``passes = ceil(n /
  per_pass)``, filled evenly and without padding: ``r = n mod passes`` of
  them hold ``q + 1`` items and the rest ``q = floor(n / passes)``, so
  that pass sizes differ by at most one item (49 windows at 16 per pass:
  one pass of 13 and three of 12, where passes padded to 16 ran 64 images
  and passes padded to 13 ran 52). Each group is its own ``lax.scan``: at
  most two pass shapes, i.e. two compilations of the model's forward in
  one program, as full passes plus a remainder pass would need, without
  the remainder's small pass (one image of 49 at 16 per pass; measured
  side by side in docs/benchmarks.md). Occlusion's own: in
  ``core._pad_to_chunks``, shared by every chunked method, even chunks
  changed the chunk shapes of the image batch and with them the rounding
  of the multi-device protocol reports (docs/benchmarks.md).
  """
  passes = -(-n // per_pass)
  q, r = divmod(n, passes)
  return tuple((count, size) for count, size in ((r, q + 1),
                                                 (passes - r, q)) if count)


@compiled
def occlusion(classifier: Classifier, x: jax.Array, targets, *,
              window: tuple[int, int] = (8, 8),
              stride: tuple[int, int] = (4, 4),
              fill: jax.Array | float | str = 0.0, blur_sigma: float = 5.0,
              score: str = "logit", chunk_size: int = 64) -> jax.Array:
  """Occlusion: the score drop when a window is set to ``fill``.

  Every window position adds ``f(x) - f(x_occluded)`` to the pixels it
  covers; each pixel's sum is divided by the number of windows covering it
  (coverage normalisation), so a 1-pixel window with stride 1 and zero fill
  gives ``sum_c x * w`` on a linear model. Windows start every ``stride``
  pixels, plus a last one flush with the far edge, so every pixel is covered.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    window: ``(height, width)`` of the occluding patch (all channels).
    stride: step between window positions.
    fill: what replaces the window, in the model's input space: a number,
      an array broadcast to ``x``, or ``'blur'`` (``x`` Gaussian-blurred
      with ``blur_sigma``; ``core.baseline_images``).
    score: ``'logit'`` or ``'prob'``.
    chunk_size: at most this many images per forward pass; the windows
      fill the fewest such passes evenly, without padding (pass sizes
      differ by at most one window, ``_even_passes``).

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014.
  """
  x, t = core.prepare(classifier, x, targets)
  b, h, w = x.shape[:3]
  wh, ww = window
  sh, sw = stride
  for name, (v, lim) in {"window": ((wh, ww), (h, w)),
                         "stride": ((sh, sw), (h, w))}.items():
    if min(v) < 1 or v[0] > lim[0] or v[1] > lim[1]:
      raise ValueError(f"{name} must be in [1, {lim}] per axis; got {v}")
  ys = sorted(set(range(0, h - wh + 1, sh)) | {h - wh})
  xs = sorted(set(range(0, w - ww + 1, sw)) | {w - ww})
  pos = jnp.array([(y, xx) for y in ys for xx in xs], jnp.int32)
  rows, cols = jnp.arange(h), jnp.arange(w)

  def window_mask(p):
    in_y = (rows >= p[0]) & (rows < p[0] + wh)
    in_x = (cols >= p[1]) & (cols < p[1] + ww)
    return (in_y[:, None] & in_x[None, :]).astype(x.dtype)

  filled = core.baseline_images(x, fill, blur_sigma, name="fill")
  base = _scores(classifier, x, t.cotangents, score)           # [C', B]

  def drops(p_chunk):                          # [n, 2] -> [n, C', B, H, W]
    n = p_chunk.shape[0]
    m = jax.vmap(window_mask)(p_chunk)                          # [n, H, W]
    occluded = jnp.where(m[:, None, :, :, None] > 0, filled[None], x[None])
    s = _scores(classifier, occluded.reshape(n * b, *x.shape[1:]),
                t.cotangents, score).reshape(-1, n, b)
    d = base[:, None] - s                                       # [C', n, B]
    return jnp.einsum("cnb,nhw->ncbhw", d, m)

  total, start = jnp.zeros((t.cotangents.shape[0], b, h, w)), 0
  for passes, size in _even_passes(
      len(pos), core.points_per_pass(chunk_size, b)):
    group = pos[start:start + passes * size]
    total += core.chunked_sum(drops, group, jnp.ones(len(group)), size)
    start += passes * size
  coverage = jax.vmap(window_mask)(pos).sum(0)
  return core.finish(total / coverage, t)


def _rise_mask(key: jax.Array, size: tuple[int, int], cells: int,
               p: float) -> jax.Array:
  """One RISE mask: a random ``cells x cells`` grid, bilinearly upsampled to
  ``(cells + 1)`` cell sizes and cropped at a random shift."""
  h, w = size
  ch, cw = math.ceil(h / cells), math.ceil(w / cells)
  k_grid, k_y, k_x = jax.random.split(key, 3)
  grid = jax.random.bernoulli(k_grid, p, (cells, cells)).astype(jnp.float32)
  up = jax.image.resize(grid, ((cells + 1) * ch, (cells + 1) * cw),
                        "bilinear")
  dy = jax.random.randint(k_y, (), 0, ch)
  dx = jax.random.randint(k_x, (), 0, cw)
  return jax.lax.dynamic_slice(up, (dy, dx), (h, w))


@compiled
def rise(classifier: Classifier, x: jax.Array, targets, *, key: jax.Array,
         num_masks: int = 2000, cells: int = 7, p: float = 0.5,
         baseline: jax.Array | float | str = 0.0, blur_sigma: float = 5.0,
         score: str = "prob", normalization: str = "paper",
         chunk_size: int = 64) -> jax.Array:
  """RISE: the score-weighted average of random smooth masks.

  .. math:: S = \\frac{1}{N p} \\sum_i f(x \\odot M_i + b (1 - M_i)) M_i

  ``normalization='paper'`` divides by ``N p`` (Petsiuk et al.);
  ``'mask_sum'`` divides each pixel by ``sum_i M_i`` (Xplique). Masks are
  ``cells x cells`` Bernoulli(p) grids, bilinearly upsampled, randomly shifted
  (mask ``i`` from ``fold_in(key, i)``), shared by the batch. ``baseline``
  ``b``: a number, an array or ``'blur'`` (``core.baseline_images``, with
  ``blur_sigma``).

  References:
    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018.
  """
  x, t = core.prepare(classifier, x, targets)
  core.check_positive("num_masks", num_masks)
  core.check_positive("cells", cells)
  if not 0 < p < 1:
    raise ValueError(f"p must be in (0, 1) (the probability that a mask "
                     f"cell is kept); got {p}")
  if normalization not in ("paper", "mask_sum"):
    raise ValueError(f"normalization must be 'paper' or 'mask_sum'; got "
                     f"{normalization!r}")
  base = core.baseline_images(x, baseline, blur_sigma)
  b, h, w = x.shape[:3]
  make = jax.vmap(lambda i: _rise_mask(jax.random.fold_in(key, i), (h, w),
                                       cells, p))

  def weighted(indices):                         # [n] -> [n, 1+C', B, H, W]
    n = indices.shape[0]
    m = make(indices)                                            # [n, H, W]
    xs = x[None] * m[:, None, :, :, None] + base[None] * (
        1 - m[:, None, :, :, None])
    s = _scores(classifier, xs.reshape(n * b, *x.shape[1:]), t.cotangents,
                score).reshape(-1, n, b)
    contrib = jnp.einsum("cnb,nhw->ncbhw", s, m)
    ones = jnp.broadcast_to(m[:, None, None], (n, 1, b, h, w))
    return jnp.concatenate([ones, contrib], axis=1)

  total = core.chunked_sum(weighted, jnp.arange(num_masks),
                           jnp.ones(num_masks),
                           core.points_per_pass(chunk_size, b))
  mask_sum, sal = total[0], total[1:]
  if normalization == "paper":
    sal = sal / (num_masks * p)
  else:
    sal = sal / jnp.maximum(mask_sum, 1e-10)
  return core.finish(sal, t)


@compiled
def relax(classifier: Classifier, x: jax.Array, targets=None, *,
          layer: str, key: jax.Array, num_masks: int = 2048, cells: int = 7,
          p: float = 0.5, chunk_size: int = 64) -> jax.Array:
  """RELAX (simplified, as in the LaFAM paper): label-free importance.

  Masks are ``cells x cells`` Bernoulli(p) grids upsampled with nearest
  interpolation; each masked input ``x * M_i`` is scored by the cosine
  similarity ``s_i`` of its embedding (the flattened output of ``layer``)
  with the clean one; the map is ``sum_i s_i M_i / (sum_i M_i + 1e-10)``.
  The paper then min-max normalises (``postprocess.normalize_minmax``).
  ``targets`` only decide the output shape, as for ``lafam``.

  References:
    Wickstrøm et al., "RELAX: Representation Learning Explainability", 2023.
  """
  x = jnp.asarray(x)
  core.check_finite_images(x)
  core.check_layer(classifier, layer)
  core.check_positive("num_masks", num_masks)
  core.check_positive("cells", cells)
  if not 0 < p < 1:
    raise ValueError(f"p must be in (0, 1) (the probability that a mask "
                     f"cell is kept); got {p}")
  b, h, w = x.shape[:3]

  def embed(images):
    e = classifier.apply(images)[1][layer]
    return e.reshape(e.shape[0], -1)

  clean = embed(x)
  clean = clean / (jnp.linalg.norm(clean, axis=-1, keepdims=True) + 1e-12)

  def make(i):
    grid = jax.random.bernoulli(jax.random.fold_in(key, i), p,
                                (cells, cells)).astype(x.dtype)
    return jax.image.resize(grid, (h, w), "nearest")

  def weighted(indices):                                  # -> [n, 2, B, H, W]
    n = indices.shape[0]
    m = jax.vmap(make)(indices)
    e = embed((x[None] * m[:, None, :, :, None]).reshape(n * b,
                                                         *x.shape[1:]))
    e = e / (jnp.linalg.norm(e, axis=-1, keepdims=True) + 1e-12)
    s = jnp.einsum("nbd,bd->nb", e.reshape(n, b, -1), clean)
    mb = jnp.broadcast_to(m[:, None], (n, b, h, w))
    return jnp.stack([mb, s[:, :, None, None] * mb], axis=1)

  total = core.chunked_sum(weighted, jnp.arange(num_masks),
                           jnp.ones(num_masks),
                           core.points_per_pass(chunk_size, b))
  return core.label_free(total[1] / (total[0] + 1e-10), classifier, x,
                         targets)
