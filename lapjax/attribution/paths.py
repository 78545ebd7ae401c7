"""Path attributions beyond straight-line IG: Guided IG and DIX.

* ``guided_ig``: integrated gradients along an adaptive path that, at every
  step, moves the input features with the smallest ``|gradient|`` first
  (Kapishnikov et al. 2021), with PAIR saliency's algorithm and defaults.
  The path depends on the explained class, so ``[B, C']`` targets run one
  path per (image, class) pair.
* ``dix``: the activations of a layer times their gradients, integrated
  along the straight input path and upsampled to the input (Barkan et al.
  2023).

Both return raw, signed maps ``[B, H, W]`` (``[B, C', H, W]`` for ``[B, C']``
targets); ``guided_ig`` sums colour channels like ``integrated_gradients``
(``channels=``), so its maps add up to ``f(x) - f(baseline)`` up to the
quadrature error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.attribution import core, loop_convs, postprocess
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier

EPSILON = 1e-9   # PAIR's tolerance: a step has reached its target L1 distance


def _check_fraction(fraction: float) -> None:
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1] (the share of features "
                     f"moved per pass); got {fraction}")


def _check_max_dist(max_dist: float) -> None:
  if not 0 <= max_dist <= 1:
    raise ValueError(f"max_dist must be in [0, 1] (0: the straight path, 1: "
                     f"unbounded); got {max_dist}")


def _path_gradients(classifier: Classifier, image_shape: tuple[int, ...],
                    cotangents: jax.Array, per_pass: int):
  """``points [n, F] -> d (cot_i . f(point_i)) / d point_i`` ``[n, F]``.

  Every point has its own cotangent (its image's target); at most
  ``per_pass`` points per backward pass.
  """
  n = cotangents.shape[0]

  def grads(points, cots):
    xs = points.reshape(points.shape[0], *image_shape)
    g = core.input_gradients(classifier, xs, cots[None])[0]
    return g.reshape(points.shape)

  if n <= per_pass:
    return loop_convs.canonical_convs(lambda points: grads(points, cotangents))

  def chunked(points):                 # chunked_map makes its convs canonical
    def one_chunk(indices):
      return grads(points[indices], cotangents[indices])
    return core.chunked_map(one_chunk, jnp.arange(n), per_pass)

  return chunked


def _guided_step(x: jax.Array, grad: jax.Array, x_input: jax.Array,
                 x_baseline: jax.Array, l1_target: jax.Array,
                 alpha_min: jax.Array, alpha_max: jax.Array,
                 kth: int) -> jax.Array:
  """One Guided IG step of every path (PAIR's inner loop, batched).

  Features that fell behind ``alpha_min`` jump to it; then, pass by pass,
  the features with the smallest ``|grad|`` (every feature at or below the
  ``kth`` smallest, features already at ``alpha_max`` excluded but counted)
  move towards ``alpha_max``, the last pass only as far as needed to bring
  the L1 distance to the input down to ``l1_target``.

  Args:
    x, grad, x_input, x_baseline: ``[n, F]`` path points, their gradients,
      end and start points.
    l1_target: ``[n]`` L1 distances to the input after the step.
    alpha_min, alpha_max: scalars, the step's allowed range of alpha.
    kth: index of the ``fraction`` quantile in the sorted ``|grad|``.

  Returns:
    ``[n, F]``, the points after the step.
  """
  diff = x_input - x_baseline
  x_min = x_baseline + diff * alpha_min
  x_max = x_baseline + diff * alpha_max
  moves = diff != 0
  # A feature equal in input and baseline has alpha NaN in PAIR, replaced
  # by alpha_max: it never falls behind and never moves.
  x_alpha = jnp.where(moves, (x - x_baseline) / jnp.where(moves, diff, 1.0),
                      alpha_max)
  x = jnp.where(x_alpha < alpha_min, x_min, x)
  abs_grad = jnp.abs(grad)

  def unfinished(state):
    return ~jnp.all(state[1])

  def one_pass(state):
    x, done = state
    l1_current = jnp.abs(x - x_input).sum(-1)
    reached = (jnp.abs(l1_current - l1_target)
               <= jnp.maximum(EPSILON * jnp.maximum(jnp.abs(l1_current),
                                                    jnp.abs(l1_target)),
                              EPSILON))
    at_max = x == x_max
    g = jnp.where(at_max, jnp.inf, abs_grad)
    threshold = jnp.sort(g, axis=-1)[:, kth]
    selected = (g <= threshold[:, None]) & ~at_max
    l1_selected = jnp.sum(jnp.abs(x - x_max) * selected, -1)
    gamma = (l1_current - l1_target) / jnp.where(l1_selected > 0,
                                                 l1_selected, 1.0)
    # gamma > 1: the selected features cannot close the gap; they go all
    # the way and the next pass selects others. With nothing left to select
    # (PAIR would loop forever) or gamma <= 1 the step ends. float32 can
    # leave gamma a rounding error below zero, where PAIR (float64) asserts
    # gamma > 0: such a pass does not move.
    again = (l1_selected > 0) & (gamma > 1)
    partial = x + jnp.clip(gamma, 0.0, 1.0)[:, None] * (x_max - x)
    moved = jnp.where(again[:, None], x_max, partial)
    active = ~(done | reached)
    x = jnp.where(selected & active[:, None], moved, x)
    return x, done | reached | ~again

  x, _ = jax.lax.while_loop(unfinished, one_pass,
                            (x, jnp.zeros(x.shape[0], bool)))
  return x


@compiled
def guided_ig(classifier: Classifier, x: jax.Array, targets, *,
              baseline: jax.Array | float | str = 0.0,
              blur_sigma: float = 5.0, steps: int = 200,
              fraction: float = 0.25, max_dist: float = 0.02,
              chunk_size: int = 64,
              channels: str | None = "sum") -> jax.Array:
  """Guided Integrated Gradients: IG along a gradient-adapted path.

  The path starts at the baseline ``x'`` and, at step ``s = 1..steps``,
  moves to L1 distance ``(1 - s / steps) |x - x'|_1`` from the input by
  moving the features of smallest ``|df/dx|`` first, each within
  ``[alpha - max_dist, alpha + max_dist]`` (``alpha = s / steps``) of its
  straight-path position:

  .. math:: GIG_i = \\sum_{s=1}^{S} (x^{(s)}_i - x^{(s-1)}_i)\\,
     \\partial_i f(x^{(s-1)})

  one gradient per step, at the step's start. PAIR saliency's algorithm
  (``saliency.core.GuidedIG``): features behind ``alpha - max_dist`` jump to
  it; each pass selects every feature whose ``|gradient|`` is at most the
  ``fraction`` quantile (``'lower'``) of all features' (ties included, so at
  least that share; features already at ``alpha + max_dist`` excluded from
  the selection but kept in the quantile) and moves it to the upper bound,
  or, on the step's last pass, the fraction ``gamma`` of the way that hits
  the step's L1 target; a feature equal in input and baseline never moves.
  ``max_dist=0`` is the straight path (IG, left Riemann sum); ``1`` lets the
  path go anywhere in the box between ``x'`` and ``x``. On a model linear in
  ``x`` every path gives ``(x - x') * w``. Computed in float32, where PAIR
  uses float64 (see docs/comparators.md for the measured agreement); a pass
  that can select nothing ends the step (PAIR's loop would not end).

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float (cotangents).
      ``[B, C']`` runs ``C'`` paths per image: the path follows the class's
      gradient.
    baseline: ``x'``: a number, an array broadcast to ``x``, or ``'blur'``.
    blur_sigma: Gaussian sigma of ``baseline='blur'``.
    steps: path steps (one gradient each), ``>= 1``; PAIR's 200.
    fraction: share of the features selected per pass, in ``(0, 1]``;
      PAIR's 0.25.
    max_dist: largest deviation, in alpha, from the straight path, in
      ``[0, 1]``; PAIR's 0.02.
    chunk_size: images per backward pass (memory bound): the ``B * C'``
      paths advance together, their gradients ``chunk_size`` at a time.
    channels: channel reduction (``'sum'``, ``'mean'``, ``'max_abs'`` or
      None).

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Kapishnikov et al., "Guided Integrated Gradients: an Adaptive Path
    Method for Removing Noise", CVPR 2021.
  """
  x, t = core.prepare(classifier, x, targets)
  core.check_positive("steps", steps)
  _check_fraction(fraction)
  _check_max_dist(max_dist)
  core.check_positive("chunk_size", chunk_size)
  baseline = core.baseline_images(x, baseline, blur_sigma)
  classes, b = t.cotangents.shape[:2]
  n, features = classes * b, int(np.prod(x.shape[1:]))
  x_input = jnp.broadcast_to(x, (classes, *x.shape)).reshape(n, features)
  x_baseline = jnp.broadcast_to(baseline, (classes, *x.shape)).reshape(
      n, features)
  gradients = _path_gradients(classifier, x.shape[1:],
                              t.cotangents.reshape(n, -1), chunk_size)
  l1_total = jnp.abs(x_input - x_baseline).sum(-1)
  # The step schedule in float64, as PAIR computes it.
  alpha = np.arange(1, steps + 1, dtype=np.float64) / steps
  schedule = (np.maximum(alpha - max_dist, 0.0).astype(np.float32),
              np.minimum(alpha + max_dist, 1.0).astype(np.float32),
              (1.0 - alpha).astype(np.float32))
  kth = int(np.floor((features - 1) * fraction))    # NumPy's 'lower'

  def step(carry, bounds):
    point, total = carry
    alpha_min, alpha_max, remaining = bounds
    grad = gradients(point)
    new = _guided_step(point, grad, x_input, x_baseline,
                       l1_total * remaining, alpha_min, alpha_max, kth)
    return (new, total + (new - point) * grad), None

  (_, attr), _ = jax.lax.scan(step, (x_baseline, jnp.zeros_like(x_input)),
                              schedule)
  attr = attr.reshape(classes, *x.shape)
  return core.finish(core.reduce_channels(attr, channels), t)


@compiled
def dix(classifier: Classifier, x: jax.Array, targets, *, layer: str,
        baseline: jax.Array | float | str = 0.0, blur_sigma: float = 5.0,
        steps: int = 20, integrand_relu: bool = False,
        chunk_size: int = 64, resize: bool = True,
        resize_method: str = "bilinear") -> jax.Array:
  """Deep Integrated Explanations: activations times their gradients,
  integrated along the path from the baseline to the input.

  .. math:: DIX = \\mathrm{up}\\Big(\\sum_k \\int_0^1 A^k(x_\\alpha) \\odot
     \\frac{\\partial f}{\\partial A^k}(x_\\alpha)\\, d\\alpha\\Big),
     \\quad x_\\alpha = x' + \\alpha (x - x')

  with ``A`` the activations of ``layer`` ``[h, w, K]``, their gradients
  taken through ``deltas`` (one forward and backward pass per path point
  for all target classes), the integral by the trapezoid rule over
  ``steps`` equally spaced points with both ends, the channels summed and
  the ``[h, w]`` map upsampled to ``[H, W]``. On a model linear in the
  activations (``f = sum w . A + c``) the map is ``sum_k w_k
  \\int A^k(x_alpha) d alpha``: for activations affine in ``x`` that is
  ``sum_k w_k (A^k(x) + A^k(x')) / 2``. ``integrand_relu=True`` takes the
  positive part of the product before the channel sum at every point (the
  rectified integrand of the authors' reference code); the default keeps the
  signed integral. No normalisation.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float (cotangents).
    layer: a spatial tap ``[B, h, w, c]`` (a CAM layer).
    baseline: ``x'``: a number, an array broadcast to ``x``, or ``'blur'``.
    blur_sigma: Gaussian sigma of ``baseline='blur'``.
    steps: path points, ``>= 2`` (both ends included).
    integrand_relu: rectify the product ``A * dA`` at every point.
    chunk_size: images per backward pass (memory bound); each pass takes
      ``max(1, chunk_size // B)`` path points for the whole batch.
    resize: upsample to ``[H, W]`` (True) or keep ``[h, w]``.
    resize_method: ``postprocess.RESIZE_METHODS`` (bilinear by default).

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``; ``[.., h, w]`` without ``resize``),
    signed.

  References:
    Barkan et al., "Deep Integrated Explanations", CIKM 2023.
  """
  x, t = core.prepare(classifier, x, targets)
  core.check_positive("steps", steps)
  if steps < 2:
    raise ValueError(f"steps must be >= 2 (the trapezoid rule uses both end "
                     f"points); got {steps}")
  core.check_layer(classifier, layer)
  core.check_spatial_layer(
      layer, jax.eval_shape(classifier.apply, x)[1][layer].shape)
  baseline = core.baseline_images(x, baseline, blur_sigma)
  b = x.shape[0]
  alphas = np.linspace(0, 1, steps, dtype=np.float32)
  weights = np.full(steps, 1.0 / (steps - 1), np.float32)
  weights[[0, -1]] /= 2

  def integrand(alpha_chunk):                    # [m] -> [m, C', B, h, w]
    m = alpha_chunk.shape[0]
    xs = baseline + alpha_chunk[:, None, None, None, None] * (x - baseline)
    acts, grads, _ = core.layer_gradients(
        classifier, xs.reshape(m * b, *x.shape[1:]), layer,
        jnp.tile(t.cotangents, (1, m, 1)))
    product = acts[None] * grads                 # [C', m * B, h, w, c]
    if integrand_relu:
      product = jax.nn.relu(product)
    maps = product.sum(-1)
    maps = maps.reshape(maps.shape[0], m, b, *maps.shape[2:])
    return jnp.moveaxis(maps, 1, 0)

  maps = core.chunked_sum(integrand, jnp.asarray(alphas),
                          jnp.asarray(weights),
                          core.points_per_pass(chunk_size, b))
  maps = postprocess.resize(maps, x.shape[1:3] if resize else None,
                            resize_method)
  return core.finish(maps, t)
