"""Optimisation attributions: Meaningful Perturbation and Extremal
Perturbations, each one jitted optimisation loop for the whole batch.

Both learn a mask per (image, explained class) by gradient descent through
the model: a ``lax.scan`` over the steps whose body runs one forward and
backward pass of all the masked inputs of the batch at once (``P = C' * B``
pairs, times the areas of Extremal Perturbations). Every loss is a sum of
per-pair terms and the optimisers act elementwise, so a pair's mask does
not depend on the other pairs: batched maps equal maps computed one image
at a time. Randomness (Meaningful Perturbation's jitter and mask noise) is
drawn per step from ``fold_in(key, step)`` and shared by all pairs, for the
same reason.

* ``meaningful_perturbation``: Fong & Vedaldi (ICCV 2017), with the
  defaults of the authors' released code (``perturb_explanations``,
  ``optimize_mask.py``): a ``H/8 x W/8`` mask, upsampled (nearest) and
  blurred (sigma 5) to the input size, blends the image with its blur
  (sigma 10); Adam (lr 0.1) minimises
  ``1e-4 ||1 - m||_1 + 1e-2 TV_3(m) + p_c(jittered blend)`` for 300 steps,
  the mask clipped to ``[0, 1]`` after each step; the initial mask is the
  smallest centred blurred disc whose deletion brings the class
  probability within 1 % of the largest disc's.
* ``extremal_perturbation``: Fong, Patrick & Vedaldi (ICCV 2019), as
  TorchRay's ``extremal_perturbation`` computes it: the smooth-max mask
  parameterisation (``step`` 7, ``sigma`` 21), the blur pyramid (8
  levels up to sigma 20) or fade, the rank-based area penalty whose weight
  grows 0.35 % per step from 300, SGD with momentum 0.9 and dampening 0.9
  at lr 0.01 for 800 steps, the horizontal flip of the masked input on
  even steps, the 'preserve' game and the plain logit reward.

Pixel sizes (mask step, blur sigmas) are the references' values for
224 x 224 inputs; scale them with the input for other sizes.

All blurs, upsamplings and their adjoints are products with small
``[H, H]`` and ``[W, W]`` matrices built once per shape (exact gradients,
any padding rule, no per-step convolution).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lapjax.attribution import core, loop_convs
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier

# TorchRay's extremal_perturbation constants (not arguments there either).
EP_LEARNING_RATE = 0.01
EP_MOMENTUM = 0.9              # SGD momentum, with dampening = momentum
EP_AREA_WEIGHT = 300.0         # initial weight of the area penalty
EP_AREA_GROWTH = 1.0035        # its factor per step
EP_COLDNESS = 20.0             # softmax pooling temperature of SmoothMask
EP_CONTRASTIVE_FLOOR = -100.0  # contrastive_reward's stand-in for the target
TIE_TOLERANCE = 1e-6           # mask values this close count as tied
# The authors' circular initialisation of Meaningful Perturbation.
MP_CIRCLE_RADII = tuple(range(0, 175, 5))   # pixels at 224 x 224
MP_CIRCLE_THRESHOLD = 1e-2     # remaining fraction of the class score
MP_REFERENCE_SIDE = 224
_F32_EPS = float(np.finfo(np.float32).eps)


# -- linear image operators as matrices ---------------------------------------

def _reflect(j: np.ndarray, n: int) -> np.ndarray:
  """Half-sample symmetric indices (scipy's 'reflect'), any distance."""
  j = np.mod(j, 2 * n)
  return np.where(j >= n, 2 * n - 1 - j, j)


def _filter_matrix(n: int, taps: np.ndarray, padding: str) -> np.ndarray:
  """``[n, n]`` matrix of a centred 1-D filter: ``out = M @ in``.

  ``padding``: 'zero' (outside pixels are 0), 'edge' (the border pixel
  repeats) or 'reflect' (half-sample symmetric).
  """
  width = len(taps) // 2
  rows = np.repeat(np.arange(n), len(taps))
  cols = (np.arange(n)[:, None] + np.arange(-width, width + 1)[None]).ravel()
  weights = np.tile(np.asarray(taps, np.float64), n)
  if padding == "zero":
    keep = (cols >= 0) & (cols < n)
    rows, cols, weights = rows[keep], cols[keep], weights[keep]
  elif padding == "edge":
    cols = np.clip(cols, 0, n - 1)
  elif padding == "reflect":
    cols = _reflect(cols, n)
  else:
    raise ValueError(f"unknown padding {padding!r}")
  m = np.zeros((n, n))
  np.add.at(m, (rows, cols), weights)
  return m


def gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised Gaussian ``exp(-i^2 / (2 sigma^2))``, ``|i| <=
  int(truncate * sigma + 0.5)`` (scipy.ndimage's kernel); ``[1]`` at
  sigma 0."""
  if sigma <= 0:
    return np.ones(1)
  width = int(truncate * sigma + 0.5)
  taps = np.exp(-0.5 * (np.arange(-width, width + 1) / sigma) ** 2)
  return taps / taps.sum()


def torchray_taps(sigma: float) -> np.ndarray:
  """TorchRay's ``imsmooth`` kernel, float32 as it computes it:
  ``exp(-(i / (sqrt(2) sigma + eps))^2)``, ``|i| <= ceil(4 sigma)``,
  normalised; ``[1]`` at sigma 0."""
  sigma = np.float32(sigma)
  width = math.ceil(4 * sigma)
  i = np.arange(-width, width + 1, dtype=np.float32)
  t = i / (np.float32(np.sqrt(2.0)) * sigma + np.float32(_F32_EPS))
  taps = np.exp(-t * t)
  return (taps / taps.sum()).astype(np.float64)


def _separable(images: jax.Array, rows: np.ndarray, cols: np.ndarray
               ) -> jax.Array:
  """``rows @ image @ cols^T`` per channel: ``[..., H, W, C] ->
  [..., H', W', C]``."""
  return jnp.einsum("hi,...ijc,wj->...hwc", jnp.asarray(rows, jnp.float32),
                    images, jnp.asarray(cols, jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def _blur_images(x: jax.Array, taps: np.ndarray, padding: str) -> jax.Array:
  h, w = x.shape[-3:-1]
  return _separable(x, _filter_matrix(h, taps, padding),
                    _filter_matrix(w, taps, padding))


# -- Extremal Perturbations: TorchRay's pieces ---------------------------------

class SmoothMask(NamedTuple):
  """Geometry of TorchRay's ``MaskGenerator`` for one input shape.

  A parameter grid ``[h_in, w_in]`` (one value every ``step`` pixels) becomes
  a smooth mask: pixel ``u`` takes the softmax-pooled (coldness 20) maximum
  over the ``(2 radius + 1)^2`` nearest parameters ``p_k`` of
  ``p_k * exp(-2 max(d_k / sigma - 1/2, 0)^2)`` (``d_k``: distance to
  parameter ``k``'s centre), clamped to ``[0, 1]``; the full mask has a
  margin of ``sigma`` pixels (``shape_out``), the cropped one the input's
  shape.
  """
  shape: tuple[int, int]
  step: int
  sigma: float
  padding: int
  radius: int
  shape_in: tuple[int, int]
  shape_mid: tuple[int, int]
  shape_out: tuple[int, int]
  margin: int
  weight: np.ndarray          # [(2 radius + 1)^2, *shape_out] float32
  blocks: np.ndarray          # the same as [I, r, J, s, k] (_block_weight)


@functools.lru_cache(maxsize=16)
def smooth_mask_geometry(shape: tuple[int, int], step: int,
                         sigma: float) -> SmoothMask:
  """``SmoothMask`` for input ``shape`` (TorchRay's arithmetic)."""
  margin = sigma
  padding = 1 + math.ceil((margin + sigma) / step)
  radius = 1 + math.ceil(sigma / step)
  shape_in = tuple(math.ceil(z / step) for z in shape)
  shape_mid = tuple(z + 2 * padding - (2 * radius + 1) + 1 for z in shape_in)
  shape_up = tuple(step * z for z in shape_mid)
  shape_out = tuple(z - step + 1 for z in shape_up)
  k = 2 * radius + 1
  step_inv = [np.float32(zm) / np.float32(zo)
              for zm, zo in zip(shape_mid, shape_up)]
  uy, ux = np.meshgrid(np.arange(shape_out[0], dtype=np.float32),
                       np.arange(shape_out[1], dtype=np.float32),
                       indexing="ij")
  weight = np.zeros((k * k, *shape_out), np.float32)
  for ky in range(k):
    for kx in range(k):
      iy = np.floor(step_inv[0] * uy) + ky - padding
      ix = np.floor(step_inv[1] * ux) + kx - padding
      delta = np.sqrt((uy - (margin + step * iy)) ** 2
                      + (ux - (margin + step * ix)) ** 2)
      z = np.maximum(delta / np.float32(sigma) - 0.5, 0)
      weight[ky * k + kx] = np.exp(-2 * z * z)
  return SmoothMask(tuple(shape), step, sigma, padding, radius, shape_in,
                    shape_mid, shape_out, round(margin), weight,
                    _block_weight(weight, step, shape_mid))


def _clamp01(m: jax.Array) -> jax.Array:
  """``clamp(m, 0, 1)`` with PyTorch's gradient (1 on the closed
  interval, 0 outside; ``jnp.clip`` halves it at the bounds)."""
  return jnp.where(m < 0, 0.0, jnp.where(m > 1, 1.0, m))


def _pool_terms(windows: jax.Array, blocks: jax.Array):
  """The products ``m = w * p`` ``[..., I, r, J, s, k]`` of the parameters
  ``windows [..., I, J, k]`` with the kernel ``blocks [I, r, J, s, k]``,
  and ``e = exp(20 (m - top))`` with ``top`` the largest parameter of the
  cell (``[..., I, J]``: the softmax's shift, a per-cell constant computed
  on the small array; with parameters in ``[0, 1]`` and ``0 < w <= 1``,
  ``-1 <= m - top <= 0``: no overflow, no underflow). The coldness
  multiplies the small arrays, not the ``[.., 81]`` products (a scalar
  there would be broadcast to their full size in memory by XLA:CPU)."""
  top = jax.lax.stop_gradient(jnp.max(windows, axis=-1))
  m = blocks * windows[..., :, None, :, None, :]
  e = jnp.exp(blocks * (EP_COLDNESS * windows)[..., :, None, :, None, :]
              - (EP_COLDNESS * top)[..., :, None, :, None, None])
  return m, e


@jax.custom_vjp
def _window_softmax_pool(windows: jax.Array, blocks: jax.Array
                         ) -> jax.Array:
  """``sum_k m_k softmax(20 m)_k`` with ``m = blocks * windows`` broadcast
  to ``[..., I, r, J, s, k]``: ``[..., I, r, J, s]``."""
  return _window_softmax_pool_fwd(windows, blocks)[0]


def _window_softmax_pool_fwd(windows, blocks):
  # Two plain sums over the [.., 81] products; only the small inputs and
  # the per-pixel sums are kept for the backward pass. (A two-output
  # `lax.reduce` of both sums at once ran 1.6x slower on XLA:CPU.)
  m, e = _pool_terms(windows, blocks)
  total = jnp.sum(e, axis=-1)
  pooled = jnp.sum(m * e, axis=-1) / total
  return pooled, (windows, blocks, total, pooled)


def _window_softmax_pool_bwd(res, g):
  # d pooled / d m_k = p_k (1 + 20 (m_k - pooled)) with p = e / total, and
  # d m_k / d window_k = w_k summed over the cell's pixels (r, s): the
  # softmax weights recomputed in one fused reduction to the small
  # [..., I, J, k] array. The barrier keeps XLA from merging this
  # recomputation with the forward pass's (which would write the [.., 81]
  # products and exponentials to memory for both passes to read).
  windows, blocks, total, pooled = jax.lax.optimization_barrier(res)
  m, e = _pool_terms(windows, blocks)
  a = g / total
  b = a * (1 - EP_COLDNESS * pooled)
  terms = e * blocks * (b[..., None] + (EP_COLDNESS * a)[..., None] * m)
  return jnp.sum(terms, axis=(-4, -2)), None


_window_softmax_pool.defvjp(_window_softmax_pool_fwd,
                            _window_softmax_pool_bwd)


def smooth_mask(params: jax.Array, geometry: SmoothMask
                ) -> tuple[jax.Array, jax.Array]:
  """Masks from parameters ``[..., h_in, w_in]`` in ``[0, 1]``.

  Output pixel ``(step I + r, step J + s)`` reads the ``(2 radius + 1)^2``
  parameters around ``(I, J)`` (TorchRay's unfold and nearest upsampling),
  so the products with the kernel weights are one broadcast
  ``[..., I, r, J, s, k]``, pooled over ``k`` (a custom VJP: the backward
  pass recomputes the products and reduces them to the parameters'
  windows in one pass).

  Returns:
    ``(cropped [..., H, W], full [..., *shape_out])``, both in ``[0, 1]``.
  """
  g = geometry
  k = 2 * g.radius + 1
  pad = [(0, 0)] * (params.ndim - 2) + [(g.padding, g.padding)] * 2
  padded = jnp.pad(params, pad)
  hm, wm = g.shape_mid
  windows = jnp.stack([padded[..., ky:ky + hm, kx:kx + wm]
                       for ky in range(k) for kx in range(k)], axis=-1)
  pooled = _window_softmax_pool(windows, jnp.asarray(g.blocks))
  pooled = pooled.reshape(*params.shape[:-2], hm * g.step, wm * g.step)
  full = _clamp01(pooled[..., :g.shape_out[0], :g.shape_out[1]])
  cropped = full[..., g.margin:g.margin + g.shape[0],
                 g.margin:g.margin + g.shape[1]]
  return cropped, full


def _block_weight(weight: np.ndarray, step: int,
                  shape_mid: tuple[int, int]) -> np.ndarray:
  """``weight`` as ``[I, r, J, s, k]`` blocks (zero past ``shape_out``)."""
  k2, h_out, w_out = weight.shape
  hm, wm = shape_mid
  out = np.zeros((hm * step, wm * step, k2), np.float32)
  out[:h_out, :w_out] = np.moveaxis(weight, 0, -1)
  return out.reshape(hm, step, wm, step, k2)


def area_reference(num_pixels: int, area: float) -> np.ndarray:
  """TorchRay's sorted target mask: ``int(N (1 - area))`` zeros, then
  ones (``[N]`` float32)."""
  ref = np.ones(num_pixels, np.float32)
  ref[:int(num_pixels * (1 - area))] = 0
  return ref


def _sorted(values: jax.Array) -> jax.Array:
  """``jnp.sort(values, axis=-1)`` through integer keys (XLA:CPU sorts
  int32 several times faster than float32, whose comparator orders NaNs):
  a float's bits, with the magnitude bits of negatives flipped, order like
  the floats (-0 just before +0)."""
  int_type = np.dtype(f"int{8 * values.dtype.itemsize}")
  sign, magnitude = 8 * int_type.itemsize - 1, np.iinfo(int_type).max

  def flip(bits):                          # an involution: it also inverts
    return bits ^ ((bits >> sign) & magnitude)

  keys = jax.lax.sort(flip(jax.lax.bitcast_convert_type(values, int_type)),
                      dimension=values.ndim - 1)
  return jax.lax.bitcast_convert_type(flip(keys), values.dtype)


def _tie_averaged(flat: jax.Array, sorted_m: jax.Array,
                  reference: jax.Array) -> jax.Array:
  """The sorted 0/1 ``reference`` at each value of ``flat [..., N]``,
  averaged over its run of tied values (neighbours in ``sorted_m`` within
  ``TIE_TOLERANCE``): ``[..., N]`` in the order of ``flat``.

  The reference is ``z`` zeros then ones, so only the run holding sorted
  position ``z - 1`` (the last zero) can straddle it; every value below
  that run gets 0, above it 1, inside it the run's share of ones.
  """
  n = sorted_m.shape[-1]
  pos = jnp.arange(n)
  gaps = jnp.diff(sorted_m, axis=-1) > TIE_TOLERANCE
  edge = jnp.ones((*gaps.shape[:-1], 1), bool)
  starts = jnp.concatenate([edge, gaps], axis=-1)
  ends = jnp.concatenate([gaps, edge], axis=-1)
  zeros = n - jnp.sum(reference, axis=-1, keepdims=True)
  last_zero = jnp.clip(zeros - 1, 0, n - 1).astype(jnp.int32)
  lo = jnp.max(jnp.where(starts & (pos <= last_zero), pos, 0), axis=-1,
               keepdims=True)
  hi = jnp.min(jnp.where(ends & (pos >= last_zero), pos + 1, n), axis=-1,
               keepdims=True)
  share = (jnp.maximum(hi, zeros) - jnp.maximum(lo, zeros)) / (hi - lo)
  low = jnp.take_along_axis(sorted_m, lo, axis=-1)
  high = jnp.take_along_axis(sorted_m, hi - 1, axis=-1)
  return jnp.where(flat < low, 0.0, jnp.where(flat > high, 1.0, share))


def area_penalty(full: jax.Array, reference: jax.Array) -> jax.Array:
  """``mean((sort(m) - r_a)^2)`` per mask: ``[..., h, w] -> [...]``, with
  ``reference`` ``[..., h * w]`` from ``area_reference``.

  Its gradient, ``2 (m_i - r_a(rank i)) / N``, averages ``r_a`` over tied
  mask values (within ``TIE_TOLERANCE``), so it does not depend on the
  order a sort gives them: the all-ones start is full of ties, and float
  rounding (which differs with the batch size) would otherwise pick the
  order. The sort is not differentiated: each value's averaged reference
  is read back by value (``_tie_averaged``).
  """
  flat = full.reshape(*full.shape[:-2], -1)
  s = _sorted(jax.lax.stop_gradient(flat))
  value = jnp.mean((s - reference) ** 2, axis=-1)
  averaged = jax.lax.stop_gradient(_tie_averaged(flat, s, reference))
  smooth = jnp.mean((flat - averaged) ** 2, axis=-1)
  return value + smooth - jax.lax.stop_gradient(smooth)


def perturbation_pyramid(x: jax.Array, *, num_levels: int, max_blur: float,
                         perturbation: str) -> jax.Array:
  """``[B, L, H, W, C]``: level ``l`` is ``x`` blurred with sigma
  ``max_blur (1 - l / (L - 1))`` (TorchRay's ``imsmooth``, zero padding) or
  faded to ``x l / (L - 1)``; the last level is ``x``."""
  levels = np.linspace(0, 1, num_levels, dtype=np.float32)
  out = []
  for s in levels:
    if perturbation == "blur":
      out.append(_blur_images(
          x, torchray_taps((np.float32(1) - s) * np.float32(max_blur)),
          "zero"))
    else:
      out.append(x * jnp.float32(s))
  return jnp.stack(out, axis=1)


def apply_pyramid(pyramid: jax.Array, mask: jax.Array) -> jax.Array:
  """Pyramid ``[P, L, H, W, C]`` read at level ``mask (L - 1)``, linearly
  interpolated between levels: ``[P, H, W]`` masks in ``[0, 1]`` ->
  ``[P, H, W, C]`` (1: the input, 0: the strongest perturbation).

  TorchRay's gather of levels ``floor`` and ``floor + 1`` (capped at the
  last), written as a weighted sum over the levels (no gather).
  """
  levels = pyramid.shape[1]
  w = mask * (levels - 1)
  k = jax.lax.stop_gradient(jnp.floor(w))
  frac = w - k
  index = jnp.arange(levels)[:, None, None]
  lower = (k[:, None] == index).astype(w.dtype)                # [P, L, H, W]
  upper = (jnp.minimum(k + 1, levels - 1)[:, None] == index).astype(w.dtype)
  coef = (1 - frac)[:, None] * lower + frac[:, None] * upper
  return jnp.einsum("plhw,plhwc->phwc", coef, pyramid,
                    precision=jax.lax.Precision.HIGHEST)


def _rewards(logits: jax.Array, cot: jax.Array, reward: str) -> jax.Array:
  """``[N, K]`` logits, ``[N, K]`` cotangents -> ``[N]``."""
  score = jnp.sum(logits * cot, axis=-1)
  if reward == "simple":
    return score
  others = jnp.where(cot != 0, EP_CONTRASTIVE_FLOOR, logits)
  return score - jnp.maximum(jnp.max(others, axis=-1),
                             EP_CONTRASTIVE_FLOOR)


def _area_weights(steps: int) -> np.ndarray:
  """``300 * 1.0035^t``, multiplied step by step in float64 as TorchRay."""
  out = np.empty(steps)
  w = EP_AREA_WEIGHT
  for t in range(steps):
    out[t] = w
    w *= EP_AREA_GROWTH
  return out.astype(np.float32)


def _check_areas(areas) -> tuple[float, ...]:
  if isinstance(areas, (int, float)):
    areas = (areas,)
  areas = tuple(float(a) for a in areas)
  if not areas:
    raise ValueError("areas must hold at least one area in (0, 1); got ()")
  for a in areas:
    if not 0 < a < 1:
      raise ValueError(f"areas must be fractions of the image in (0, 1); "
                       f"got {areas}")
  return areas


def _check_choice(name: str, value, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")


@compiled
def extremal_perturbation(classifier: Classifier, x: jax.Array, targets, *,
                          areas: Sequence[float] = (0.1,), steps: int = 800,
                          perturbation: str = "blur", num_levels: int = 8,
                          max_blur: float = 20.0, step: int = 7,
                          sigma: float = 21.0, jitter: bool = True,
                          variant: str = "preserve",
                          reward: str = "simple", smooth: float = 0.0,
                          combine: str = "sum",
                          initial_params: jax.Array | None = None,
                          chunk_size: int | None = None) -> jax.Array:
  """Extremal Perturbations: the mask of a given area that best preserves
  (or deletes) the class evidence.

  For each area ``a`` a smooth mask ``m = S(p)`` (``SmoothMask``, one
  parameter every ``step`` pixels) solves

  .. math::

    \\max_p \\; \\Phi_c(\\mathrm{perturb}(x; m)) - \\lambda_t
    \\lVert \\mathrm{vecsort}(m) - r_a \\rVert^2 / N

  where ``perturb`` reads a pyramid of increasingly blurred (or faded)
  copies of ``x`` at level ``m`` (1 keeps the input), ``r_a`` is
  ``(1 - a) N`` zeros then ``a N`` ones (``N`` pixels of the mask with its
  margin), ``lambda_t = 300 * 1.0035^t`` and ``Phi_c`` is the class logit
  (``reward='simple'``) or the logit minus the largest other logit
  (``'contrastive'``). The optimiser is TorchRay's: SGD, lr 0.01, momentum
  0.9 with dampening 0.9, parameters initialised to 1 and clamped to
  ``[0, 1]`` after every step; with ``jitter`` the masked input is flipped
  left-right on even steps. ``'delete'`` perturbs where the mask is 1 and
  minimises the reward; ``'dual'`` rewards the preserved minus the deleted
  input. The result is the mask of the last step (before its update), as
  TorchRay returns it: 1 marks the evidence in every variant.

  One deliberate difference: the all-ones start gives a mask with many
  equal values, and the area penalty's gradient depends on which sorted
  position each tied value takes. TorchRay leaves that to PyTorch's
  unstable CPU sort (its own runs with a stable sort end up to 0.99 apart
  on the test fixture, docs/comparators.md); lapjax averages the reference
  over tied values (``area_penalty``), so the maps do not depend on the
  batch, the chunking or float rounding. From a start without ties
  lapjax follows TorchRay to 2e-6 (``initial_params``; the test fixture).

  Args:
    classifier: the model (logits).
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float (the reward is
      ``cot . logits``; the contrastive reward subtracts the largest logit
      among the classes of zero weight).
    areas: target areas, fractions in ``(0, 1)``.
    steps: optimiser steps (TorchRay's ``max_iter``).
    perturbation: ``'blur'`` or ``'fade'`` (to zero).
    num_levels: pyramid levels.
    max_blur: sigma of the most blurred level, pixels.
    step: mask parameter spacing, pixels.
    sigma: mask smoothness, pixels.
    jitter: flip the masked input left-right on even steps.
    variant: ``'preserve'``, ``'delete'`` or ``'dual'``.
    reward: ``'simple'`` or ``'contrastive'``.
    smooth: if > 0, blur the final masks with sigma ``smooth * min(H, W)``
      (zero padding; TorchRay's benchmark uses 0.09).
    combine: ``'sum'``: the sum of the masks over ``areas`` (TorchRay's
      benchmark saliency; the mask itself for one area); ``'stack'``: keep
      an area axis.
    initial_params: starting mask parameters in ``[0, 1]``, ``[B, A,
      h_in, w_in]`` (``[B, C', A, h_in, w_in]`` for ``[B, C']`` targets;
      ``(h_in, w_in) = ceil((H, W) / step)``); None: all ones (TorchRay).
    chunk_size: at most this many masked images per forward pass: pairs
      are optimised in groups, one loop per group (None: one loop for the
      whole batch). Results do not depend on it.

  Returns:
    ``[B, H, W]`` (``[B, C', H, W]`` for ``[B, C']`` targets); with
    ``combine='stack'`` an area axis ``A`` follows: ``[B, A, H, W]`` or
    ``[B, C', A, H, W]``. Values in ``[0, 1]`` per area.

  References:
    Fong, Patrick & Vedaldi, "Understanding Deep Networks via Extremal
    Perturbations and Smooth Masks", ICCV 2019; TorchRay
    (``torchray.attribution.extremal_perturbation``).
  """
  x, t = core.prepare(classifier, x, targets)
  areas = _check_areas(areas)
  core.check_positive("steps", steps)
  core.check_positive("step", step)
  if num_levels < 2:
    raise ValueError(f"num_levels must be >= 2; got {num_levels}")
  for name, value in (("sigma", sigma), ("max_blur", max_blur)):
    if not value > 0:
      raise ValueError(f"{name} must be > 0; got {value}")
  if not smooth >= 0:
    raise ValueError(f"smooth must be >= 0; got {smooth}")
  _check_choice("perturbation", perturbation, ("blur", "fade"))
  _check_choice("variant", variant, ("preserve", "delete", "dual"))
  _check_choice("reward", reward, ("simple", "contrastive"))
  _check_choice("combine", combine, ("sum", "stack"))
  b, h, w = x.shape[:3]
  n_cls, n_areas = t.cotangents.shape[0], len(areas)
  geometry = smooth_mask_geometry((h, w), int(step), float(sigma))
  pyramid = perturbation_pyramid(x, num_levels=num_levels,
                                 max_blur=max_blur,
                                 perturbation=perturbation)
  # Pairs in (class, image, area) order.
  pairs = n_cls * b * n_areas
  image_of = np.tile(np.repeat(np.arange(b), n_areas), n_cls)
  cot = jnp.repeat(t.cotangents.reshape(n_cls * b, -1), n_areas, axis=0)
  n_full = geometry.shape_out[0] * geometry.shape_out[1]
  refs = np.tile(np.stack([area_reference(n_full, a) for a in areas]),
                 (n_cls * b, 1))
  params0 = _initial_params(initial_params, t, b, n_areas,
                            geometry.shape_in)
  per_loop = pairs if chunk_size is None else max(
      1, core.points_per_pass(chunk_size, 2 if variant == "dual" else 1))

  def optimise(idx):                            # [n] pair indices -> masks
    return _ep_loop(classifier, pyramid[jnp.asarray(image_of)[idx]],
                    cot[idx], jnp.asarray(refs)[idx], params0[idx],
                    geometry=geometry, steps=steps, jitter=jitter,
                    variant=variant, reward=reward)

  if per_loop >= pairs:
    masks = optimise(jnp.arange(pairs))
  else:
    masks = core.chunked_map(optimise, jnp.arange(pairs), per_loop)
  if smooth > 0:
    taps = torchray_taps(smooth * min(h, w))
    masks = _blur_images(masks[..., None], taps, "zero")[..., 0]
  masks = masks.reshape(n_cls, b, n_areas, h, w)
  if combine == "sum":
    masks = masks.sum(axis=2)
  return core.finish(masks, t)


def _initial_params(params, t: core.Targets, b: int, n_areas: int,
                    shape_in: tuple[int, int]) -> jax.Array:
  """``[P, h_in, w_in]`` start parameters in (class, image, area) order."""
  n_cls = t.cotangents.shape[0]
  if params is None:
    return jnp.ones((n_cls * b * n_areas, *shape_in), jnp.float32)
  params = jnp.asarray(params, jnp.float32)
  expected = ((b, n_cls, n_areas) if t.multi else (b, n_areas)) + tuple(
      shape_in)
  if params.shape != expected:
    raise ValueError(f"initial_params must have shape {expected} (batch, "
                     f"{'classes, ' if t.multi else ''}areas, "
                     f"ceil(H / step), ceil(W / step)); got {params.shape}")
  if t.multi:
    params = jnp.moveaxis(params, 1, 0)
  return params.reshape(-1, *shape_in)


def _ep_loop(classifier: Classifier, pyramid: jax.Array, cot: jax.Array,
             refs: jax.Array, params: jax.Array, *, geometry: SmoothMask,
             steps: int, jitter: bool, variant: str, reward: str
             ) -> jax.Array:
  """TorchRay's optimisation for ``n`` pairs: pyramids ``[n, L, H, W,
  C]``, cotangents ``[n, K]``, area references ``[n, N]``, start
  parameters ``[n, h_in, w_in]`` -> the masks of the last step ``[n, H,
  W]``."""
  n = pyramid.shape[0]
  sign = -1.0 if variant == "delete" else 1.0

  def energy(params, flip, area_weight):
    cropped, full = smooth_mask(params, geometry)
    if variant == "dual":
      xs = jnp.concatenate([apply_pyramid(pyramid, cropped),
                            apply_pyramid(pyramid, 1 - cropped)])
      cots = jnp.concatenate([cot, cot])
    elif variant == "delete":
      xs, cots = apply_pyramid(pyramid, 1 - cropped), cot
    else:
      xs, cots = apply_pyramid(pyramid, cropped), cot
    xs = jnp.where(flip, xs[:, :, ::-1], xs)
    r = _rewards(classifier.apply(xs)[0], cots, reward)
    if variant == "dual":
      r = r[:n] - r[n:]
    else:
      r = sign * r
    regul = -area_penalty(full, refs) * area_weight
    return -jnp.sum(r + regul), cropped

  grad = loop_convs.canonical_convs(jax.grad(energy, has_aux=True))

  def body(carry, xs):
    params, velocity = carry
    step_index, area_weight = xs
    flip = jitter & (step_index % 2 == 0)
    g, cropped = grad(params, flip, area_weight)
    # torch.optim.SGD(momentum=0.9, dampening=0.9): the first step's buffer
    # is the gradient itself.
    velocity = jnp.where(step_index == 0, g,
                         EP_MOMENTUM * velocity + (1 - EP_MOMENTUM) * g)
    params = jnp.clip(params - EP_LEARNING_RATE * velocity, 0.0, 1.0)
    return (params, velocity), cropped

  weights = jnp.asarray(_area_weights(steps))

  def scan_body(carry, xs):
    carry, cropped = body(carry[:2], xs)
    return (*carry, cropped), None

  init = (params, jnp.zeros_like(params),
          jnp.zeros((n, *geometry.shape), jnp.float32))
  (_, _, last), _ = jax.lax.scan(scan_body, init,
                                 (jnp.arange(steps), weights))
  return last


# -- Meaningful Perturbation ---------------------------------------------------

def _nearest_up(n: int, scale: int, size: int) -> np.ndarray:
  """``[size, n]`` nearest upsampling by ``scale``, cropped to ``size``."""
  m = np.zeros((size, n))
  m[np.arange(size), np.arange(size) // scale] = 1
  return m


def mask_upsampler(shape: tuple[int, int], mask_scale: int,
                   mask_blur: float) -> tuple[np.ndarray, np.ndarray]:
  """Row and column matrices ``(U_h [H, h], U_w [W, w])`` of Meaningful
  Perturbation's mask operator ``M(m) = U_h m U_w^T``: nearest upsampling
  by ``mask_scale`` (cropped to the input), then a Gaussian blur with sigma
  ``mask_blur`` (edge padding, as PIL's)."""
  out = []
  for size in shape:
    n = -(-size // mask_scale)
    up = _nearest_up(n, mask_scale, size)
    out.append(_filter_matrix(size, gaussian_taps(mask_blur), "edge") @ up)
  return tuple(out)


def total_variation(m: jax.Array, beta: float) -> jax.Array:
  """``sum_u (|d_y m(u)|^2 + |d_x m(u)|^2)^(beta / 2)`` over ``[..., h,
  w]`` masks with forward differences (0 past the last row / column), as
  the authors' ``tv``; gradient 0 where both differences vanish."""
  dy = jnp.zeros_like(m).at[..., :-1, :].set(m[..., 1:, :] - m[..., :-1, :])
  dx = jnp.zeros_like(m).at[..., :, :-1].set(m[..., :, 1:] - m[..., :, :-1])
  s = dy * dy + dx * dx
  safe = jnp.where(s > 0, s, 1.0)
  return jnp.sum(jnp.where(s > 0, safe ** (beta / 2), 0.0), axis=(-2, -1))


def _scores(logits: jax.Array, cot: jax.Array, score: str) -> jax.Array:
  if score == "prob":
    logits = jax.nn.softmax(logits)
  return jnp.sum(logits * cot, axis=-1)


def circle_masks(shape: tuple[int, int], sigma: float) -> np.ndarray:
  """``[R, H, W]``: 1 minus a centred disc blurred with ``sigma``
  (scipy's reflect padding), for the authors' radii scaled from 224
  pixels to ``min(H, W)``: the candidate initial masks."""
  h, w = shape
  scale = min(h, w) / MP_REFERENCE_SIDE
  yc, xc = h // 2, w // 2
  y = np.arange(h)[:, None] - yc
  xx = np.arange(w)[None, :] - xc
  taps = gaussian_taps(sigma)
  rows = _filter_matrix(h, taps, "reflect")
  cols = _filter_matrix(w, taps, "reflect")
  out = []
  for r in MP_CIRCLE_RADII:
    disc = (y * y + xx * xx <= (r * scale) ** 2).astype(np.float64)
    out.append(1 - rows @ disc @ cols.T)
  return np.stack(out).astype(np.float32)


def _downsample_nearest(masks: jax.Array, size: tuple[int, int]
                        ) -> jax.Array:
  """``[..., H, W] -> [..., h, w]`` sampling pixel centres (PIL nearest)."""
  h, w = masks.shape[-2:]
  rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int),
                    h - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int),
                    w - 1)
  return masks[..., rows, :][..., cols]


@compiled
def meaningful_perturbation(classifier: Classifier, x: jax.Array, targets,
                            *, key: jax.Array | None = None,
                            steps: int = 300, learning_rate: float = 0.1,
                            l1: float = 1e-4, tv: float = 1e-2,
                            tv_beta: float = 3.0, mask_scale: int = 8,
                            mask_blur: float = 5.0, blur_sigma: float = 10.0,
                            baseline: jax.Array | float | str = "blur",
                            jitter: int = 4, mask_noise: float = 0.0,
                            init: float | str = "circle",
                            variant: str = "deletion", score: str = "prob",
                            chunk_size: int = 64) -> jax.Array:
  """Meaningful Perturbation: the smallest smooth region whose blurring
  deletes the class evidence (or that alone preserves it).

  A low-resolution mask ``m`` (one value per ``mask_scale`` pixels) gives
  ``M(m)``: ``m`` upsampled (nearest) and blurred with ``mask_blur``; the
  perturbed input blends the image with its blur (or ``baseline``),
  ``Phi(x; m) = x M(m) + blur(x) (1 - M(m))``. The deletion game solves

  .. math::

    \\min_{m \\in [0, 1]} \\; \\lambda_1 \\lVert 1 - m \\rVert_1 +
    \\lambda_{TV} \\sum_u \\lVert \\nabla m(u) \\rVert_2^{\\beta} +
    f_c(\\Phi(x(\\cdot - \\tau); m))

  (``f_c``: the class probability, ``score='prob'``, or logit); the
  preservation game uses ``lambda_1 ||m||_1`` and ``-f_c``. Each step
  draws a jitter ``tau`` in ``[0, jitter)^2`` (the image and its blur,
  resized to ``(H + jitter, W + jitter)``, cropped at ``tau``, as the
  authors' code does) and, with ``mask_noise``, Gaussian noise added to
  ``m`` before it is clipped and applied. Adam (lr 0.1, betas 0.9, 0.999,
  eps 1e-8) updates ``m``, clipped to ``[0, 1]`` after each step.
  ``init='circle'`` starts from the authors' mask: the smallest centred
  blurred disc (radii 0, 5, ..., 170 pixels at 224, blurred with
  ``blur_sigma``) whose deletion brings the class probability within 1 %
  (of the original's drop) of the largest disc's; a number starts from
  that constant.

  Returns the saliency of the final mask at input resolution: ``1 - M(m)``
  for deletion (1: deleted, the evidence), ``M(m)`` for preservation.

  Differences from the authors' code: exact gradients through the mask
  blur (theirs skip its adjoint), the float mask not quantised to 8 bits
  by the blur, the initial disc mask not min-max rescaled.

  Args:
    classifier: the model (logits).
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    key: ``jax.random.key`` for the jitter and the mask noise (required
      when ``jitter > 0`` or ``mask_noise > 0``); step ``t`` draws from
      ``fold_in(key, t)``, shared by the whole batch.
    steps: Adam steps.
    learning_rate: Adam's learning rate.
    l1: weight of the L1 term (a sum over the low-resolution mask).
    tv: weight of the total-variation term (a sum).
    tv_beta: its exponent.
    mask_scale: input pixels per mask value.
    mask_blur: sigma of the upsampled mask's blur, pixels (0: none).
    blur_sigma: sigma of the image's blur, pixels (edge padding).
    baseline: what the mask blends in: ``'blur'`` (the paper's) or a
      number or array broadcast to ``x`` (e.g. 0 for black images in
      ``[0, 1]``; ``core.baseline_images``).
    jitter: largest shift + 1, pixels (0: none).
    mask_noise: standard deviation of the noise added to the mask.
    init: ``'circle'`` or a constant in ``[0, 1]``.
    variant: ``'deletion'`` or ``'preservation'``.
    score: ``'prob'`` or ``'logit'``.
    chunk_size: images per forward pass of the circle search (``R = 35``
      discs per pair).

  Returns:
    ``[B, H, W]`` (``[B, C', H, W]`` for ``[B, C']`` targets) in ``[0,
    1]``.

  References:
    Fong & Vedaldi, "Interpretable Explanations of Black Boxes by
    Meaningful Perturbation", ICCV 2017; the authors' code
    (github.com/ruthcfong/perturb_explanations, ``optimize_mask.py``).
  """
  x, t = core.prepare(classifier, x, targets)
  core.check_positive("steps", steps)
  core.check_positive("mask_scale", mask_scale)
  if int(jitter) != jitter or jitter < 0:
    raise ValueError(f"jitter must be an integer >= 0 (pixels); got "
                     f"{jitter}")
  for name, value in (("learning_rate", learning_rate), ("tv_beta", tv_beta),
                      ("blur_sigma", blur_sigma)):
    if not value > 0:
      raise ValueError(f"{name} must be > 0; got {value}")
  for name, value in (("l1", l1), ("tv", tv), ("mask_blur", mask_blur),
                      ("mask_noise", mask_noise)):
    if not value >= 0:
      raise ValueError(f"{name} must be >= 0; got {value}")
  _check_choice("variant", variant, ("deletion", "preservation"))
  _check_choice("score", score, ("prob", "logit"))
  if isinstance(init, str):
    _check_choice("init", init, ("circle",))
  elif not 0 <= init <= 1:
    raise ValueError(f"init must be 'circle' or a number in [0, 1]; got "
                     f"{init}")
  if key is None and (jitter > 0 or mask_noise > 0):
    raise ValueError("key is required when jitter > 0 or mask_noise > 0 "
                     "(pass key=jax.random.key(seed), or jitter=0 and "
                     "mask_noise=0)")
  b, h, w = x.shape[:3]
  n_cls = t.cotangents.shape[0]
  low = (-(-h // mask_scale), -(-w // mask_scale))
  if isinstance(baseline, str) and baseline == "blur":
    blurred = _blur_images(x, gaussian_taps(blur_sigma), "edge")
  else:
    blurred = core.baseline_images(x, baseline, name="baseline")
  pairs = n_cls * b
  cot = t.cotangents.reshape(pairs, -1)
  image_of = np.tile(np.arange(b), n_cls)
  if init == "circle":
    m0 = _circle_init(classifier, x, blurred, cot, image_of, low,
                      blur_sigma=blur_sigma, score=score,
                      chunk_size=chunk_size)
  else:
    m0 = jnp.full((pairs, *low), float(init), jnp.float32)
  rows, cols = mask_upsampler((h, w), mask_scale, mask_blur)
  if jitter:
    size = (h + jitter, w + jitter)
    big = jax.image.resize(x, (b, *size, x.shape[-1]), "linear")
    big_blurred = jax.image.resize(blurred, (b, *size, x.shape[-1]),
                                   "linear")
  else:
    big, big_blurred = x, blurred
  m = _mp_loop(classifier, big, big_blurred, cot, jnp.asarray(image_of), m0,
               key, rows=rows, cols=cols, size=(h, w), steps=steps,
               learning_rate=learning_rate, l1=l1, tv=tv, tv_beta=tv_beta,
               jitter=int(jitter), mask_noise=mask_noise, variant=variant,
               score=score)
  full = _separable(m[..., None], rows, cols)[..., 0]
  maps = 1 - full if variant == "deletion" else full
  return core.finish(maps.reshape(n_cls, b, h, w), t)


def _circle_init(classifier, x, blurred, cot, image_of, low, *, blur_sigma,
                 score, chunk_size) -> jax.Array:
  """``[P, h, w]`` initial masks: per pair the smallest disc whose deletion
  leaves less than 1 % of the score drop to the largest disc."""
  b, h, w = x.shape[:3]
  discs = jnp.asarray(circle_masks((h, w), blur_sigma))       # [R, H, W]
  n_r = discs.shape[0]

  def chunk(idx):                                     # [n] radii -> [n, B*C]
    m = discs[idx][:, None, :, :, None]
    xs = x[None] * m + blurred[None] * (1 - m)
    logits = classifier.apply(xs.reshape(-1, *x.shape[1:]))[0]
    logits = logits.reshape(idx.shape[0], b, -1)[:, jnp.asarray(image_of)]
    return _scores(logits, cot[None], score)

  s = core.chunked_map(chunk, jnp.arange(n_r),
                       core.points_per_pass(chunk_size, b)).T   # [P, R]
  orig = _scores(classifier.apply(x)[0][jnp.asarray(image_of)], cot, score)
  remaining = (s - s[:, -1:]) / (orig - s[:, -1])[:, None]
  below = remaining < MP_CIRCLE_THRESHOLD
  first = jnp.where(jnp.any(below, axis=1), jnp.argmax(below, axis=1),
                    n_r - 1)
  return _downsample_nearest(discs[first], low)


def _mp_loop(classifier, images, blurred, cot, image_of, m0, key, *, rows,
             cols, size, steps, learning_rate, l1, tv, tv_beta, jitter,
             mask_noise, variant, score) -> jax.Array:
  """Adam on ``[P, h, w]`` masks; images ``[B, H + j, W + j, C]``."""
  h, w = size
  ideal = 1.0 if variant == "deletion" else 0.0
  sign = 1.0 if variant == "deletion" else -1.0
  opt = optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)

  def draws(step_index):
    if key is None:
      return jnp.zeros(2, jnp.int32), jnp.zeros(m0.shape[1:])
    k = jax.random.fold_in(key, step_index)
    k_shift, k_noise = jax.random.split(k)
    shift = (jax.random.randint(k_shift, (2,), 0, jitter) if jitter
             else jnp.zeros(2, jnp.int32))
    noise = mask_noise * jax.random.normal(k_noise, m0.shape[1:])
    return shift, noise

  def loss(m, shift, noise):
    crop = functools.partial(jax.lax.dynamic_slice,
                             start_indices=(0, shift[0], shift[1], 0),
                             slice_sizes=(images.shape[0], h, w,
                                          images.shape[-1]))
    img, null = crop(images)[image_of], crop(blurred)[image_of]
    noisy = jnp.clip(m + noise, 0.0, 1.0)
    full = _separable(noisy[..., None], rows, cols)
    xs = img * full + null * (1 - full)
    f = _scores(classifier.apply(xs)[0], cot, score)
    gap = m - ideal
    l1_term = jnp.sum(gap * jax.lax.stop_gradient(jnp.sign(gap)),
                      axis=(-2, -1))
    return jnp.sum(l1 * l1_term + tv * total_variation(m, tv_beta)
                   + sign * f)

  grad = loop_convs.canonical_convs(jax.grad(loss))

  def body(carry, step_index):
    m, state = carry
    shift, noise = draws(step_index)
    updates, state = opt.update(grad(m, shift, noise), state)
    m = jnp.clip(m + updates, 0.0, 1.0)
    return (m, state), None

  (m, _), _ = jax.lax.scan(body, (m0, opt.init(m0)), jnp.arange(steps))
  return m
