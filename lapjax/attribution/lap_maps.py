"""LAP maps as an attribution method (paper 000).

The LAP heads of a LAP-extended or detached model (``lapjax.lap``) already
give, in one forward pass, a probability map per distinguishing clue (DC)
at each LAP's grid. ``lap_maps`` turns them into class maps with the
contract of every other method: the map of class ``c`` is the mean of the
maps of the DCs that promote it (one DC per class for one-vs-others and
binary systems; the background-only class gets a zero map, it has no
evidence region), either from one LAP or depth-aggregated over all of them
(Algorithm 1, the paper's default), resized to the input.

The maps are probabilities in [0, 1] with an absolute meaning: LAP's own
binarisation is the 0.5 threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lapjax.attribution import core, postprocess
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier
from lapjax.lap.aggregate import aggregate_depth
from lapjax.lap.dcs import DCSystem


def dc_maps(classifier: Classifier, x: jax.Array, *,
            layers: Sequence[str]) -> tuple[jax.Array, list[jax.Array]]:
  """``(logits, [maps [B, h_l, w_l, M] per LAP])`` from one forward pass;
  ``layers`` are the LAP-map taps (``LAPSpec.map_layers()``,
  ``detached_map_layers``), shallow to deep."""
  for layer in layers:
    core.check_layer(classifier, layer)
  logits, feats = classifier.apply(x)
  return logits, [feats[layer] for layer in layers]


@compiled
def lap_maps(classifier: Classifier, x: jax.Array, targets, *,
             layers: Sequence[str], dcs: DCSystem, lap: int | None = None,
             decay: float = 0.8, resize: bool = True,
             resize_method: str = "bilinear") -> jax.Array:
  """Class maps from LAP heads.

  Args:
    classifier: a model whose ``layers`` include the LAP-map taps.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float weights over
      classes.
    layers: the LAP-map taps, shallow to deep.
    dcs: the model's DC system (``M`` maps, ``K`` classes).
    lap: index into ``layers`` of a single LAP; None (default) aggregates
      all of them over depth (Algorithm 1, ``decay``).
    decay: the aggregation's decay factor (paper: 0.8).
    resize: resize to ``[H, W]`` (True) or keep the LAP grid.
    resize_method: as for Grad-CAM (``'bilinear'`` by default).

  Returns:
    ``[B, H, W]`` or ``[B, C', H, W]``, in [0, 1].
  """
  x, t = core.prepare(classifier, x, targets)
  if t.cotangents.shape[-1] != dcs.num_classes:
    raise ValueError(f"the DC system has {dcs.num_classes} classes; the "
                     f"model has {t.cotangents.shape[-1]}")
  if not layers:
    raise ValueError("layers must name at least one LAP-map tap")
  _, maps = dc_maps(classifier, x, layers=layers)
  for layer, m in zip(layers, maps):
    if m.ndim != 4 or m.shape[-1] != dcs.num_dcs:
      raise ValueError(f"layer {layer!r} gives shape {m.shape}, not LAP maps "
                       f"[B, h, w, M = {dcs.num_dcs}]")
  if lap is None:                       # aggregate_depth checks nesting
    chosen = aggregate_depth(maps, decay=decay)
  elif not -len(maps) <= lap < len(maps):
    raise ValueError(f"lap must index one of the {len(maps)} layers; got "
                     f"{lap}")
  else:
    chosen = maps[lap]
  per_class = jnp.einsum("km,bhwm->bkhw",
                         jnp.asarray(dcs.class_weights()), chosen)
  out = jnp.einsum("nbk,bkhw->nbhw", t.cotangents, per_class)
  if resize:
    out = postprocess.resize(out, x.shape[1:3], resize_method)
  return core.finish(out, t)
