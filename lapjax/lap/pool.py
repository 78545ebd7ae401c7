"""LAP-Pool: pooling weighted by LAP importance (paper 000, Eq. 6-7, App. C.1).

For each window ``K`` of the input ``X [B, H, W, F]``::

  I = LAPHead(X)                       [B, H, W, M]   DC probabilities
  Q = A(I)                             [B, H, W]      aggregated importance
  w_i = exp(-alpha^2 (max_K Q - Q_i)^2) + eps         Gaussian around the max
  O_K = sum_K w_i X_i / sum_K w_i

``alpha`` is trainable: 0 gives average pooling, large values pass the
features of the most important element (max pooling by importance).
``eps`` keeps every weight positive, so gradients reach every element.

Choices the paper leaves open, each a config field (``lap.*``): the
aggregation ``A`` (``'sum'`` by default, or ``'max'``, ``'mean'``),
``alpha`` initialised to 2 and ``eps = 1e-4``.

The module records its maps in the ``'lap'`` collection (``maps``, and
``disc_maps`` for the discriminative scoring module of App. C.5, which sees
the input through a stop-gradient); apply with ``mutable=['lap']`` to read
them. The head is the submodule ``head``, so ``lapjax.from_flax`` can also
tap ``'<pool name>/head'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.lap.head import LAPHead

AGGREGATIONS = ("sum", "max", "mean")


def aggregate(maps: jax.Array, how: str) -> jax.Array:
  """``A``: ``[..., M] -> [...]`` by sum, max or mean over DCs."""
  if how == "sum":
    return maps.sum(-1)
  if how == "max":
    return maps.max(-1)
  if how == "mean":
    return maps.mean(-1)
  raise ValueError(f"aggregate must be one of {AGGREGATIONS}; got {how!r}")


def importance_pool(x: jax.Array, q: jax.Array, alpha: jax.Array, *,
                    window: int | None, strides: int | None = None,
                    padding: str = "VALID", eps: float = 1e-4) -> jax.Array:
  """Eq. 6-7 for features ``x [B, H, W, F]`` and scores ``q [B, H, W]``.

  ``window=None`` pools globally (``[B, F]``). Windows that tile the input
  are a reshape; others (overlap, ``'SAME'`` padding) extract patches, and
  padded elements get weight 0.
  """
  b, h, w, f = x.shape
  a2 = jnp.square(alpha)
  if window is None:
    qf = q.reshape(b, h * w)
    wt = jnp.exp(-a2 * jnp.square(qf.max(-1, keepdims=True) - qf)) + eps
    return jnp.einsum("bn,bnf->bf", wt, x.reshape(b, h * w, f)) / wt.sum(
        -1, keepdims=True)
  s = strides or window
  if s == window and padding == "VALID" and h % s == 0 and w % s == 0:
    qk = q.reshape(b, h // s, s, w // s, s)
    wt = jnp.exp(-a2 * jnp.square(qk.max((2, 4), keepdims=True) - qk)) + eps
    num = jnp.einsum("bisjt,bisjtf->bijf", wt, x.reshape(b, h // s, s,
                                                         w // s, s, f))
    return num / wt.sum((2, 4))[..., None]
  k2 = window * window

  def patches(a):                    # [B, H, W, c] -> [B, h', w', c, k*k]
    p = jax.lax.conv_general_dilated_patches(
        a, (window, window), (s, s), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return p.reshape(*p.shape[:3], a.shape[-1], k2)

  valid = patches(jnp.ones((b, h, w, 1), x.dtype))[..., 0, :] > 0.5
  qp = patches(q[..., None])[..., 0, :]
  qmax = jnp.max(jnp.where(valid, qp, -jnp.inf), -1, keepdims=True)
  wt = jnp.where(valid, jnp.exp(-a2 * jnp.square(qmax - qp)) + eps, 0.0)
  return jnp.einsum("bijk,bijfk->bijf", wt, patches(x)) / wt.sum(
      -1)[..., None]


class LAPPool(nn.Module):
  """A pooling layer weighted by its own LAP head's importance maps.

  Replaces max/average pooling (``window``, ``strides``, ``padding``),
  global pooling (``window=None``: ``[B, H, W, F] -> [B, F]``), or a strided
  convolution (a stride-1 convolution followed by a ``LAPPool`` with the
  convolution's kernel size and stride).

  Attributes:
    num_dcs: ``M``.
    window: pooling window (square), or None for global pooling.
    strides: stride (default ``window``).
    padding: ``'VALID'`` or ``'SAME'``.
    head_widths: hidden widths of the LAP head.
    aggregation: ``A``, one of ``AGGREGATIONS``.
    alpha_init: initial ``alpha`` (trainable scalar).
    eps: added to every weight.
    discriminative: also run the discriminative scoring module (App. C.5).
  """
  num_dcs: int
  window: int | None = 2
  strides: int | None = None
  padding: str = "VALID"
  head_widths: Sequence[int] = (64,)
  aggregation: str = "sum"
  alpha_init: float = 2.0
  eps: float = 1e-4
  discriminative: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    maps = LAPHead(self.num_dcs, self.head_widths, name="head")(x)
    self.sow("lap", "maps", maps)
    if self.discriminative:
      disc = LAPHead(self.num_dcs, self.head_widths, name="disc_head")(
          jax.lax.stop_gradient(x))
      self.sow("lap", "disc_maps", disc)
    alpha = self.param("alpha", nn.initializers.constant(self.alpha_init),
                       ())
    return importance_pool(x, aggregate(maps, self.aggregation), alpha,
                           window=self.window, strides=self.strides,
                           padding=self.padding, eps=self.eps)
