"""Depth aggregation of LAP maps (paper 000, App. C.2, Algorithm 1).

From the deepest LAP to the shallowest: the integrated map ``R`` starts as
the deepest map ``P_L``; at each shallower LAP ``l`` every cell ``r`` of
``R_{l+1}`` covers a block ``p`` of ``P_l``. If ``r >= 0.5`` (a clue is
there) and some element of ``p`` is ``>= 0.5`` (this LAP sees where), the
credit is sharpened: active elements get ``max(r, p * a^(L-l))``, the others
``p * a^(L-l)``; otherwise the whole block inherits ``r``. ``a`` is the
decay factor (0.8 in the paper). Vectorised over images, DCs and cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def resize_grid(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """``[B, h, w, M] -> [B, *size, M]``.

  Nested grids (the usual case: LAPs at pooling places) are exact and
  cheap: each cell repeated when upsampling, block means when
  downsampling. Other sizes: bilinear (area-weighted down).
  """
  b, h, w, m = maps.shape
  hh, ww = size
  if (h, w) == (hh, ww):
    return maps
  if hh % h == 0 and ww % w == 0:
    return jnp.repeat(jnp.repeat(maps, hh // h, axis=1), ww // w, axis=2)
  if h % hh == 0 and w % ww == 0:
    return maps.reshape(b, hh, h // hh, ww, w // ww, m).mean((2, 4))
  return jax.image.resize(maps, (b, hh, ww, m), "bilinear")


def check_nesting(shapes: Sequence[tuple[int, int]]) -> None:
  """Each grid must be an integer refinement of the next (deeper) one."""
  for (h, w), (hd, wd) in zip(shapes[:-1], shapes[1:]):
    if h % hd or w % wd:
      raise ValueError(
          f"LAP map grids do not nest for depth aggregation: {(h, w)} is "
          f"not a whole multiple of the deeper {(hd, wd)} (all grids, "
          f"shallow to deep: {list(shapes)})")


def aggregate_depth(maps: Sequence[jax.Array], *, decay: float = 0.8
                    ) -> jax.Array:
  """Algorithm 1 over maps ``[B, h_l, w_l, M]`` given shallow to deep.

  Returns the integrated map at the shallowest grid, ``[B, h_1, w_1, M]``.
  """
  if not maps:
    raise ValueError("aggregate_depth needs at least one map")
  if not 0 < decay <= 1:
    raise ValueError(f"decay must be in (0, 1]; got {decay}")
  check_nesting([tuple(m.shape[1:3]) for m in maps])
  depth = len(maps)
  r = maps[-1]
  for level in range(depth - 2, -1, -1):
    p = maps[level]
    b, h, w, m = p.shape
    fh, fw = h // r.shape[1], w // r.shape[2]
    blocks = p.reshape(b, r.shape[1], fh, r.shape[2], fw, m)
    active = (r >= 0.5) & (blocks.max((2, 4)) >= 0.5)       # [B, hd, wd, M]
    r_up, active = resize_grid(r, (h, w)), resize_grid(active, (h, w))
    decayed = p * decay ** (depth - 1 - level)
    sharpened = jnp.where(p >= 0.5, jnp.maximum(r_up, decayed), decayed)
    r = jnp.where(active, sharpened, r_up)
  return r
