"""What every attribution method shares: targets, one-pass VJPs, chunking.

Targets come in three forms (DESIGN.md §2):

* ``int [B]``: one class per image; maps ``[B, ...]``.
* ``int [B, C']``: several classes per image; maps ``[B, C', ...]``. The
  forward pass runs once and ``jax.vmap`` runs one backward pass per class
  over the shared VJP; never ``C'`` calls of the method. The rank decides,
  never the size: ``[B, 1]`` is a class set of one (``C' = 1``) and gives
  ``[B, 1, ...]`` maps, equal to those of its ``[B]`` column with a class
  axis (squeeze labels stored as ``[B, 1]`` to get ``[B, ...]``).
* ``float [B, K]``: an explicit output cotangent (as in Zennit); maps
  ``[B, ...]``.

Internally a target is a stack of cotangents ``[C', B, K]`` (``C' = 1`` for the
single forms); ``finish`` moves the class axis back behind the batch axis or
drops it.

Input checks hold eagerly and under ``jit``: on concrete values they raise
``ValueError`` at once; on traced values (inside ``jit``) they are
``checkify.debug_check`` s, free when nobody asks and raised by
``checks.jit_checked`` (the evaluation path) as the same ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from lapjax.attribution import loop_convs, postprocess
from lapjax.classifier import Classifier, check_images


class Targets(NamedTuple):
  """Targets as output cotangents.

  Attributes:
    cotangents: ``[C', B, K]`` float32.
    multi: True for ``[B, C']`` integer targets (keep the class axis).
  """
  cotangents: jax.Array
  multi: bool


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


CHECK_VALUES = 2     # int32 values every traced check carries


def check_traced(ok: jax.Array, message: str, *values: jax.Array) -> None:
  """A run-time check of traced values: ``message.format(*values)`` unless
  ``ok``. A no-op unless the caller is ``checkify``-ed
  (``checks.jit_checked``), so jitted methods pay nothing otherwise.

  Every check carries ``CHECK_VALUES`` int32 scalars (zeros pad), so all
  share one ``checkify`` error type and the first failed check in program
  order is the one reported.
  """
  ints = [jnp.asarray(v, jnp.int32) for v in values]
  ints += [jnp.int32(0)] * (CHECK_VALUES - len(ints))
  checkify.debug_check(ok, message, *ints)


def check_finite_images(x: jax.Array, *, name: str = "x") -> None:
  """Images must be a float ``[B, H, W, C]`` batch of finite numbers."""
  check_images(x, name=name)
  if _is_concrete(x):
    bad = int(np.sum(~np.isfinite(np.asarray(x))))
    if bad:
      raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); "
                       "expected finite images: attributions of such inputs "
                       "are meaningless")
  else:
    bad = jnp.sum(~jnp.isfinite(x))          # one pass over x, not two
    check_traced(bad == 0,
                 f"{name} has {{}} non-finite values (NaN or inf); expected "
                 "finite images: attributions of such inputs are "
                 "meaningless", bad)


def check_targets(targets, batch: int, num_classes: int, *,
                  name: str = "targets") -> None:
  """Raises ValueError unless ``targets`` is int ``[B]`` / ``[B, C']`` with
  values in ``[0, num_classes)`` or float ``[B, K]`` (values checked at
  once when concrete, under ``checkify`` when traced)."""
  t = targets if hasattr(targets, "dtype") else np.asarray(targets)
  if jnp.issubdtype(t.dtype, jnp.integer):
    if t.ndim not in (1, 2) or t.shape[0] != batch:
      raise ValueError(
          f"integer {name} must be [B] or [B, C'] with B = {batch}; got "
          f"shape {t.shape}")
    if not t.size:
      return
    expected = f"{name} must be class indices in [0, {num_classes})"
    if _is_concrete(t):
      # NumPy: a concrete array captured by a jitted function still traces
      # under jnp reductions.
      lo, hi = int(np.min(np.asarray(t))), int(np.max(np.asarray(t)))
      if lo < 0 or hi >= num_classes:
        raise ValueError(f"{expected}; got values in [{lo}, {hi}]")
    else:
      lo, hi = jnp.min(t), jnp.max(t)
      check_traced((lo >= 0) & (hi < num_classes),
                   expected + "; got values in [{}, {}]", lo, hi)
  elif jnp.issubdtype(t.dtype, jnp.floating):
    if t.shape != (batch, num_classes):
      raise ValueError(
          f"float {name} are output cotangents [B, K] = "
          f"{(batch, num_classes)}; got shape {t.shape}")
  else:
    raise ValueError(f"{name} must be int [B], int [B, C'] or float [B, K]; "
                     f"got dtype {t.dtype}")


def make_targets(targets, batch: int, num_classes: int) -> Targets:
  """Validates ``targets`` and turns them into cotangents ``[C', B, K]``."""
  check_targets(targets, batch, num_classes)
  t = jnp.asarray(targets)
  if jnp.issubdtype(t.dtype, jnp.integer):
    one_hot = jax.nn.one_hot(t, num_classes, dtype=jnp.float32)
    if t.ndim == 1:
      return Targets(one_hot[None], multi=False)
    return Targets(jnp.moveaxis(one_hot, 1, 0), multi=True)
  return Targets(t.astype(jnp.float32)[None], multi=False)


def finish(maps: jax.Array, targets: Targets) -> jax.Array:
  """``[C', B, ...] -> [B, C', ...]`` (multi) or ``[B, ...]``."""
  return jnp.moveaxis(maps, 0, 1) if targets.multi else maps[0]


def num_classes_of(classifier: Classifier, x: jax.Array) -> int:
  return jax.eval_shape(classifier.apply, x)[0].shape[-1]


def prepare(classifier: Classifier, x, targets) -> tuple[jax.Array, Targets]:
  """Checks the inputs; returns ``x`` as float32 and the cotangents."""
  x = jnp.asarray(x)
  check_finite_images(x)
  return x, make_targets(targets, x.shape[0], num_classes_of(classifier, x))


def input_gradients(classifier: Classifier, x: jax.Array,
                    cotangents: jax.Array) -> jax.Array:
  """``d (cot . logits) / d x`` for each cotangent: ``[C', B, H, W, C]``.

  One forward pass; ``vmap`` over the ``C'`` cotangents reuses its VJP.
  """
  _, vjp = jax.vjp(lambda x: classifier.apply(x)[0], x)
  return jax.vmap(lambda c: vjp(c)[0])(cotangents)


def expanded_input_gradients(classifier: Classifier, xs: jax.Array,
                             cotangents: jax.Array) -> jax.Array:
  """Input gradients of ``n`` copies of a batch, ``xs [n, B, H, W, C]``.

  The copies run as one batch of ``n * B`` images; returns
  ``[n, C', B, H, W, C]``.
  """
  n, b = xs.shape[:2]
  g = input_gradients(classifier, xs.reshape(n * b, *xs.shape[2:]),
                      jnp.tile(cotangents, (1, n, 1)))
  return jnp.moveaxis(g.reshape(g.shape[0], n, b, *xs.shape[2:]), 1, 0)


def label_free(maps: jax.Array, classifier: Classifier, x: jax.Array,
               targets) -> jax.Array:
  """Shapes a label-free method's ``[B, H, W]`` maps to its targets:
  ``[B, C']`` targets repeat the map per class; others keep it."""
  if targets is None:
    return maps
  t = make_targets(targets, x.shape[0], num_classes_of(classifier, x))
  if t.multi:
    return jnp.repeat(maps[:, None], t.cotangents.shape[0], axis=1)
  return maps


def layer_gradients(classifier: Classifier, x: jax.Array, layer: str,
                    cotangents: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Activations and gradients at ``layer`` (via ``deltas``), one forward.

  Returns:
    ``(activations [B, h, w, c], gradients [C', B, h, w, c], logits [B, K])``.
  """
  check_layer(classifier, layer)
  shapes = jax.eval_shape(classifier.apply, x)[1]
  check_spatial_layer(layer, shapes[layer].shape)
  zeros = jnp.zeros(shapes[layer].shape, shapes[layer].dtype)

  def run(delta):
    logits, feats = classifier.apply(x, {layer: delta})
    return logits, (feats[layer], logits)

  _, vjp, (acts, logits) = jax.vjp(run, zeros, has_aux=True)
  grads = jax.vmap(lambda c: vjp(c)[0])(cotangents)
  return acts, grads, logits


def check_layer(classifier: Classifier, layer: str) -> None:
  if layer not in classifier.layers:
    raise ValueError(f"unknown layer {layer!r}; this classifier taps "
                     f"{list(classifier.layers)} (build it with "
                     "from_flax(..., layers=[...]) to tap others)")


def check_spatial_layer(layer: str, shape: tuple[int, ...]) -> None:
  """Class activation maps need a spatial layer ``[B, h, w, c]``."""
  if len(shape) != 4:
    raise ValueError(
        f"layer {layer!r} must be a spatial feature map [B, h, w, c] for a "
        f"class activation map; its output has shape {tuple(shape)} (a "
        "pooled, dense or token layer): tap a convolutional layer before "
        "the global pooling")


def check_positive(name: str, value: int) -> None:
  if int(value) < 1:
    raise ValueError(f"{name} must be >= 1; got {value}")


def reduce_channels(maps: jax.Array, how: str | None) -> jax.Array:
  """``[..., H, W, C] -> [..., H, W]`` by ``'sum'`` (default: keeps
  completeness), ``'mean'``, ``'max_abs'``, or None to keep channels."""
  if how is None:
    return maps
  if how == "sum":
    return maps.sum(-1)
  if how == "mean":
    return maps.mean(-1)
  if how == "max_abs":
    return jnp.abs(maps).max(-1)
  raise ValueError(f"channels must be 'sum', 'mean', 'max_abs' or None; got "
                   f"{how!r}")


def baseline_images(x: jax.Array, baseline, blur_sigma: float = 5.0, *,
                    name: str = "baseline") -> jax.Array:
  """``[B, H, W, C]`` baseline images for perturbation methods and metrics.

  ``baseline`` is a number or an array broadcast to ``x`` (0: zero in the
  model's input space, black for images in ``[0, 1]``; pass the normalised
  black pixel for normalised inputs, never the image minimum), or
  ``'blur'``: each channel Gaussian-blurred with ``blur_sigma``. ``name``
  is the caller's argument, for error messages.
  """
  if isinstance(baseline, str):
    if baseline != "blur":
      raise ValueError(f"{name} must be a number, an array or 'blur'; got "
                       f"{baseline!r}")
    if not blur_sigma > 0:
      raise ValueError(f"blur_sigma must be > 0; got {blur_sigma}")
    radius = min(int(np.ceil(3 * blur_sigma)), min(x.shape[1:3]) - 1)
    k = 2 * radius + 1
    chw = postprocess.gaussian_blur(jnp.moveaxis(x, -1, 1), sigma=blur_sigma,
                                    kernel_size=k)
    return jnp.moveaxis(chw, 1, -1)
  b = jnp.asarray(baseline, x.dtype)
  try:
    return jnp.broadcast_to(b, x.shape)
  except ValueError:
    raise ValueError(f"{name} of shape {b.shape} does not broadcast to the "
                     f"images' shape {x.shape}") from None


def _pad_to_chunks(items: jax.Array, per_pass: int) -> tuple[jax.Array, int]:
  """``items [n, ...] -> [n_chunks, chunk, ...]`` padded with copies of the
  first item; returns the padding count too."""
  n = items.shape[0]
  chunk = min(int(per_pass), n)
  pad = (-n) % chunk
  if pad:
    items = jnp.concatenate([items, jnp.repeat(items[:1], pad, 0)])
  return items.reshape(-1, chunk, *items.shape[1:]), pad


def chunked_sum(fn: Callable[[jax.Array], jax.Array], items: jax.Array,
                weights: jax.Array, per_pass: int) -> jax.Array:
  """``sum_i weights[i] * fn(items[i:i+1])``, ``per_pass`` items at a time.

  ``fn`` maps a chunk of items ``[n, ...]`` to per-item results
  ``[n, ...out]``. Memory is bounded by one chunk; padded items get weight
  zero. A ``lax.scan`` keeps the whole method jittable; its body's
  convolutions are made canonical (``loop_convs``).
  """
  fn = loop_convs.canonical_convs(fn)
  items, pad = _pad_to_chunks(items, per_pass)
  weights = jnp.concatenate([weights, jnp.zeros((pad,), weights.dtype)])
  weights = weights.reshape(items.shape[:2])
  out_shape = jax.eval_shape(fn, items[0]).shape[1:]

  def body(acc, xs):
    it, w = xs
    return acc + jnp.tensordot(w, fn(it), axes=1), None

  total, _ = jax.lax.scan(body, jnp.zeros(out_shape, jnp.float32),
                          (items, weights))
  return total


def chunked_map(fn: Callable[[jax.Array], jax.Array], items: jax.Array,
                per_pass: int) -> jax.Array:
  """``fn`` over ``items``, ``per_pass`` at a time, results stacked
  ``[n, ...out]`` (``lax.map`` over chunks; convolutions made canonical,
  ``loop_convs``)."""
  fn = loop_convs.canonical_convs(fn)
  n = items.shape[0]
  chunks, _ = _pad_to_chunks(items, per_pass)
  out = jax.lax.map(fn, chunks)
  return out.reshape(-1, *out.shape[2:])[:n]


def points_per_pass(chunk_size: int, batch: int) -> int:
  """Expansion points (steps, samples, masks, windows) per pass so that one
  pass holds at most ``chunk_size`` images: ``max(1, chunk_size // B)``.

  ``chunk_size`` counts images, so memory stays bounded at any batch size
  (a batch larger than ``chunk_size`` runs one point per pass).
  """
  check_positive("chunk_size", chunk_size)
  return max(1, int(chunk_size) // int(batch))


def legendre_nodes(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Gauss-Legendre nodes and weights on [0, 1] (weights sum to 1)."""
  t, w = np.polynomial.legendre.leggauss(steps)
  return ((t + 1) / 2).astype(np.float32), (w / 2).astype(np.float32)
