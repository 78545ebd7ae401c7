"""Attribution Lens: class competition, per pixel, over any method's maps.

For a class set ``C'`` the method's class-wise maps ``A_c`` (all from one
forward pass, ``vmap`` over output cotangents) are turned into a per-pixel
distribution over classes and the target's map is kept where its class is
above chance:

.. math:: A^{soft}_c = \\frac{1}{|T|} \\sum_{1/t \\in T}
   \\mathrm{softmax}_{c \\in C'}(A_c / t), \\quad
   AL_c = A_c \\odot A^{soft}_c \\odot 1[A^{soft}_c > 1/|C'|]

with ``1/t in {1, 5, 100}`` (the paper, Eq. 6-7, the default). The authors'
released code differs, offered as ``form='released'``: one ``1/t = 10``, the
softmax over ``|A_c|``, and the threshold ``A^{soft}_c - 1/|C'| > tau`` with
``tau = 0.01``; with ``channel_wise=True`` the lens runs per colour channel
before the channels are summed (as that code does).

The maps must be raw (no per-class normalisation): normalising each class's
map separately destroys the comparison between classes.

References:
  Paper 003 in ``shared/papers`` ("Hidden in Plain Sight - Class Competition
  Focuses Attribution Maps"), Sec. 3.2-3.4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from lapjax.attribution import core
from lapjax.classifier import Classifier

PAPER_INVERSE_TEMPERATURES = (1.0, 5.0, 100.0)


def lens_refine(maps: jax.Array, *, form: str = "paper",
                inverse_temperatures: Sequence[float] =
                PAPER_INVERSE_TEMPERATURES,
                tau: float = 0.01) -> jax.Array:
  """Refines class-wise maps ``[B, C', ...]`` (class axis 1) for every class.

  Args:
    maps: raw class-wise maps, class axis 1, any trailing axes.
    form: ``'paper'`` or ``'released'`` (see module docstring).
    inverse_temperatures: the ``1/t`` averaged over (paper form).
    tau: threshold margin (released form).

  Returns:
    Maps of the same shape: each class's map times its per-pixel class
    probability, zero where that probability is not above chance.
  """
  c = maps.shape[1]
  if c < 2:
    raise ValueError(f"the lens needs at least 2 classes in the class set; "
                     f"got maps of shape {maps.shape}")
  if form == "paper":
    soft = sum(jax.nn.softmax(maps * s, axis=1)
               for s in inverse_temperatures) / len(inverse_temperatures)
    keep = soft > 1.0 / c
  elif form == "released":
    soft = jax.nn.softmax(jnp.abs(maps) * 10.0, axis=1)
    keep = soft - 1.0 / c > tau
  else:
    raise ValueError(f"form must be 'paper' or 'released'; got {form!r}")
  return maps * soft * keep


def top_k_classes(logits: jax.Array, k: int, *,
                  include_lowest: bool = False) -> jax.Array:
  """The ``k`` most probable classes per image (``[B, k]``), optionally
  followed by the least probable one (``[B, k + 1]``)."""
  core.check_positive("k", k)
  top = jnp.argsort(-logits, axis=-1, stable=True)[:, :k]
  if include_lowest:
    top = jnp.concatenate([top, jnp.argmin(logits, -1)[:, None]], axis=1)
  return top.astype(jnp.int32)


def best_vs_worst(logits: jax.Array) -> jax.Array:
  """``[B, 2]``: the most and the least probable class of each image."""
  return jnp.stack([jnp.argmax(logits, -1), jnp.argmin(logits, -1)],
                   1).astype(jnp.int32)


def attribution_lens(method: Callable[..., jax.Array],
                     classifier: Classifier, x: jax.Array,
                     class_set: jax.Array, *, target=None,
                     form: str = "paper",
                     inverse_temperatures: Sequence[float] =
                     PAPER_INVERSE_TEMPERATURES,
                     tau: float = 0.01, channel_wise: bool = False,
                     **method_kwargs) -> jax.Array:
  """Attribution Lens around ``method``.

  Args:
    method: any lapjax attribution method (``method(classifier, x, targets,
      **method_kwargs)``); it is called once with ``[B, C']`` targets.
    classifier: the model.
    x: ``[B, H, W, C]``.
    class_set: ``[B, C']`` int classes to contrast (predefined, or from
      ``top_k_classes`` / ``best_vs_worst``).
    target: None for the refined maps of every class in the set
      (``[B, C', H, W]``), or ``[B]`` classes for the refined map of each
      image's target (``[B, H, W]``); each target must be in its set.
    form, inverse_temperatures, tau: see ``lens_refine``.
    channel_wise: refine per colour channel, then sum (methods with a
      ``channels`` option only; the released code's order).
    **method_kwargs: options of ``method`` (``layer``, ``key``, ...).
  """
  class_set = jnp.asarray(class_set)
  if class_set.ndim != 2 or not jnp.issubdtype(class_set.dtype, jnp.integer):
    raise ValueError(f"class_set must be int [B, C']; got shape "
                     f"{class_set.shape}, dtype {class_set.dtype}")
  if channel_wise:
    method_kwargs["channels"] = None
  maps = method(classifier, x, class_set, **method_kwargs)
  if channel_wise:
    maps = jnp.moveaxis(maps, -1, 2)                   # [B, C', Ch, H, W]
  refined = lens_refine(maps, form=form,
                        inverse_temperatures=inverse_temperatures, tau=tau)
  if channel_wise:
    refined = refined.sum(2)
  if target is None:
    return refined
  target = jnp.asarray(target)
  if target.shape != class_set.shape[:1]:
    raise ValueError(f"target must be [B] = {class_set.shape[:1]}; got "
                     f"shape {target.shape}")
  member = class_set == target[:, None]
  if not isinstance(member, jax.core.Tracer) and not bool(
      member.any(1).all()):
    bad = [int(i) for i in jnp.flatnonzero(~member.any(1))[:5]]
    raise ValueError(f"target classes must be in their class sets; images "
                     f"{bad} have targets {target[jnp.array(bad)].tolist()} "
                     f"outside {class_set[jnp.array(bad)].tolist()}")
  index = jnp.argmax(member, axis=1)
  return jnp.take_along_axis(
      refined, index[:, None, None, None], axis=1)[:, 0]
