"""Complexity of attribution maps: sparseness (Gini index).

Per-example values ``[B]``; the sign handling is explicit (``sign='abs'`` by
default, as Chalasani et al. define sparseness on magnitudes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sparseness(maps, *, sign: str = "abs") -> jax.Array:
  """Gini index of each map's (non-negative) values, in [0, 1 - 1/n].

  .. math:: G = \\frac{\\sum_{i=1}^n (2i - n - 1) a_{(i)}}{n \\sum_i a_i}

  with ``a`` sorted ascending. 0 for a uniform map, ``1 - 1/n`` for a map with
  a single non-zero pixel. Higher is sparser. NaN for an all-zero map (no
  mass: undefined), rather than adding a small constant to every pixel,
  and for a map holding NaN or infinite values (invalid).

  Args:
    maps: ``[B, H, W]``; not modified.
    sign: ``'abs'`` (magnitudes) or ``'positive'`` (negative values set to
      0). Gini needs non-negative values.

  References:
    Chalasani et al., "Concise Explanations of Neural Networks using
    Adversarial Training", ICML 2020.
  """
  maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim != 3:
    raise ValueError(f"maps must be [B, H, W]; got shape {maps.shape}")
  if sign == "abs":
    a = jnp.abs(maps)
  elif sign == "positive":
    a = jax.nn.relu(maps)
  else:
    raise ValueError(f"sign must be 'abs' or 'positive'; got {sign!r}")
  a = jnp.sort(a.reshape(a.shape[0], -1), axis=-1)
  n = a.shape[1]
  i = jnp.arange(1, n + 1, dtype=jnp.float32)
  total = a.sum(-1)
  g = ((2 * i - n - 1) * a).sum(-1) / (n * jnp.where(total > 0, total, 1.0))
  finite = jnp.isfinite(maps).all(axis=(1, 2))
  return jnp.where((total > 0) & finite, g, jnp.nan)
