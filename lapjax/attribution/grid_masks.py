"""Binary masks made of grid cells, and the masked sums ``sum(a * m)`` of SLOC.

A grid mask switches whole cells of a rectangular grid on or off. It is stored
as its cells ``[N, gh, gw]`` and the cell edges ``[N, gh + 1]`` (rows) and
``[N, gw + 1]`` (columns), pixel indices clipped to the image, so cells at the
border may be partial or empty. This is enough to compute, exactly:

* ``sum(a * m)`` for every mask from one summed-area table of ``a`` (a sum of
  rectangle sums), and
* ``sum_n w_n m_n`` (the gradient of any function of those sums) from
  rectangle updates on a 2-D difference array and two cumulative sums,

so SLOC's optimiser never touches ``N x H x W`` dense masks
(REFERENCE-NOTES.md, SLOC). ``masked_sums`` accepts dense masks ``[N, H, W]``
too; both paths give the same values and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MAX_DRAWS = 1024            # draws of one mask before a cell is forced on
MAX_EXPECTED_DRAWS = 100    # a concrete p needing more on average is refused


class GridMasks(NamedTuple):
  """``N`` binary masks made of grid cells (a pytree; ``vmap`` adds axes).

  Attributes:
    cells: ``[N, gh, gw]`` bool, which cells are on.
    row_edges: ``[N, gh + 1]`` int32, non-decreasing pixel rows in
      ``[0, H]``; cell row ``i`` covers rows ``[row_edges[i], row_edges[i+1])``.
    col_edges: ``[N, gw + 1]`` int32, the same for columns.
  """
  cells: jax.Array
  row_edges: jax.Array
  col_edges: jax.Array

  def to_dense(self, size: tuple[int, int]) -> jax.Array:
    """``[N, H, W]`` float32 masks (1 = keep the pixel)."""
    h, w = size
    rows = _cell_index(self.row_edges, h)                      # [N, H]
    cols = _cell_index(self.col_edges, w)                      # [N, W]
    pick = jax.vmap(lambda c, r, k: c[r][:, k])
    return pick(self.cells, rows, cols).astype(jnp.float32)

  def sizes(self) -> jax.Array:
    """``[N]`` float32: the number of on pixels ``|m|`` of each mask."""
    return jax.vmap(_size)(*self)


Masks = jax.Array | GridMasks | Sequence[GridMasks]


def _size(cells: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """On pixels of one grid mask."""
  dh = jnp.diff(rows).astype(jnp.float32)
  dw = jnp.diff(cols).astype(jnp.float32)
  return dh @ cells.astype(jnp.float32) @ dw


def _cell_index(edges: jax.Array, size: int) -> jax.Array:
  """``[N, E]`` edges -> ``[N, size]``: the cell each pixel falls in."""
  pixels = jnp.arange(size)
  idx = jax.vmap(lambda e: jnp.searchsorted(e, pixels, side="right"))(edges)
  return jnp.clip(idx - 1, 0, edges.shape[-1] - 2)


def grid_edges(offset: jax.Array, patch: int, size: int, cells: int
               ) -> jax.Array:
  """Edges ``[cells + 1]`` of a grid with cell side ``patch`` whose first
  interior edge lies at ``offset`` (in ``[0, patch)``), clipped to
  ``[0, size]``."""
  k = jnp.arange(cells + 1)
  return jnp.clip(offset + (k - 1) * patch, 0, size).astype(jnp.int32)


def num_grid_cells(patch: int, size: int) -> int:
  """Cells per axis that cover ``size`` pixels at any offset."""
  return (size - 1) // patch + 2


def sample_grid_masks(key: jax.Array, size: tuple[int, int], patch: int,
                      p: float | jax.Array, num: int) -> GridMasks:
  """``num`` random grid masks: square cells of side ``patch`` at a random
  phase (uniform offset of the cell edges, so border cells are partial),
  each cell on with probability ``p``; masks with no pixel on are redrawn.

  Mask ``i`` depends only on ``(key, i, p)``: draw ``j`` of mask ``i`` uses
  ``fold_in(fold_in(key, i), j)``, its cells are on where a uniform draw is
  below ``p`` (so masks at different ``p`` are coupled, not independent).
  See ``sample_grid_masks_batched`` for the redraw limit.

  Args:
    key: a ``jax.random.key``.
    size: ``(H, W)``.
    patch: cell side in pixels, ``1 <= patch <= min(H, W)``.
    p: probability that a cell is on, in ``(0, 1)``; may be traced.
    num: number of masks.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num))
  return sample_grid_masks_batched(keys, size, patch, p)


def sample_grid_masks_batched(keys: jax.Array, size: tuple[int, int],
                              patch: int, p: float | jax.Array
                              ) -> GridMasks:
  """One grid mask per key, ``keys [...]`` -> masks with leading ``[...]``;
  ``p`` broadcasts to ``keys.shape``. Draw ``j`` of a mask uses
  ``fold_in(key, j)``.

  Use this instead of ``jax.vmap`` of ``sample_grid_masks``: the redraws
  run as one ``while_loop`` over every mask with a scalar condition, which
  ``checkify`` (``checks.jit_checked``) can transform; a ``vmap`` of it is a
  batched while loop, which it cannot. Redrawing stops after ``MAX_DRAWS``
  draws; a mask still empty then (only for a ``p`` so small that
  ``check_p_for_grid`` refuses it when concrete) gets the one cell of its
  last draw that a larger ``p`` would switch on first, so the loop ends
  under ``jit`` too.
  """
  h, w = size
  if not 1 <= int(patch) <= min(h, w):
    raise ValueError(f"patch must be in [1, min(H, W) = {min(h, w)}] pixels "
                     f"for an image of size {(h, w)}; got {patch}")
  check_p(p)
  check_p_for_grid(p, size, patch)
  gh, gw = num_grid_cells(patch, h), num_grid_cells(patch, w)
  batch = keys.shape
  keys = keys.reshape(-1)
  ps = jnp.broadcast_to(jnp.asarray(p, jnp.float32), batch).reshape(-1)

  def draw(k):
    u = jax.random.uniform(k, (gh * gw + 2,))
    offset = jnp.minimum((u[-2:] * patch).astype(jnp.int32), patch - 1)
    return (u[:-2].reshape(gh, gw),
            grid_edges(offset[0], patch, h, gh),
            grid_edges(offset[1], patch, w, gw))

  def draws(j):
    return jax.vmap(lambda k: draw(jax.random.fold_in(k, j)))(keys)

  def empty(drawn):                                            # [M]
    u, rows, cols = drawn
    return jax.vmap(_size)(u < ps[:, None, None], rows, cols) == 0

  def redraw(state):
    j, drawn = state
    fresh = draws(j + 1)
    again = empty(drawn)
    return j + 1, jax.tree.map(
        lambda new, old: jnp.where(
            again.reshape(-1, *[1] * (old.ndim - 1)), new, old),
        fresh, drawn)

  _, (u, rows, cols) = jax.lax.while_loop(
      lambda state: jnp.any(empty(state[1])) & (state[0] < MAX_DRAWS - 1),
      redraw, (0, draws(0)))
  cells = u < ps[:, None, None]
  area = (jnp.diff(rows)[:, :, None] * jnp.diff(cols)[:, None, :]) > 0
  first = jnp.argmin(jnp.where(area, u, jnp.inf).reshape(-1, gh * gw), -1)
  forced = (jnp.arange(gh * gw) == first[:, None]).reshape(-1, gh, gw)
  cells = jnp.where(empty((u, rows, cols))[:, None, None], forced, cells)
  return jax.tree.map(lambda v: v.reshape(*batch, *v.shape[1:]),
                      GridMasks(cells, rows, cols))


def check_p(p) -> None:
  """``p`` (one value or several) must lie in (0, 1); tracers pass."""
  if not isinstance(p, jax.core.Tracer):
    arr = np.asarray(p)
    if not np.all((arr > 0) & (arr < 1)):
      raise ValueError(f"p (probability that a cell is on) must be in (0, 1); "
                       f"got {p}")


def check_p_for_grid(p, size: tuple[int, int], patch: int) -> None:
  """Refuses a concrete ``p`` whose masks would be empty so often that each
  would be drawn more than ``MAX_EXPECTED_DRAWS`` times on average (a grid
  of side ``patch`` has at least ``ceil(H / patch) * ceil(W / patch)``
  cells with pixels); tracers pass."""
  if isinstance(p, jax.core.Tracer):
    return
  cells = -(-size[0] // patch) * -(-size[1] // patch)
  p_empty = float((1.0 - np.min(np.asarray(p, np.float64))) ** cells)
  if p_empty > 1.0 - 1.0 / MAX_EXPECTED_DRAWS:
    least = 1.0 - (1.0 - 1.0 / MAX_EXPECTED_DRAWS) ** (1.0 / cells)
    raise ValueError(
        f"p must be >= {least:.3g} for {patch}-pixel cells on {tuple(size)} "
        f"images (>= {cells} cells: more than {MAX_EXPECTED_DRAWS} draws per "
        f"non-empty mask otherwise); got {p}, which leaves every cell off "
        f"with probability {p_empty:.6f}")


def is_grid(masks: Masks) -> bool:
  """Grid masks (one set or a sequence of sets), not a dense array."""
  return isinstance(masks, (GridMasks, list, tuple))


def as_list(masks: Sequence[GridMasks] | GridMasks) -> list[GridMasks]:
  """One grid mask set or a sequence of them, as a list."""
  return [masks] if isinstance(masks, GridMasks) else list(masks)


# -- sum(a * m) from a summed-area table; its VJP from a difference array ----

def _rect_coefficients(cells: jax.Array) -> jax.Array:
  """``[gh, gw]`` on/off -> ``[gh + 1, gw + 1]`` corner weights ``K`` such that
  the mask is the 2-D prefix sum of ``K`` placed at the cell edges."""
  c = jnp.pad(cells.astype(jnp.float32), 1)
  return c[1:, 1:] - c[:-1, 1:] - c[1:, :-1] + c[:-1, :-1]


def _prefix_sum_2d(a: jax.Array) -> jax.Array:
  """2-D inclusive prefix sum. Row-by-row ``lax.scan`` (vectorised over the
  other axis) is 3x faster than ``jnp.cumsum`` on XLA:CPU at 224 x 224."""
  def down(v):
    return jax.lax.scan(lambda c, row: (c + row, c + row),
                        jnp.zeros(v.shape[1:], v.dtype), v)[1]
  return down(down(a).T).T


@jax.custom_vjp
def _grid_sums(a: jax.Array, masks: GridMasks) -> jax.Array:
  sat = jnp.pad(_prefix_sum_2d(a), ((1, 0), (1, 0)))

  def one(cells, rows, cols):
    corners = sat[rows[:, None], cols[None, :]]                # [gh+1, gw+1]
    rect = (corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1]
            + corners[:-1, :-1])                               # [gh, gw]
    return jnp.sum(jnp.where(cells, rect, 0.0))

  return jax.vmap(one)(*masks)


def _grid_sums_fwd(a, masks):
  return _grid_sums(a, masks), (a.shape, masks)


def _grid_sums_bwd(res, g):
  (h, w), masks = res
  k = jax.vmap(_rect_coefficients)(masks.cells) * g[:, None, None]
  rows = jnp.broadcast_to(masks.row_edges[:, :, None], k.shape)
  cols = jnp.broadcast_to(masks.col_edges[:, None, :], k.shape)
  diff = jnp.zeros((h + 1, w + 1), jnp.float32).at[rows, cols].add(k)
  grad = _prefix_sum_2d(diff)[:h, :w]
  zero = jax.tree.map(
      lambda v: np.zeros(v.shape, jax.dtypes.float0), masks)
  return grad, zero


_grid_sums.defvjp(_grid_sums_fwd, _grid_sums_bwd)


def masked_sums(a: jax.Array, masks: Masks) -> jax.Array:
  """``[N]``: ``sum(a * m)`` for each mask; differentiable in ``a``.

  Args:
    a: ``[H, W]`` map.
    masks: dense ``[N, H, W]`` (0/1 values), a ``GridMasks`` or a sequence of
      them (sums concatenated in order). Grid masks use the summed-area-table
      path; its gradient is exact (a difference array), never dense.
  """
  if is_grid(masks):
    return jnp.concatenate([_grid_sums(a, m) for m in as_list(masks)])
  return jnp.einsum("nhw,hw->n", masks, a,
                    preferred_element_type=jnp.float32)


def mask_sizes(masks: Masks) -> jax.Array:
  """``[N]`` float32: on pixels per mask."""
  if is_grid(masks):
    return jnp.concatenate([m.sizes() for m in as_list(masks)])
  return jnp.sum(masks, axis=(1, 2), dtype=jnp.float32)


def to_dense(masks: Masks, size: tuple[int, int]) -> jax.Array:
  """Any masks as dense ``[N, H, W]`` float32."""
  if is_grid(masks):
    return jnp.concatenate([m.to_dense(size) for m in as_list(masks)])
  return jnp.asarray(masks, jnp.float32)
