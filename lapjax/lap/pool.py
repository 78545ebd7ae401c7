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
aggregation ``A`` (``'sum'`` by default, ``'max'``, ``'mean'``, or the
trainable ``'weighted'``), ``alpha`` initialised to 2 and ``eps = 1e-4``.

The trainable aggregation (the paper: ``Q`` is computed "using either a
trainable or fixed function such as sum or max") is a weighted sum whose
weights are a softmax scaled by ``M``::

  Q = M * sum_m softmax(v)_m I_m          v in R^M, initialised to 0

so it starts as ``'sum'`` exactly and learns how much each DC counts. The
weights stay positive (a DC's importance never lowers ``Q``) and sum to
``M`` (a common scale would only duplicate ``alpha``, since Eq. 7 sees
``alpha^2 (max Q - Q)^2``). With one DC it is ``'sum'`` and ``v`` gets no
gradient.

The module records its maps in the ``'lap'`` collection (``maps``, and
``disc_maps`` for the discriminative scoring module of App. C.5, which sees
the input through a stop-gradient); apply with ``mutable=['lap']`` to read
them. The head is the submodule ``head``, so ``lapjax.from_flax`` can also
tap ``'<pool name>/head'``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.lap.head import LAPHead

AGGREGATIONS = ("sum", "max", "mean", "weighted")


def aggregate(maps: jax.Array, how: str,
              dc_logits: jax.Array | None = None) -> jax.Array:
  """``A``: ``[..., M] -> [...]`` by sum, max or mean over DCs, or
  (``'weighted'``) ``M * sum_m softmax(dc_logits)_m maps_m``."""
  if how == "weighted":
    if dc_logits is None or dc_logits.shape != maps.shape[-1:]:
      raise ValueError(f"aggregation 'weighted' needs dc_logits of shape "
                       f"{maps.shape[-1:]}; got "
                       f"{None if dc_logits is None else dc_logits.shape}")
    weights = maps.shape[-1] * jax.nn.softmax(dc_logits)
    return (maps * weights).sum(-1)
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
  are a reshape; others (overlap, ``'SAME'`` padding) sum over the
  ``window**2`` strided slices of the padded input, one per window offset,
  and padded elements get weight 0 (10x faster on XLA:CPU than extracting
  patches, which copies the input ``window**2`` times). The weighted sums
  are products and sums, not ``einsum``: XLA:CPU runs them (and their
  gradients) about 2x faster.
  """
  b, h, w, f = x.shape
  a2 = jnp.square(alpha)
  if window is None:
    qf = q.reshape(b, h * w)
    wt = jnp.exp(-a2 * jnp.square(qf.max(-1, keepdims=True) - qf)) + eps
    return (wt[..., None] * x.reshape(b, h * w, f)).sum(1) / wt.sum(
        -1, keepdims=True)
  s = strides or window
  if s == window and padding == "VALID" and h % s == 0 and w % s == 0:
    qk = q.reshape(b, h // s, s, w // s, s)
    wt = jnp.exp(-a2 * jnp.square(qk.max((2, 4), keepdims=True) - qk)) + eps
    num = (wt[..., None] * x.reshape(b, h // s, s, w // s, s, f)).sum((2, 4))
    return num / wt.sum((2, 4))[..., None]
  pads = (jax.lax.padtype_to_pads((h, w), (window, window), (s, s), padding)
          if isinstance(padding, str) else [tuple(p) for p in padding])
  ho = (h + sum(pads[0]) - window) // s + 1
  wo = (w + sum(pads[1]) - window) // s + 1

  def padded(a):
    return jnp.pad(a, ((0, 0), *pads) + ((0, 0),) * (a.ndim - 3))

  def at(a, di, dj):   # the window elements at offset (di, dj): [B, ho, wo]
    return a[:, di:di + (ho - 1) * s + 1:s, dj:dj + (wo - 1) * s + 1:s]

  xp, qp, realp = padded(x), padded(q), padded(jnp.ones((1, h, w), bool))
  offsets = [(di, dj) for di in range(window) for dj in range(window)]
  real = [at(realp, *o) for o in offsets]
  qs = [at(qp, *o) for o in offsets]
  qmax = functools.reduce(jnp.maximum, [jnp.where(r, qo, -jnp.inf)
                                        for r, qo in zip(real, qs)])
  num = den = 0.0
  for o, r, qo in zip(offsets, real, qs):
    # Padded elements: weight 0, and a finite branch (no NaN gradient).
    wt = jnp.where(r, jnp.exp(-a2 * jnp.square(
        qmax - jnp.where(r, qo, qmax))) + eps, 0.0)
    num = num + wt[..., None] * at(xp, *o)
    den = den + wt
  return num / den[..., None]


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
    padding: ``'VALID'``, ``'SAME'`` or explicit ``((top, bottom), (left,
      right))`` (a replaced strided convolution's own padding).
    head_widths: hidden widths of the LAP head.
    aggregation: ``A``, one of ``AGGREGATIONS`` (``'weighted'``: the
      trainable weighted sum of the module docstring, parameter
      ``dc_logits [M]``).
    alpha_init: initial ``alpha`` (trainable scalar).
    eps: added to every weight.
    discriminative: also run the discriminative scoring module (App. C.5).
  """
  num_dcs: int
  window: int | None = 2
  strides: int | None = None
  padding: str | tuple[tuple[int, int], tuple[int, int]] = "VALID"
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
    dc_logits = (self.param("dc_logits", nn.initializers.zeros,
                            (self.num_dcs,))
                 if self.aggregation == "weighted" else None)
    q = aggregate(maps, self.aggregation, dc_logits)
    return importance_pool(x, q, alpha,
                           window=self.window, strides=self.strides,
                           padding=self.padding, eps=self.eps)
