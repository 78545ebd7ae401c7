"""FullGrad: input-gradients and the bias-gradients of every layer.

For a network of piecewise-linear layers (convolutions, dense layers,
BatchNorm in inference mode, ReLU, max and average pooling) the output is
exactly (Srinivas & Fleuret's full-gradient representation)

.. math:: f(x) = \\nabla_x f \\cdot x + \\sum_l \\sum_{ijc}
   \\frac{\\partial f}{\\partial z^l_{ijc}} b^l_c

where ``z^l`` is the output of layer ``l`` and ``b^l`` its bias (for
BatchNorm the effective bias ``beta - scale * mean / sqrt(var + eps)``).
FullGrad shows every term as a map: ``psi(grad_x f * x)`` plus, for each
spatial bias-carrying layer, ``psi(grad_z f * b)`` upsampled to the input,
each summed over channels, with ``psi`` = abs then min-max rescaling.

How the biases are reached without hooks: ``fullgrad_classifier`` wraps a
Flax linen module so that its taps are the layers that carry a bias, named
``'<path>:bias'`` (``'block1/unit0/norm:bias'``). The feature a tap returns
is the bias term of that layer's output, ``b`` broadcast to the output's
shape ``[B, h, w, c]``; its ``deltas`` are added to the layer's output as
for any tap, so ``d logits / d deltas`` is ``grad_z f`` and the
bias-gradient map is that gradient times the feature. Any ``Classifier``
that follows this convention (features named ``'...:bias'`` holding bias
terms) works with ``fullgrad``, e.g. a plain JAX function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.attribution import core, postprocess
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier, check_deltas, check_images

BIAS_SUFFIX = ":bias"
_NORMALISATIONS = ("layer", "channel")


def _effective_bias(module: nn.Module) -> jax.Array | None:
  """The bias a Conv / Dense / BatchNorm adds to its output, or None."""
  params = module.variables.get("params", {})
  if isinstance(module, (nn.Conv, nn.ConvTranspose, nn.Dense)):
    return params.get("bias")
  if isinstance(module, nn.BatchNorm):
    if module.axis != -1:
      raise ValueError(
          f"fullgrad_classifier reads BatchNorm biases over the last axis; "
          f"{'/'.join(module.path)!r} normalises axis {module.axis}")
    stats = module.variables["batch_stats"]
    scale = params.get("scale", 1.0)
    shift = params.get("bias", 0.0)
    return shift - scale * stats["mean"] / jnp.sqrt(stats["var"]
                                                    + module.epsilon)
  return None


def _trace_biases(module: nn.Module, variables: Mapping[str, Any],
                  x: jax.Array, apply_kwargs: Mapping[str, Any],
                  deltas: Mapping[str, jax.Array]):
  """Runs ``module`` once; returns ``(logits, {tap: bias term})`` for every
  spatial bias-carrying layer, with ``deltas[tap]`` added to its output."""
  terms: dict[str, jax.Array] = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if (context.method_name != "__call__" or not mod.path
        or not isinstance(mod, (nn.Conv, nn.ConvTranspose, nn.Dense,
                                nn.BatchNorm))):
      return next_fun(*args, **kwargs)
    out = next_fun(*args, **kwargs)
    bias = _effective_bias(mod)
    if bias is None or not isinstance(out, jax.Array) or out.ndim != 4:
      return out
    tap = "/".join(mod.path) + BIAS_SUFFIX
    if tap in terms:
      raise ValueError(
          f"layer {tap[:-len(BIAS_SUFFIX)]!r} is called more than once in "
          "one forward pass, so its bias-gradient is ambiguous for FullGrad")
    if tap in deltas:
      if jnp.shape(deltas[tap]) != out.shape:
        raise ValueError(f"deltas[{tap!r}] has shape "
                         f"{jnp.shape(deltas[tap])}; the layer outputs "
                         f"shape {out.shape}")
      out = out + deltas[tap]
    terms[tap] = jnp.broadcast_to(bias.astype(out.dtype), out.shape)
    return out

  with nn.intercept_methods(interceptor):
    try:
      logits = module.apply(variables, x, **apply_kwargs)
    except flax.errors.ModifyScopeVariableError as e:
      raise ValueError(
          "the model tried to update a variable (BatchNorm in training "
          "mode?); FullGrad reads BatchNorm's running statistics as its "
          "bias, so run the module in inference mode (e.g. train=False). "
          f"Flax said: {e}") from None
  return logits, terms


def fullgrad_classifier(module: nn.Module, variables: Mapping[str, Any], *,
                        input_shape: Sequence[int],
                        **apply_kwargs: Any) -> Classifier:
  """A classifier whose taps are the bias terms of every bias layer.

  Taps ``'<path>:bias'`` for each ``nn.Conv`` / ``nn.Dense`` with a bias
  and each ``nn.BatchNorm`` (inference mode) whose output is spatial
  ``[B, h, w, c]`` (the bias-gradients FullGrad maps; a bias on ``[B, K]``
  outputs has no map). Features are the bias terms broadcast to the
  layer's output; ``deltas`` are added to the layer's output.

  Args:
    module: a Flax linen module returning logits ``[B, K]``.
    variables: its variables (``params``, ``batch_stats``).
    input_shape: ``(H, W, C)`` of one image, to find the bias layers.
    **apply_kwargs: extra keyword arguments of ``module.apply``.

  Returns:
    A ``Classifier`` for ``fullgrad``; its ``apply`` is pure and jittable.
  """
  if "mutable" in apply_kwargs:
    raise ValueError("fullgrad_classifier runs the module in inference "
                     "mode with no mutable collections; got mutable="
                     f"{apply_kwargs['mutable']!r}")
  probe = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  found: list[str] = []

  def collect(x):
    found.extend(_trace_biases(module, variables, x, apply_kwargs, {})[1])
    return 0

  jax.eval_shape(collect, probe)
  layers = tuple(found)

  def apply(x: jax.Array, deltas: Mapping[str, jax.Array] | None = None):
    check_images(x)
    deltas = check_deltas(deltas, layers)
    return _trace_biases(module, variables, x, apply_kwargs, deltas)

  return Classifier(apply=apply, layers=layers)


def _psi(maps: jax.Array, normalise: str, eps: float) -> jax.Array:
  """``|maps|`` min-max rescaled per map ``[..., h, w, c]``: over
  ``(h, w, c)`` (``'layer'``) or ``(h, w)`` for each channel."""
  a = jnp.abs(maps)
  axes = (-3, -2, -1) if normalise == "layer" else (-3, -2)
  lo = a.min(axis=axes, keepdims=True)
  hi = a.max(axis=axes, keepdims=True)
  return (a - lo) / (hi - lo + eps)


@compiled
def fullgrad(classifier: Classifier, x: jax.Array, targets, *,
             normalise: str = "layer", eps: float = 1e-6,
             resize_method: str = "bilinear") -> jax.Array:
  """FullGrad saliency: input-gradient and bias-gradient maps, summed.

  .. math:: S = \\sum_c \\psi(\\nabla_x y \\odot x)_c + \\sum_l \\sum_c
     \\mathrm{up}\\big(\\psi(\\nabla_{z^l} y \\odot b^l)\\big)_c, \\quad
     \\psi(m) = \\frac{|m| - \\min |m|}{\\max |m| - \\min |m| +
     \\varepsilon}

  over every tap ``'<path>:bias'`` of ``classifier`` (build it with
  ``fullgrad_classifier``), one forward and one backward pass per target
  class. ``psi`` (abs and rescaling) is part of FullGrad's definition, so
  the map is non-negative; ``up`` resizes to ``[H, W]``.

  ``normalise='layer'`` rescales each layer's ``[h, w, c]`` map as a
  whole (the paper and its authors' code, with ``eps = 1e-6``);
  ``'channel'`` rescales each channel on its own (pytorch-grad-cam's
  ``FullGrad``, with ``eps = 1e-7``: its maps before the final min-max,
  tests/attribution/test_cam_comparators.py). The authors' code upsamples
  with ``align_corners=True``, pytorch-grad-cam with OpenCV's bilinear
  (``resize_method='bilinear'``, the default).

  Args:
    classifier: from ``fullgrad_classifier`` (taps named ``'...:bias'``
      whose features are bias terms).
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    normalise: ``'layer'`` or ``'channel'`` (static).
    eps: added to the rescaling's denominator.
    resize_method: as for ``grad_cam``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Srinivas & Fleuret, "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS 2019.
  """
  if normalise not in _NORMALISATIONS:
    raise ValueError(f"normalise must be one of {_NORMALISATIONS}; got "
                     f"{normalise!r}")
  plain = [n for n in classifier.layers if not n.endswith(BIAS_SUFFIX)]
  if plain:
    raise ValueError(
        f"fullgrad needs a classifier whose taps are bias terms (named "
        f"'<layer>{BIAS_SUFFIX}'): build it with fullgrad_classifier(module, "
        f"variables, input_shape=...); this one taps {plain}")
  x, t = core.prepare(classifier, x, targets)
  shapes = jax.eval_shape(classifier.apply, x)[1]
  for name, s in shapes.items():
    core.check_spatial_layer(name, s.shape)
  zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in shapes.items()}

  def run(x, deltas):
    logits, terms = classifier.apply(x, deltas)
    return logits, terms

  _, vjp, terms = jax.vjp(run, x, zeros, has_aux=True)
  grad_x, grad_z = jax.vmap(vjp)(t.cotangents)
  size = x.shape[1:3]
  saliency = _psi(grad_x * x[None], normalise, eps).sum(-1)   # [C', B, H, W]
  for name, bias in terms.items():
    layer_map = _psi(grad_z[name] * bias[None], normalise, eps).sum(-1)
    saliency = saliency + postprocess.resize(layer_map, size, resize_method)
  return core.finish(saliency, t)
