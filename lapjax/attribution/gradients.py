"""Gradient attributions: gradient, input x gradient, IG, SmoothGrad, guided BP.

All return raw, signed maps ``[B, H, W]`` (``[B, C', H, W]`` for ``[B, C']``
targets) with the colour channels summed (``channels='sum'``, so that the
maps of integrated gradients add up to ``f(x) - f(baseline)``); pass
``channels=None`` to keep ``[..., H, W, C]``, ``'max_abs'`` for Simonyan et
al.'s saliency.
"""

from __future__ import annotations

import contextlib
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lapjax.attribution import core
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier, from_flax
from lapjax.models.layers import model_activation


@compiled
def gradient(classifier: Classifier, x: jax.Array, targets, *,
             channels: str | None = "sum") -> jax.Array:
  """The gradient of the target score w.r.t. the input.

  .. math:: A = \\partial\\, (\\text{cot} \\cdot f(x)) / \\partial x

  Args:
    classifier: the model.
    x: ``[B, H, W, C]`` images in the model's input space.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float (cotangents).
    channels: channel reduction (see module docstring).

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Simonyan et al., "Deep Inside Convolutional Networks", ICLR-W 2014.
  """
  x, t = core.prepare(classifier, x, targets)
  grads = core.input_gradients(classifier, x, t.cotangents)
  return core.finish(core.reduce_channels(grads, channels), t)


@compiled
def input_x_gradient(classifier: Classifier, x: jax.Array, targets, *,
                     channels: str | None = "sum") -> jax.Array:
  """Input times gradient, ``x * df/dx``, channels summed by default.

  References:
    Shrikumar et al., "Not Just a Black Box", arXiv 2016.
  """
  x, t = core.prepare(classifier, x, targets)
  grads = core.input_gradients(classifier, x, t.cotangents)
  return core.finish(core.reduce_channels(x * grads, channels), t)


@compiled
def integrated_gradients(classifier: Classifier, x: jax.Array, targets, *,
                         baseline: jax.Array | float | str = 0.0,
                         blur_sigma: float = 5.0, steps: int = 50,
                         method: str = "riemann_trapezoid",
                         chunk_size: int = 64,
                         channels: str | None = "sum") -> jax.Array:
  """Integrated gradients along the straight path from ``baseline`` to ``x``.

  .. math:: IG = (x - x') \\odot \\int_0^1 \\nabla f(x' + \\alpha (x - x'))
     \\, d\\alpha

  Completeness: the map sums to ``f(x) - f(x')`` up to the quadrature error,
  which shrinks as ``steps`` grows.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: as for ``gradient``.
    baseline: ``x'``: a number, an array broadcast to ``x``, or ``'blur'``
      (``x`` Gaussian-blurred; ``core.baseline_images``).
    blur_sigma: Gaussian sigma of ``baseline='blur'``.
    steps: quadrature points, ``>= 1`` (``>= 2`` for the trapezoid rule).
    method: ``'riemann_trapezoid'`` (``steps`` equally spaced points with both
      end points, trapezoid weights) or ``'gauss_legendre'`` (Captum's
      default).
    chunk_size: images per backward pass (memory bound); each pass takes
      ``max(1, chunk_size // B)`` path points for the whole batch.
    channels: channel reduction.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.
  """
  x, t = core.prepare(classifier, x, targets)
  core.check_positive("steps", steps)
  if method == "riemann_trapezoid":
    if steps < 2:
      raise ValueError(f"steps must be >= 2 for the trapezoid rule (it uses "
                       f"both end points); got {steps}")
    alphas = np.linspace(0, 1, steps, dtype=np.float32)
    weights = np.full(steps, 1.0 / (steps - 1), np.float32)
    weights[[0, -1]] /= 2
  elif method == "gauss_legendre":
    alphas, weights = core.legendre_nodes(steps)
  else:
    raise ValueError(f"method must be 'riemann_trapezoid' or "
                     f"'gauss_legendre'; got {method!r}")
  baseline = core.baseline_images(x, baseline, blur_sigma)
  b = x.shape[0]

  def grads_at(alpha_chunk):
    xs = baseline + alpha_chunk[:, None, None, None, None] * (x - baseline)
    return core.expanded_input_gradients(classifier, xs, t.cotangents)

  mean_grad = core.chunked_sum(grads_at, jnp.asarray(alphas),
                               jnp.asarray(weights),
                               core.points_per_pass(chunk_size, b))
  return core.finish(core.reduce_channels((x - baseline) * mean_grad,
                                          channels), t)


@compiled
def smoothgrad(classifier: Classifier, x: jax.Array, targets, *,
               key: jax.Array, samples: int = 50, noise_level: float = 0.15,
               chunk_size: int = 64,
               channels: str | None = "sum") -> jax.Array:
  """SmoothGrad: the gradient averaged over noisy copies of the input.

  Noise is Gaussian with standard deviation ``noise_level * (max(x) -
  min(x))`` per image. Sample ``i`` draws one ``[H, W, C]`` noise image from
  ``jax.random.fold_in(key, i)``, shared by the batch (scaled per image), so
  an image's map depends neither on the other images nor on ``chunk_size``
  (images per backward pass, as for ``integrated_gradients``).

  References:
    Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.
  """
  x, t = core.prepare(classifier, x, targets)
  core.check_positive("samples", samples)
  if noise_level < 0:
    raise ValueError(f"noise_level must be >= 0; got {noise_level}")
  b = x.shape[0]
  sigma = noise_level * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))

  def grads_at(indices):
    noise = jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(key, i), x.shape[1:], x.dtype))(indices)
    xs = x + sigma[None, :, None, None, None] * noise[:, None]
    return core.expanded_input_gradients(classifier, xs, t.cotangents)

  mean_grad = core.chunked_sum(grads_at, jnp.arange(samples),
                               jnp.full((samples,), 1.0 / samples),
                               core.points_per_pass(chunk_size, b))
  return core.finish(core.reduce_channels(mean_grad, channels), t)


# --- Guided backpropagation -------------------------------------------------

_guided_calls = threading.local()


@jax.custom_vjp
def _guided_relu(x):
  return jax.nn.relu(x)


def _guided_fwd(x):
  return jax.nn.relu(x), x


def _guided_bwd(x, g):
  # Pass only positive signal, and only where the forward ReLU was open.
  return (jnp.where((x > 0) & (g > 0), g, 0.0).astype(g.dtype),)


_guided_relu.defvjp(_guided_fwd, _guided_bwd)


def guided_relu(x: jax.Array) -> jax.Array:
  """ReLU whose backward pass is guided backpropagation's.

  Forward: ``max(x, 0)``. Backward: ``g * 1[x > 0] * 1[g > 0]``. Pass it as a
  model's ``act`` (``guided_classifier`` does) to make ``guided_backprop``
  possible.
  """
  count = getattr(_guided_calls, "count", None)
  if count is not None:
    _guided_calls.count = count + 1
  return _guided_relu(x)


@contextlib.contextmanager
def _count_guided_relus():
  _guided_calls.count = 0
  try:
    yield _guided_calls
  finally:
    _guided_calls.count = None


def guided_classifier(module: nn.Module, variables, **from_flax_kwargs
                      ) -> Classifier:
  """A classifier of ``module`` with every activation a ``guided_relu``.

  The module must take its activation as an ``act`` attribute (every lapjax
  ReLU model does), so that every ReLU, functional ones included, is
  replaced; a model whose ``act`` is not ReLU (EfficientNet's SiLU) is
  refused rather than explained as another network.
  """
  if not hasattr(module, "act"):
    raise ValueError(
        f"{type(module).__name__} has no injectable 'act' attribute, so its "
        "ReLUs cannot be replaced; guided backprop needs a model built with "
        "act=guided_relu")
  act = model_activation(module)
  if act not in (jax.nn.relu, guided_relu):
    name = getattr(act, "__name__", repr(act))
    raise ValueError(
        f"{type(module).__name__} uses act={name}, not ReLU; guided "
        "backprop is defined for ReLU networks, and replacing its "
        "activation with guided_relu would explain a different network")
  return from_flax(module.clone(act=guided_relu), variables,
                   **from_flax_kwargs)


@compiled
def guided_backprop(classifier: Classifier, x: jax.Array, targets, *,
                    channels: str | None = "sum") -> jax.Array:
  """Guided backpropagation: the gradient through guided ReLUs.

  ``classifier`` must be built with ``guided_relu`` activations (use
  ``guided_classifier``); a classifier without any is refused rather than
  silently returning plain gradients.

  References:
    Springenberg et al., "Striving for Simplicity", ICLR-W 2015.
  """
  x, t = core.prepare(classifier, x, targets)
  with _count_guided_relus() as counter:
    # A fresh function each time: eval_shape caches traces per function.
    jax.eval_shape(lambda x: classifier.apply(x), x)
    used = counter.count
  if not used:
    raise ValueError(
        "this classifier has no guided_relu activations, so guided backprop "
        "would silently equal the plain gradient; build it with "
        "lapjax.attribution.guided_classifier(module, variables)")
  grads = core.input_gradients(classifier, x, t.cotangents)
  return core.finish(core.reduce_channels(grads, channels), t)
