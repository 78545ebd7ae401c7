"""Token sequences of vision transformers as spatial grids (DESIGN.md §10).

A ViT tap returns tokens ``[B, T, D]``: ``num_prefix_tokens`` class/register
tokens, then ``N = h * w`` patch tokens in row-major grid order, where ``(h,
w) = (H / p_h, W / p_w)`` for an ``[H, W]`` input and ``(p_h, p_w)`` patches.
Methods that need a spatial map read such taps as ``[B, h, w, D]`` through
``tokens_to_grid``; users never write a ``reshape_transform``:
``lapjax.from_flax`` reads a module's ``token_layout()`` and returns its
token taps as grids (``lapjax.classifier``).

Taps without the prefix tokens (a ViT's ``patch_embed``, ``[B, h * w, D]``)
are grids too: ``tap_layout`` picks the layout of a tap from its length.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class TokenLayout(NamedTuple):
  """How a transformer's token taps map onto the image.

  Attributes:
    patch_size: ``(p_h, p_w)`` pixels per patch token.
    num_prefix_tokens: class and register tokens before the patch tokens.
  """
  patch_size: tuple[int, int]
  num_prefix_tokens: int = 1

  def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of an ``[H, W]`` input."""
    return (image_hw[0] // self.patch_size[0],
            image_hw[1] // self.patch_size[1])

  def is_token_tap(self, shape: tuple[int, ...],
                   image_hw: tuple[int, int]) -> bool:
    """Whether a tap of output ``shape`` is tokens on the patch grid of an
    ``[H, W]`` input: ``[B, num_prefix_tokens + h * w, D]`` or (no prefix)
    ``[B, h * w, D]``."""
    h, w = self.grid(image_hw)
    return len(shape) == 3 and shape[1] in (h * w,
                                            self.num_prefix_tokens + h * w)


def module_token_layout(module: Any) -> TokenLayout | None:
  """The ``TokenLayout`` of a transformer module: its ``token_layout()``,
  or its ``backbone``'s for wrappers (detached LAPs, input normalisation);
  None for other models."""
  while module is not None:
    layout = getattr(module, "token_layout", None)
    if callable(layout):
      return layout()
    module = getattr(module, "backbone", None)
  return None


def tap_layout(layout: TokenLayout, num_tokens: int,
               image_hw: tuple[int, int]) -> TokenLayout:
  """The layout of a tap of ``num_tokens`` tokens: ``layout``, or the same
  without prefix tokens when the tap holds only the ``h * w`` patch tokens
  (a ViT's ``patch_embed``). A tap of any other length keeps ``layout``, so
  that ``tokens_to_grid`` reports it."""
  h, w = layout.grid(image_hw)
  if num_tokens == h * w:
    return layout._replace(num_prefix_tokens=0)
  return layout


def tokens_to_grid(tokens: jax.Array, layout: TokenLayout,
                   image_hw: tuple[int, int], *, name: str = "tokens"
                   ) -> jax.Array:
  """``[B, T, D]`` tokens as a ``[B, h, w, D]`` grid (prefix tokens dropped).

  Args:
    tokens: ``[B, num_prefix_tokens + h * w, D]``.
    layout: the model's ``TokenLayout``.
    image_hw: ``(H, W)`` of the input the tokens come from.
    name: what to call ``tokens`` in errors (e.g. the layer path).

  Raises:
    ValueError: when the token count is not the grid plus the prefix tokens.
  """
  h, w = layout.grid(image_hw)
  expected = layout.num_prefix_tokens + h * w
  if tokens.ndim != 3 or tokens.shape[1] != expected:
    raise ValueError(
        f"{name} has shape {tuple(tokens.shape)}; expected [B, {expected}, D]"
        f": {layout.num_prefix_tokens} prefix token(s) and a {h}x{w} patch "
        f"grid ({layout.patch_size[0]}x{layout.patch_size[1]} patches of a "
        f"{image_hw[0]}x{image_hw[1]} input)")
  patches = tokens[:, layout.num_prefix_tokens:]
  return patches.reshape(tokens.shape[0], h, w, tokens.shape[2])


def grid_to_tokens(grid: jax.Array, layout: TokenLayout) -> jax.Array:
  """Inverse of ``tokens_to_grid``, prefix tokens filled with zeros.

  ``[B, h, w, D] -> [B, num_prefix_tokens + h * w, D]``; used to add a
  grid-shaped ``delta`` to a token tap (its gradient then reaches the patch
  tokens only).
  """
  b, h, w, d = grid.shape
  prefix = jnp.zeros((b, layout.num_prefix_tokens, d), grid.dtype)
  return jnp.concatenate([prefix, grid.reshape(b, h * w, d)], axis=1)
