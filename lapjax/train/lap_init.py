"""Starting a LAP run from another run: DC systems and selective fine-tuning.

Paper 000 (Sec. 2.3, App. D.1.3) uses LAPs in three modes: detached LAPs
trained on a frozen backbone (post-hoc), LAP-Pools trained with the network
(plugged in), and *selective fine-tuning*: LAP-Pools put into the pretrained
network, initialised "with the pretrained backbone and the trained detached
LAPs", and fine-tuned with some layers frozen (``config.trainable``).

A detached run stores its heads as ``laps/<layer>`` (and ``laps/<layer>_disc``
for the discriminative scoring module) beside ``backbone/...``; a plugged
model has them at ``<place>/head`` (and ``<place>/disc_head``) beside the
backbone's own names. ``seed_pooled_heads`` moves them across with the
explicit pairs of ``config.lap.heads_from``: a detached head on a layer
becomes the head of the LAP-Pool that pools that layer's output (for the
small CNN, ``block{i}`` feeds ``pool{i}`` and the last block feeds
``global_pool``). Both heads map features ``[..., F]`` to ``M`` DC
probabilities, so the same parameters compute the same maps there.

``dc_difference`` states how two runs' DC systems differ: a run that
learned other DCs (another class set, or other DC+ / DC- sets) cannot
initialise LAP heads, and its backbone decides other classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np


def _dc_sets(row: np.ndarray, names: Sequence[str]) -> str:
  plus = [names[c] for c in np.flatnonzero(row == 1)]
  minus = [names[c] for c in np.flatnonzero(row == -1)]
  return f"DC+ {plus}, DC- {minus}"


def dc_difference(source: np.ndarray, target: np.ndarray,
                  source_names: Sequence[str], target_names: Sequence[str]
                  ) -> list[str]:
  """How the DC system ``source [M, N]`` differs from ``target [M', N']``.

  Classes are compared by name and position, DCs by their DC+ / DC- class
  sets, DC by DC. Returns one sentence per difference (empty: the same
  system).
  """
  source, target = np.asarray(source), np.asarray(target)
  out = []
  if list(source_names) != list(target_names):
    out.append(f"classes {list(source_names)} vs {list(target_names)}")
  if source.shape[0] != target.shape[0]:
    out.append(f"{source.shape[0]} DCs vs {target.shape[0]}")
  if source.shape[1] != target.shape[1]:
    return out
  for m in range(min(source.shape[0], target.shape[0])):
    if not np.array_equal(source[m], target[m]):
      out.append(f"DC {m}: {_dc_sets(source[m], source_names)} vs "
                 f"{_dc_sets(target[m], target_names)}")
  for m in range(target.shape[0], source.shape[0]):
    out.append(f"DC {m} only in the source run: "
               f"{_dc_sets(source[m], source_names)}")
  for m in range(source.shape[0], target.shape[0]):
    out.append(f"DC {m} only in this run: "
               f"{_dc_sets(target[m], target_names)}")
  return out


def check_same_dc_system(source: Mapping[str, Any], target: Mapping[str, Any],
                         *, workdir: str) -> None:
  """Refuses to start a LAP run from a run with another DC system.

  Args:
    source: ``data_info`` of the run in ``workdir`` (``dc_membership``,
      ``class_names``).
    target: ``data_info`` of the run being started.
    workdir: the source run (named in the error).

  Raises:
    ValueError: the DC systems differ; the message lists how.
  """
  diff = dc_difference(source["dc_membership"], target["dc_membership"],
                       source["class_names"], target["class_names"])
  if diff:
    raise ValueError(
        f"init_from={workdir} was trained with another DC system than this "
        f"run (source vs this run: {'; '.join(diff)}); its LAPs and "
        "backbone decide other clues and classes. Start from a run on the "
        "same data (config.data) or train this one from scratch")


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(p): tuple(np.shape(v))
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _head_name(layer: str) -> str:
  return layer.replace("/", "_")         # DetachedLAPModel's naming


def seed_pooled_heads(params: dict[str, Any], source: Mapping[str, Any],
                      pairs: Sequence[tuple[str, str]], *,
                      detached_layers: Sequence[str], workdir: str
                      ) -> tuple[dict[str, Any], list[str]]:
  """``params`` of a plugged LAP model with heads from a detached run.

  Args:
    params: the plugged model's parameters (top-level dict; LAP-Pools at
      their places, with ``head`` and optionally ``disc_head``).
    source: the detached run's parameters (``laps`` and ``backbone``).
    pairs: ``(detached layer, place)`` (``config.lap.heads_from``); an
      empty place leaves that head out.
    detached_layers: the layers the detached run explains
      (its ``config.lap.places``).
    workdir: the detached run (named in errors).

  Returns:
    ``(params, lines)``: the parameters with every named head copied (the
    discriminative head too where both models have one) and one line per
    copied, left-out or freshly initialised head, for the log.

  Raises:
    ValueError: a pair names a layer the run does not explain; a detached
      head that no pair names (it would be dropped silently); a place that
      is not a LAP-Pool of this model; or heads whose parameter shapes
      differ (other ``lap.head_widths``, or a layer with another channel
      count than the pool's input).
  """
  named = [layer for layer, _ in pairs]
  unknown = [n for n in named if n not in detached_layers]
  if unknown:
    raise ValueError(f"config.lap.heads_from names layers {unknown} that "
                     f"the detached run {workdir} does not explain; its "
                     f"detached LAPs are on {list(detached_layers)}")
  pools = [name for name, sub in params.items()
           if isinstance(sub, Mapping) and "head" in sub]
  orphans = [n for n in detached_layers if n not in named]
  if orphans:
    raise ValueError(
        f"the detached heads on {orphans} of {workdir} have no LAP-Pool to "
        f"go to: name each in config.lap.heads_from as (layer, place), "
        f"place one of this model's LAP-Pools {pools}, or as (layer, '') "
        "to leave it out")
  laps = source["laps"]
  params = dict(params)
  lines = []
  for layer, place in pairs:
    name = _head_name(layer)
    if not place:
      lines.append(f"laps/{name}: left out (config.lap.heads_from)")
      continue
    if place not in pools:
      raise ValueError(f"config.lap.heads_from place {place!r} is not a "
                       f"LAP-Pool of this model; its LAP-Pools are {pools}")
    pool = dict(params[place])
    for src, dst in ((name, "head"), (f"{name}_disc", "disc_head")):
      if src not in laps and dst not in pool:
        continue
      if src not in laps:
        lines.append(f"{place}/{dst}: freshly initialised (the detached run "
                     "has no discriminative head)")
        continue
      if dst not in pool:
        lines.append(f"laps/{src}: left out (this model has no "
                     "discriminative head)")
        continue
      have, want = _shapes(laps[src]), _shapes(pool[dst])
      if have != want:
        raise ValueError(
            f"the detached head laps/{src} of {workdir} does not fit "
            f"{place}/{dst}: parameter shapes {have} vs {want} (the heads "
            "need the same config.lap.head_widths, and layer "
            f"{layer!r} must have the channels of the input of {place!r})")
      pool[dst] = laps[src]
      lines.append(f"{place}/{dst} <- laps/{src}")
    params[place] = pool
  return params, lines
