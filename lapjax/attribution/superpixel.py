"""Superpixel perturbation attributions: ablation, Shapley, KernelSHAP, LIME.

Each method treats the segments of an image (SLIC superpixels by default,
``slic_segments``, or any segmentation the user supplies) as the players of
a game: a coalition ``z in {0, 1}^S`` keeps the pixels of the segments with
``z_j = 1`` and replaces the others by the baseline,

.. math:: x(z) = m(z) \\odot x + (1 - m(z)) \\odot b, \\qquad
   m(z)_p = z_{s(p)},

and ``v(z)`` is the target score of ``x(z)`` (logit or probability, or the
output cotangent applied to the logits). Every method returns one value
``phi_j`` per segment; the map gives each pixel its segment's value.

Segments are an int ``[B, H, W]`` map per batch. Image ``b`` has
``n_b = max(segments[b]) + 1`` segments, ids ``0 .. n_b - 1``, every id
used. The device code is static in ``S = num_segments >= max_b n_b`` (by
default the batch's largest ``n_b``; pass it explicitly under ``jit`` or to
keep one compiled program across batches): ids ``n_b .. S - 1`` are absent
from image ``b`` and the methods treat them as padding, so image ``b``'s map
depends neither on ``S`` nor on the other images.

The random coalitions and permutations are drawn once per batch in the
segment-id space (coalition ``i`` from ``fold_in(key, i)``, feature ``j`` of
it from a further ``fold_in(., j)``) and shared by its images, as the masks
of RISE are; each image reads them restricted to its own ``n_b`` segments.
Model evaluations run ``max(1, chunk_size // B)`` coalitions of the whole
batch per forward pass (``lax.map`` over chunks); nothing loops in Python
over samples.

Evaluations per image: feature ablation ``S + 1``; Shapley value sampling
``samples * S + 1``; KernelSHAP ``samples + 2`` (``2^S`` with
``all_coalitions=True``); LIME ``samples``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.attribution import core
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier, check_images

MAX_ENUMERATED_SEGMENTS = 20     # 2^20 coalitions: KernelSHAP's exact mode


def slic_segments(images, *, n_segments: int = 50, compactness: float = 10.0,
                  sigma: float = 0.0, max_num_iter: int = 10,
                  enforce_connectivity: bool = True) -> np.ndarray:
  """SLIC superpixels of a batch, computed on the host with scikit-image.

  Each image is min-max rescaled to ``[0, 1]`` first (SLIC measures colour
  distances, which should not depend on the model's input normalisation)
  and, with three channels, converted to CIELAB as scikit-image does by
  default. Labels are renumbered ``0 .. n_b - 1`` in order of first use, so
  no id is empty. SLIC returns about ``n_segments`` segments, not exactly
  that many; images differ, and the methods pad to the batch's largest
  count (see the module docstring). The defaults are scikit-image's.

  Args:
    images: ``[B, H, W, C]`` float images (any range), NumPy or JAX.
    n_segments: approximate number of segments per image.
    compactness: colour against space weight (larger: squarer segments).
    sigma: Gaussian smoothing before segmenting, in pixels (0: none).
    max_num_iter: k-means iterations.
    enforce_connectivity: merge disconnected fragments into neighbours.

  Returns:
    ``[B, H, W]`` int32 segment ids.

  References:
    Achanta et al., "SLIC Superpixels Compared to State-of-the-Art
    Superpixel Methods", TPAMI 2012.
  """
  from skimage.segmentation import slic  # host-only, imported on use

  x = np.asarray(images)
  check_images(x, name="images")
  core.check_positive("n_segments", n_segments)
  out = np.empty(x.shape[:3], np.int32)
  for b, image in enumerate(x.astype(np.float64)):
    lo, hi = image.min(), image.max()
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    labels = slic(scaled, n_segments=n_segments, compactness=compactness,
                  sigma=sigma, max_num_iter=max_num_iter,
                  enforce_connectivity=enforce_connectivity,
                  convert2lab=image.shape[-1] == 3, start_label=0,
                  channel_axis=-1)
    _, first, inverse = np.unique(labels, return_index=True,
                                  return_inverse=True)
    order = np.argsort(np.argsort(first))       # ids in order of first use
    out[b] = order[inverse].reshape(labels.shape)
  return out


def _is_traced(a) -> bool:
  return isinstance(a, jax.core.Tracer)


def _check_segments(segments, x, num_segments: int | None):
  """Validates segments against ``x [B, H, W, C]``; returns them and ``S``.

  Concrete segments are checked at once (ids >= 0, no empty id, at most
  ``num_segments`` of them); traced ones need ``num_segments`` and are
  checked in the method under ``checkify`` (``_check_traced_segments``).
  """
  x = x if hasattr(x, "shape") else np.asarray(x)
  check_images(x)
  if segments is None and _is_traced(x):
    if num_segments is None:
      raise ValueError(
          "segments=None under jit computes SLIC superpixels on the host "
          "(a callback), whose count is known only at run time: pass "
          "num_segments, a static bound on it (e.g. 2 * n_segments of "
          "slic_segments), or segments and num_segments")
    segments = jax.pure_callback(
        slic_segments, jax.ShapeDtypeStruct(x.shape[:3], jnp.int32), x,
        vmap_method="sequential")
  elif segments is None:
    segments = slic_segments(x)
  if not hasattr(segments, "dtype"):
    segments = np.asarray(segments)
  if tuple(segments.shape) != tuple(x.shape[:3]):
    raise ValueError(f"segments must be [B, H, W] = {tuple(x.shape[:3])}, "
                     "one segment id per pixel of x; got shape "
                     f"{tuple(segments.shape)}")
  if not jnp.issubdtype(segments.dtype, jnp.integer):
    raise ValueError(f"segments must be integer segment ids; got dtype "
                     f"{segments.dtype}")
  if num_segments is not None:
    core.check_positive("num_segments", num_segments)
  if _is_traced(segments):
    if num_segments is None:
      raise ValueError(
          "num_segments must be given when segments are traced (under jit): "
          "it fixes the number of players, a static shape")
    return segments, int(num_segments)
  host = np.asarray(segments).reshape(segments.shape[0], -1)
  if host.size and host.min() < 0:
    raise ValueError(f"segments must be ids >= 0; got minimum {host.min()}")
  counts = [np.bincount(s) for s in host]
  for b, c in enumerate(counts):
    empty = np.flatnonzero(c == 0)
    if empty.size:
      raise ValueError(
          f"segments of image {b} have empty ids {empty[:10].tolist()} "
          f"(ids must be 0 .. {len(c) - 1} with every id used; renumber "
          "with np.unique(s, return_inverse=True))")
  largest = max(len(c) for c in counts)
  if num_segments is None:
    num_segments = largest
  elif largest > num_segments:
    raise ValueError(f"segments have {largest} ids in one image but "
                     f"num_segments is {num_segments}")
  return jnp.asarray(segments, jnp.int32), int(num_segments)


def _check_traced_segments(segments: jax.Array, num_segments: int) -> None:
  """The value checks of ``_check_segments`` under ``checkify``."""
  if not _is_traced(segments):
    return
  flat = segments.reshape(segments.shape[0], -1)
  lo, hi = jnp.min(flat), jnp.max(flat)
  core.check_traced((lo >= 0) & (hi < num_segments),
                    f"segments must be ids in [0, num_segments = "
                    f"{num_segments}); got values in [{{}}, {{}}]", lo, hi)
  counts = jax.vmap(lambda s: jnp.bincount(s, length=num_segments))(flat)
  used = jnp.arange(num_segments) < (flat.max(-1) + 1)[:, None]
  empty = jnp.sum(used & (counts == 0))
  core.check_traced(empty == 0, "segments have {} empty ids (ids must be "
                    "0 .. n - 1 in each image with every id used)", empty)


def _num_players(segments: jax.Array, num_segments: int
                 ) -> tuple[jax.Array, jax.Array]:
  """``[B]`` segment counts ``n_b`` and ``[B, S]`` present-id masks."""
  n = segments.reshape(segments.shape[0], -1).max(-1) + 1
  return n, jnp.arange(num_segments)[None, :] < n[:, None]


def _target_scores(classifier: Classifier, xs: jax.Array,
                   cotangents: jax.Array, score: str) -> jax.Array:
  """``[n, B, H, W, C]`` images -> ``[n, C', B]`` target scores."""
  n, b = xs.shape[:2]
  logits = classifier.apply(xs.reshape(n * b, *xs.shape[2:]))[0]
  if score == "prob":
    logits = jax.nn.softmax(logits)
  return jnp.einsum("cbk,nbk->ncb", cotangents, logits.reshape(n, b, -1))


def _check_score(score: str) -> None:
  if score not in ("logit", "prob"):
    raise ValueError(f"score must be 'logit' or 'prob'; got {score!r}")


def _keep_masks(z: jax.Array, segments: jax.Array) -> jax.Array:
  """Coalitions ``z [n, B, S]`` (or ``[n, S]``) -> pixel masks
  ``[n, B, H, W]``: pixel ``p`` of image ``b`` is kept iff
  ``z[b, segments[b, p]]``."""
  b = segments.shape[0]
  if z.ndim == 2:
    z = jnp.broadcast_to(z[:, None], (z.shape[0], b, z.shape[1]))
  flat = segments.reshape(1, b, -1)
  kept = jnp.take_along_axis(z, jnp.broadcast_to(
      flat, (z.shape[0], *flat.shape[1:])), axis=2)
  return kept.reshape(z.shape[0], *segments.shape)


def _perturbed(x: jax.Array, base: jax.Array, z: jax.Array,
               segments: jax.Array) -> jax.Array:
  """``x(z)``: ``[n, B, H, W, C]`` images for coalitions ``z``."""
  keep = _keep_masks(z, segments)[..., None]
  return jnp.where(keep, x[None], base[None])


def coalition_scores(classifier: Classifier, x: jax.Array, base: jax.Array,
                     cotangents: jax.Array, segments: jax.Array,
                     coalitions: jax.Array, *, score: str = "logit",
                     chunk_size: int = 64) -> jax.Array:
  """``v(z)`` of given coalitions: ``[n, C', B]`` target scores.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]`` images.
    base: ``[B, H, W, C]`` baseline images.
    cotangents: ``[C', B, K]`` output cotangents (``core.make_targets``).
    segments: ``[B, H, W]`` int segment ids.
    coalitions: ``[n, S]`` (shared by the batch) or ``[n, B, S]`` boolean.
    score: ``'logit'`` or ``'prob'``.
    chunk_size: images per forward pass.
  """
  def run(z):
    return _target_scores(classifier, _perturbed(x, base, z, segments),
                          cotangents, score)
  return core.chunked_map(run, coalitions,
                          core.points_per_pass(chunk_size, x.shape[0]))


def _segment_maps(values: jax.Array, segments: jax.Array) -> jax.Array:
  """``[C', B, S]`` values per segment -> ``[C', B, H, W]`` maps."""
  c, b = values.shape[:2]
  flat = jnp.broadcast_to(segments.reshape(1, b, -1),
                          (c, b, segments[0].size))
  return jnp.take_along_axis(values, flat, axis=2).reshape(
      c, *segments.shape)


def _uniforms(key: jax.Array, items: jax.Array, num: int) -> jax.Array:
  """``[n, num]`` uniforms, entry ``(i, j)`` from
  ``fold_in(fold_in(key, items[i]), j)``: the first ``m`` columns do not
  depend on ``num``."""
  def row(i):
    k = jax.random.fold_in(key, i)
    return jax.vmap(lambda j: jax.random.uniform(
        jax.random.fold_in(k, j)))(jnp.arange(num))
  return jax.vmap(row)(items)


def _prepare(classifier, x, targets, segments, num_segments, baseline,
             blur_sigma, score):
  x, t = core.prepare(classifier, x, targets)
  _check_score(score)
  _check_traced_segments(segments, num_segments)
  base = core.baseline_images(x, baseline, blur_sigma)
  return x, t, base


def _endpoint_scores(classifier, x, base, t, score):
  """``v(1)`` (the image) and ``v(0)`` (the baseline): ``[C', B]`` each."""
  both = _target_scores(classifier, jnp.stack([x, base]), t.cotangents,
                        score)
  return both[0], both[1]


# --- Feature ablation ---------------------------------------------------------


@compiled
def _feature_ablation(classifier, x, targets, *, segments, num_segments,
                      baseline, blur_sigma, score, chunk_size):
  x, t, base = _prepare(classifier, x, targets, segments, num_segments,
                        baseline, blur_sigma, score)
  full = _target_scores(classifier, x[None], t.cotangents, score)[0]
  ablated = ~jnp.eye(num_segments, dtype=bool)            # [S, S]
  drops = full[None] - coalition_scores(
      classifier, x, base, t.cotangents, segments, ablated, score=score,
      chunk_size=chunk_size)                               # [S, C', B]
  return core.finish(_segment_maps(jnp.moveaxis(drops, 0, -1), segments), t)


def feature_ablation(classifier: Classifier, x: jax.Array, targets, *,
                     segments=None, num_segments: int | None = None,
                     baseline: jax.Array | float | str = 0.0,
                     blur_sigma: float = 5.0, score: str = "logit",
                     chunk_size: int = 64) -> jax.Array:
  """Feature ablation: the score drop when one segment is set to baseline.

  .. math:: \\phi_j = v(\\mathbf{1}) - v(\\mathbf{1} - e_j)

  Captum's ``FeatureAblation`` with a feature mask; with one-pixel segments
  it is occlusion with a ``1 x 1`` window (``perturbation.occlusion``).

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    segments: ``[B, H, W]`` int segment ids (``0 .. n_b - 1`` per image,
      none empty), or None for ``slic_segments(x)`` (under ``jit`` a host
      callback, with ``num_segments`` bounding its count).
    num_segments: players ``S`` (static); None: the batch's largest
      ``n_b`` (needs concrete segments).
    baseline: what replaces an ablated segment, in the model's input space:
      a number, an array broadcast to ``x``, or ``'blur'``
      (``core.baseline_images`` with ``blur_sigma``).
    blur_sigma: Gaussian sigma of the ``'blur'`` baseline, in pixels.
    score: ``'logit'`` or ``'prob'``.
    chunk_size: images per forward pass.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed; constant on each segment.

  References:
    Zeiler & Fergus, "Visualizing and Understanding Convolutional
    Networks", ECCV 2014; Kokhlikyan et al., "Captum: A unified and generic
    model interpretability library for PyTorch", 2020.
  """
  segments, num_segments = _check_segments(segments, x, num_segments)
  return _feature_ablation(classifier, x, targets, segments=segments,
                           num_segments=num_segments, baseline=baseline,
                           blur_sigma=blur_sigma, score=score,
                           chunk_size=chunk_size)


# --- Shapley value sampling ---------------------------------------------------


def shapley_from_permutations(classifier: Classifier, x: jax.Array,
                              base: jax.Array, cotangents: jax.Array,
                              segments: jax.Array, permutations: jax.Array,
                              *, score: str = "logit",
                              chunk_size: int = 64) -> jax.Array:
  """Mean marginal contributions along given permutations: ``[C', B, S]``.

  Each permutation ``pi`` (a row of ``permutations [P, S]``, an order of
  the ids ``0 .. S - 1``) adds the segments one by one to the baseline;
  segment ``pi_k`` receives ``v(pi_{<=k}) - v(pi_{<k})``. Ids absent from
  an image add nothing to it (zero contribution), so each image's values
  are those of the permutations restricted to its own segments.
  """
  p, s = permutations.shape
  ranks = jnp.argsort(permutations, axis=1)          # position of each id
  steps = jnp.arange(1, s + 1)
  prefixes = ranks[:, None, :] < steps[None, :, None]        # [P, S, S]
  values = coalition_scores(classifier, x, base, cotangents, segments,
                            prefixes.reshape(p * s, s), score=score,
                            chunk_size=chunk_size).reshape(
                                p, s, *cotangents.shape[:2])
  # v(0) beside x in one batch: alone, a constant baseline through the
  # model's constant weights is constant-folded by XLA (40 s to compile).
  empty = _target_scores(classifier, jnp.stack([x, base]), cotangents,
                         score)[1:]
  previous = jnp.concatenate(
      [jnp.broadcast_to(empty, (p, 1, *empty.shape[1:])), values[:, :-1]],
      axis=1)
  added = jax.nn.one_hot(permutations, s, dtype=values.dtype)  # [P, k, j]
  return jnp.einsum("pkcb,pkj->cbj", values - previous, added) / p


@compiled
def _shapley_sampling(classifier, x, targets, *, segments, num_segments,
                      key, samples, baseline, blur_sigma, score,
                      chunk_size):
  x, t, base = _prepare(classifier, x, targets, segments, num_segments,
                        baseline, blur_sigma, score)
  u = _uniforms(key, jnp.arange(samples), num_segments)
  permutations = jnp.argsort(u, axis=1)
  values = shapley_from_permutations(classifier, x, base, t.cotangents,
                                     segments, permutations, score=score,
                                     chunk_size=chunk_size)
  return core.finish(_segment_maps(values, segments), t)


def shapley_sampling(classifier: Classifier, x: jax.Array, targets, *,
                     key: jax.Array, samples: int = 25, segments=None,
                     num_segments: int | None = None,
                     baseline: jax.Array | float | str = 0.0,
                     blur_sigma: float = 5.0, score: str = "logit",
                     chunk_size: int = 64) -> jax.Array:
  """Shapley value sampling: mean marginal contributions over permutations.

  .. math:: \\phi_j = \\frac{1}{P} \\sum_{p=1}^{P}
     v(\\mathrm{pre}_{\\pi_p}(j) \\cup \\{j\\}) - v(\\mathrm{pre}_{\\pi_p}(j))

  with ``P = samples`` uniformly random permutations ``pi_p`` of the
  segments (permutation ``p`` from ``fold_in(key, p)``), each walked from
  the baseline (Captum's ``ShapleyValueSampling``; ``samples`` is its
  ``n_samples``, default 25). Unbiased for the Shapley values; exact for a
  model additive over segments, whatever the permutations. Efficiency holds
  per permutation: ``sum_j phi_j = v(1) - v(0)``. ``samples * S + 1``
  evaluations per image.

  Args:
    classifier, x, targets, segments, num_segments, baseline, blur_sigma,
    score, chunk_size: as for ``feature_ablation``.
    key: ``jax.random.key``; the same key gives the same maps.
    samples: permutations ``P``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed; constant on each segment.

  References:
    Castro, Gómez & Tejada, "Polynomial calculation of the Shapley value
    based on sampling", Computers & Operations Research 2009; Strumbelj &
    Kononenko, "An efficient explanation of individual classifications
    using game theory", JMLR 2010.
  """
  core.check_positive("samples", samples)
  segments, num_segments = _check_segments(segments, x, num_segments)
  return _shapley_sampling(classifier, x, targets, segments=segments,
                           num_segments=num_segments, key=key,
                           samples=samples, baseline=baseline,
                           blur_sigma=blur_sigma, score=score,
                           chunk_size=chunk_size)


# --- KernelSHAP ---------------------------------------------------------------


def _weighted_lstsq(design: jax.Array, targets: jax.Array,
                    weights: jax.Array, penalty: jax.Array) -> jax.Array:
  """``argmin_beta sum_i w_i |y_i - A_i beta|^2 + sum_j d_j beta_j^2``.

  ``design [n, S]``, ``targets [n, C']``, ``weights [n]``, ``penalty
  [S]``; returns ``[S, C']``. Solved as the least-squares problem of the
  stacked rows ``[sqrt(w) A; diag(sqrt(d))]`` (SVD, minimum-norm where
  rank-deficient): better conditioned in float32 than normal equations.
  """
  root = jnp.sqrt(weights)[:, None]
  a = jnp.concatenate([root * design, jnp.diag(jnp.sqrt(penalty))])
  y = jnp.concatenate([root * targets,
                       jnp.zeros((penalty.shape[0], targets.shape[1]),
                                 targets.dtype)])
  return jnp.linalg.lstsq(a, y)[0]


def kernel_shap_solve(coalitions: jax.Array, weights: jax.Array,
                      values: jax.Array, full: jax.Array, empty: jax.Array,
                      present: jax.Array) -> jax.Array:
  """KernelSHAP's constrained weighted least squares: ``[C', B, S]``.

  .. math:: \\min_\\phi \\sum_i w_i \\big(v(z_i) - v(0) - z_i^\\top \\phi
     \\big)^2 \\quad \\text{s.t.} \\quad \\mathbf{1}^\\top \\phi = v(1) - v(0)

  The two infinite-weight coalitions of the Shapley kernel (empty and full)
  are these exact constraints (the intercept is ``v(0)``); the sum
  constraint is eliminated through the image's last segment, as in the
  ``shap`` package. Ids an image lacks (``present`` false) get 0.

  Args:
    coalitions: ``[n, B, S]`` boolean (false on absent ids).
    weights: ``[n, B]`` sample weights.
    values: ``[n, C', B]`` scores ``v(z_i)``.
    full: ``[C', B]`` ``v(1)``.
    empty: ``[C', B]`` ``v(0)``.
    present: ``[B, S]`` ids present in each image.
  """
  s = present.shape[1]
  last = present.sum(-1) - 1                               # [B]
  last_hot = jax.nn.one_hot(last, s, dtype=bool)
  free = present & ~last_hot                               # [B, S]
  z = coalitions.astype(values.dtype)
  z_last = jnp.take_along_axis(z, last[None, :, None], axis=2)[..., 0]
  design = (z - z_last[..., None]) * free[None]            # [n, B, S]
  delta = full - empty                                     # [C', B]
  rhs = values - empty[None] - z_last[:, None] * delta[None]   # [n, C', B]
  solve = jax.vmap(_weighted_lstsq, in_axes=(1, 2, 1, 0), out_axes=1)
  phi = solve(design, rhs, weights,
              (~free).astype(values.dtype))                # [S, B, C']
  phi = jnp.moveaxis(phi, (0, 1, 2), (2, 1, 0))            # [C', B, S]
  rest = delta - phi.sum(-1)
  return phi + rest[..., None] * last_hot[None]


def _shapley_kernel_sizes(u: jax.Array, n: jax.Array, s: int) -> jax.Array:
  """Coalition sizes ``k in [1, n - 1]`` with ``P(k) ~ (n - 1) / (k (n -
  k))`` (inverse CDF of ``u [m]`` for each ``n [B]``): ``[m, B]``."""
  k = jnp.arange(1, s, dtype=jnp.float32)                  # [S - 1]
  valid = k[None] < n[:, None]                             # [B, S - 1]
  mass = jnp.where(valid, 1.0 / (k[None] * jnp.maximum(n[:, None] - k[None],
                                                       1)), 0.0)
  cdf = jnp.cumsum(mass, -1) / jnp.maximum(mass.sum(-1, keepdims=True),
                                           1e-30)
  below = (cdf[None] < u[:, None, None]) & valid[None]     # [m, B, S - 1]
  return jnp.minimum(1 + below.sum(-1), jnp.maximum(n - 1, 1)[None])


def _sampled_coalitions(key, samples, n, present):
  """Coalitions drawn as KernelSHAP (Captum's ``KernelShap``) draws them:
  a size from the Shapley kernel, then a uniformly random set of that
  size among the image's segments. With ``(k_size, k_order) =
  split(key)``, sample ``i``'s size comes from a uniform drawn with
  ``fold_in(k_size, i)`` and id ``j``'s priority from
  ``fold_in(fold_in(k_order, i), j)``; the draws are shared by the batch."""
  s = present.shape[1]
  items = jnp.arange(samples)
  size_key, order_key = jax.random.split(key)
  u = jax.vmap(lambda i: jax.random.uniform(
      jax.random.fold_in(size_key, i)))(items)             # [m]
  priority = _uniforms(order_key, items, s)                # [m, S]
  sizes = _shapley_kernel_sizes(u, n, s)                   # [m, B]
  priority = jnp.where(present[None], priority[:, None], -1.0)
  rank = jnp.argsort(jnp.argsort(-priority, axis=-1), axis=-1)
  coalitions = rank < sizes[..., None]                     # [m, B, S]
  weights = jnp.broadcast_to((n >= 2).astype(jnp.float32)[None],
                             sizes.shape)
  return coalitions, weights


def _all_coalitions(n, present):
  """Every coalition of ``S`` ids except the empty and full one, with the
  Shapley kernel weight ``(n - 1) / (C(n, k) k (n - k))`` of the image's
  own ``n`` (zero where it holds an absent id or all the image's ids)."""
  s = present.shape[1]
  codes = jnp.arange(1, 2 ** s - 1, dtype=jnp.int32)
  bits = (codes[:, None] >> jnp.arange(s)[None]) & 1 == 1  # [m, S]
  coalitions = jnp.broadcast_to(bits[:, None], (len(codes), *present.shape))
  size = bits.sum(-1).astype(jnp.float32)[:, None]         # [m, 1]
  nf = n.astype(jnp.float32)[None]                         # [1, B]
  inside = ~jnp.any(bits[:, None] & ~present[None], -1)    # [m, B]
  ok = inside & (size < nf)
  k = jnp.clip(size, 1, jnp.maximum(nf - 1, 1))
  log_binom = (jax.scipy.special.gammaln(nf + 1)
               - jax.scipy.special.gammaln(k + 1)
               - jax.scipy.special.gammaln(nf - k + 1))
  weights = (nf - 1) / (jnp.exp(log_binom) * k * jnp.maximum(nf - k, 1))
  return coalitions, jnp.where(ok, weights, 0.0)


@compiled
def _kernel_shap(classifier, x, targets, *, segments, num_segments, key,
                 samples, all_coalitions, baseline, blur_sigma, score,
                 chunk_size):
  x, t, base = _prepare(classifier, x, targets, segments, num_segments,
                        baseline, blur_sigma, score)
  n, present = _num_players(segments, num_segments)
  if all_coalitions:
    coalitions, weights = _all_coalitions(n, present)
  else:
    coalitions, weights = _sampled_coalitions(key, samples, n, present)
  values = coalition_scores(classifier, x, base, t.cotangents, segments,
                            coalitions, score=score, chunk_size=chunk_size)
  full, empty = _endpoint_scores(classifier, x, base, t, score)
  phi = kernel_shap_solve(coalitions, weights, values, full, empty, present)
  return core.finish(_segment_maps(phi, segments), t)


def kernel_shap(classifier: Classifier, x: jax.Array, targets, *,
                key: jax.Array | None = None, samples: int = 256,
                all_coalitions: bool = False, segments=None,
                num_segments: int | None = None,
                baseline: jax.Array | float | str = 0.0,
                blur_sigma: float = 5.0, score: str = "logit",
                chunk_size: int = 64) -> jax.Array:
  """KernelSHAP: Shapley values as a weighted linear regression.

  .. math:: \\min_\\phi \\sum_i \\pi(z_i) \\big(v(z_i) - v(0) -
     z_i^\\top \\phi\\big)^2, \\qquad \\pi(z) = \\frac{n - 1}
     {\\binom{n}{|z|} |z| (n - |z|)}, \\qquad \\mathbf{1}^\\top \\phi =
     v(1) - v(0)

  ``samples`` coalitions are drawn with probability proportional to the
  Shapley kernel (a size ``k`` with ``P(k) ~ (n - 1) / (k (n - k))``, then
  a uniform set of ``k`` segments, as Captum's ``KernelShap``) and weighted
  1 each; ``all_coalitions=True`` enumerates all ``2^S - 2`` instead,
  weighted by ``pi``, and then ``phi`` are the exact Shapley values
  (Lundberg & Lee, Theorem 2). The empty and full coalitions are exact
  constraints (``kernel_shap_solve``), where Captum gives them weight
  ``10^6`` in an unconstrained regression with intercept; Captum's
  ``n_samples`` counts those two, lapjax's ``samples`` does not.

  Args:
    classifier, x, targets, segments, num_segments, baseline, blur_sigma,
    score, chunk_size: as for ``feature_ablation``.
    key: ``jax.random.key`` for the coalitions (not needed with
      ``all_coalitions``).
    samples: sampled coalitions (``samples + 2`` evaluations per image).
    all_coalitions: enumerate every coalition (``S <= 20``).

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed; constant on each segment.

  References:
    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions",
    NeurIPS 2017.
  """
  if all_coalitions:
    segments, num_segments = _check_segments(segments, x, num_segments)
    if num_segments > MAX_ENUMERATED_SEGMENTS:
      raise ValueError(
          f"all_coalitions evaluates 2^num_segments coalitions; "
          f"num_segments is {num_segments}, at most "
          f"{MAX_ENUMERATED_SEGMENTS} allowed (sample with samples=...)")
    key = jax.random.key(0)               # unused: the program is fixed
  else:
    core.check_positive("samples", samples)
    if key is None:
      raise ValueError("key must be a jax.random.key for sampled "
                       "coalitions (or pass all_coalitions=True)")
    segments, num_segments = _check_segments(segments, x, num_segments)
  return _kernel_shap(classifier, x, targets, segments=segments,
                      num_segments=num_segments, key=key, samples=samples,
                      all_coalitions=all_coalitions, baseline=baseline,
                      blur_sigma=blur_sigma, score=score,
                      chunk_size=chunk_size)


# --- LIME ---------------------------------------------------------------------


def cosine_similarity_weights(x: jax.Array, perturbed: jax.Array,
                              kernel_width: float) -> jax.Array:
  """LIME's sample weights (Captum's default similarity): ``[n, B]``.

  .. math:: w = \\exp\\big(-d^2 / (2 \\sigma^2)\\big), \\qquad
     d = 1 - \\cos(x, x(z))

  with the images flattened (all pixels and channels) and each norm
  clamped at ``1e-8``, as ``torch.nn.CosineSimilarity``.
  """
  flat_x = x.reshape(x.shape[0], -1)
  flat_p = perturbed.reshape(*perturbed.shape[:2], -1)
  norm_x = jnp.maximum(jnp.linalg.norm(flat_x, axis=-1), 1e-8)
  norm_p = jnp.maximum(jnp.linalg.norm(flat_p, axis=-1), 1e-8)
  cos = jnp.einsum("bd,nbd->nb", flat_x, flat_p) / (norm_x * norm_p)
  return jnp.exp(-((1 - cos) ** 2) / (2 * kernel_width ** 2))


def lime_solve(coalitions: jax.Array, weights: jax.Array,
               values: jax.Array, present: jax.Array,
               alpha: float) -> jax.Array:
  """LIME's surrogate: weighted ridge regression with intercept.

  .. math:: \\min_{\\beta, c} \\sum_i w_i (v(z_i) - c - z_i^\\top
     \\beta)^2 + \\alpha \\lVert\\beta\\rVert^2

  (scikit-learn's ``Ridge`` objective; the intercept ``c`` is not
  penalised: the data are centred with the weighted means). ``alpha = 0``
  is weighted least squares (minimum norm if rank-deficient). Returns
  ``beta [C', B, S]``, 0 on ids an image lacks.

  Args:
    coalitions: ``[n, B, S]`` boolean.
    weights: ``[n, B]``.
    values: ``[n, C', B]``.
    present: ``[B, S]``.
    alpha: ridge strength, ``>= 0``.
  """
  z = coalitions.astype(values.dtype) * present[None]
  total = jnp.maximum(weights.sum(0), 1e-30)                # [B]
  z_mean = jnp.einsum("nb,nbs->bs", weights, z) / total[:, None]
  v_mean = jnp.einsum("nb,ncb->cb", weights, values) / total[None]
  design = z - z_mean[None]
  rhs = values - v_mean[None]
  penalty = jnp.where(present, alpha, 1.0).astype(values.dtype)
  solve = jax.vmap(_weighted_lstsq, in_axes=(1, 2, 1, 0), out_axes=1)
  beta = solve(design, rhs, weights, penalty)               # [S, B, C']
  return jnp.moveaxis(beta, (0, 1, 2), (2, 1, 0)) * present[None]


@compiled
def _lime(classifier, x, targets, *, segments, num_segments, key, samples,
          alpha, kernel_width, baseline, blur_sigma, score, chunk_size):
  x, t, base = _prepare(classifier, x, targets, segments, num_segments,
                        baseline, blur_sigma, score)
  _, present = _num_players(segments, num_segments)
  z = _uniforms(key, jnp.arange(samples), num_segments) < 0.5     # [m, S]
  coalitions = z[:, None] & present[None]                        # [m, B, S]

  def run(zc):
    xs = _perturbed(x, base, zc, segments)
    w = cosine_similarity_weights(x, xs, kernel_width)
    v = _target_scores(classifier, xs, t.cotangents, score)
    return jnp.concatenate([w[:, None], v], axis=1)     # [c, 1 + C', B]

  out = core.chunked_map(run, coalitions,
                         core.points_per_pass(chunk_size, x.shape[0]))
  beta = lime_solve(coalitions, out[:, 0], out[:, 1:], present, alpha)
  return core.finish(_segment_maps(beta, segments), t)


def lime(classifier: Classifier, x: jax.Array, targets, *, key: jax.Array,
         samples: int = 256, alpha: float = 1.0, kernel_width: float = 1.0,
         segments=None, num_segments: int | None = None,
         baseline: jax.Array | float | str = 0.0, blur_sigma: float = 5.0,
         score: str = "logit", chunk_size: int = 64) -> jax.Array:
  """LIME: a weighted linear surrogate fitted to random coalitions.

  .. math:: \\min_{\\beta, c} \\sum_i w_i (v(z_i) - c - z_i^\\top
     \\beta)^2 + \\alpha \\lVert\\beta\\rVert^2, \\qquad
     w_i = \\exp\\Big(-\\frac{(1 - \\cos(x, x(z_i)))^2}{2 \\sigma^2}\\Big)

  Coalitions keep each segment with probability 1/2 (coalition ``i`` from
  ``fold_in(key, i)``); the weights are Captum's default similarity (an
  exponential kernel of the cosine distance between the flattened image and
  the perturbed one, width ``sigma = kernel_width = 1``). The surrogate is
  a closed-form weighted ridge regression with intercept solved on the
  device (``lime_solve``; ``alpha = 1`` is the ``Ridge(alpha=1)`` of the
  reference ``lime`` package), not Captum's default
  ``SkLearnLasso(alpha=0.01)``: the Lasso is iterative, runs on the host,
  and sets small coefficients exactly to 0, where the ridge shrinks all
  of them towards 0 (docs/comparators.md measures the difference).
  ``alpha=0`` is plain weighted least squares, Captum's
  ``SkLearnLinearRegression``.

  Args:
    classifier, x, targets, segments, num_segments, baseline, blur_sigma,
    score, chunk_size: as for ``feature_ablation``.
    key: ``jax.random.key``; the same key gives the same maps.
    samples: coalitions (``samples`` evaluations per image).
    alpha: ridge strength ``>= 0``.
    kernel_width: ``sigma`` of the similarity kernel, ``> 0``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed; constant on each segment.

  References:
    Ribeiro, Singh & Guestrin, "'Why Should I Trust You?': Explaining the
    Predictions of Any Classifier", KDD 2016.
  """
  core.check_positive("samples", samples)
  if not alpha >= 0:
    raise ValueError(f"alpha must be >= 0 (the ridge strength); got {alpha}")
  if not kernel_width > 0:
    raise ValueError(f"kernel_width must be > 0; got {kernel_width}")
  segments, num_segments = _check_segments(segments, x, num_segments)
  return _lime(classifier, x, targets, segments=segments,
               num_segments=num_segments, key=key, samples=samples,
               alpha=float(alpha), kernel_width=float(kernel_width),
               baseline=baseline, blur_sigma=blur_sigma, score=score,
               chunk_size=chunk_size)

