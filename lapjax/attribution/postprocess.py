"""Post-processing of attribution maps: composable, eps-safe, per map.

Every function takes maps ``[..., H, W]`` and treats each trailing ``[H, W]``
slice as one map; none mutates its input. Constant maps never produce NaN:
normalisations map them to 0. The methods resize and blur with these same
functions (``core`` imports this module, never the reverse).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-8
RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos3")


def resize(maps: jax.Array, size: tuple[int, int] | None,
           method: str = "bilinear") -> jax.Array:
  """Resizes the last two axes of ``maps`` to ``size = (H, W)`` with a named
  method (``RESIZE_METHODS``); ``size=None`` keeps them."""
  if size is None or tuple(maps.shape[-2:]) == tuple(size):
    return maps
  if method not in RESIZE_METHODS:
    raise ValueError(f"resize method must be one of {RESIZE_METHODS}; got "
                     f"{method!r}")
  return jax.image.resize(maps, (*maps.shape[:-2], *size), method=method)


def relu(maps: jax.Array) -> jax.Array:
  return jax.nn.relu(maps)


def absolute(maps: jax.Array) -> jax.Array:
  return jnp.abs(maps)


def normalize_minmax(maps: jax.Array, eps: float = EPS) -> jax.Array:
  """``(m - min) / (max - min)`` per map; a constant map becomes 0."""
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  span = hi - lo
  return jnp.where(span > eps, (maps - lo) / jnp.where(span > eps, span, 1.0),
                   0.0)


def normalize_max_abs(maps: jax.Array, eps: float = EPS) -> jax.Array:
  """``m / max |m|`` per map (keeps the sign); an all-zero map stays 0."""
  top = jnp.abs(maps).max(axis=(-2, -1), keepdims=True)
  return jnp.where(top > eps, maps / jnp.where(top > eps, top, 1.0), 0.0)


def clip_percentile(maps: jax.Array, q: float = 99.0) -> jax.Array:
  """Clips each map at its ``q``-th percentile (from above)."""
  flat = maps.reshape(*maps.shape[:-2], -1)
  cap = jnp.percentile(flat, q, axis=-1)[..., None, None]
  return jnp.minimum(maps, cap)


def gaussian_blur(maps: jax.Array, *, sigma: float = 2.0,
                  kernel_size: int = 11) -> jax.Array:
  """Separable Gaussian blur per map, reflect padding (torchvision's).

  Paper 003 blurs with an 11 x 11 kernel, sigma 2, before region
  attribution.
  """
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f"kernel_size must be odd and >= 1; got {kernel_size}")
  if sigma <= 0:
    raise ValueError(f"sigma must be > 0; got {sigma}")
  r = kernel_size // 2
  k = jnp.exp(-0.5 * (jnp.arange(-r, r + 1) / sigma) ** 2)
  k = (k / k.sum()).astype(maps.dtype)
  pad = [(0, 0)] * (maps.ndim - 2) + [(r, r), (r, r)]
  m = jnp.pad(maps, pad, mode="reflect")
  h, w = maps.shape[-2:]
  m = sum(k[i] * m[..., i:i + h, :] for i in range(kernel_size))
  return sum(k[i] * m[..., :, i:i + w] for i in range(kernel_size))


def pixel_ranks(maps: jax.Array) -> jax.Array:
  """``[..., H, W]`` int: 0 for each map's highest pixel; ties broken by a
  stable sort (the lower flat index ``y * W + x`` first), never at random."""
  h, w = maps.shape[-2:]
  flat = maps.reshape(*maps.shape[:-2], h * w)
  order = jnp.argsort(-flat, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).reshape(maps.shape)


def binarize_top_k(maps: jax.Array, fraction: float) -> jax.Array:
  """The ``ceil(fraction * H * W)`` highest pixels of each map.

  Exactly that many pixels are True; ties as in ``pixel_ranks``.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
  h, w = maps.shape[-2:]
  return pixel_ranks(maps) < int(-(-fraction * h * w // 1))


def binarize_top_count(maps: jax.Array, counts: jax.Array) -> jax.Array:
  """The ``counts[b]`` highest pixels of map ``b`` (``[B, H, W]``, ``[B]``).

  The LAP paper's "top-scored selection" (App. D.2.2) with ``counts`` the
  ground-truth region sizes; stable ties as in ``binarize_top_k``.
  """
  counts = jnp.asarray(counts)
  if maps.ndim != 3 or counts.shape != maps.shape[:1]:
    raise ValueError(f"maps must be [B, H, W] and counts [B]; got shapes "
                     f"{maps.shape} and {counts.shape}")
  return pixel_ranks(maps) < counts[:, None, None]


def binarize_mean_std(maps: jax.Array, k: float = 1.0) -> jax.Array:
  """Pixels above ``mean + k * std`` of their map (LAP App. D.2.2)."""
  mean = maps.mean(axis=(-2, -1), keepdims=True)
  std = maps.std(axis=(-2, -1), keepdims=True)
  return maps > mean + k * std


def binarize_threshold(maps: jax.Array, threshold: float) -> jax.Array:
  """Pixels strictly above a fixed ``threshold``."""
  return maps > threshold
