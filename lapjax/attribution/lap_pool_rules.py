"""How LRP and DeepLIFT cross a LAP-Pool (``lapjax.lap.pool``).

A LAP-Pool averages each window ``K`` of its input ``z`` with weights from
its own head, which reads ``z`` itself::

  O_K = sum_{i in K} w_{K,i} z_i,    sum_{i in K} w_{K,i} = 1,
  w_{K,i} = u_{K,i} / sum_{j in K} u_{K,j},  u = exp(-alpha^2 (max Q - Q)^2)
  + eps,  Q = A(head(z)).

The weights are positive, sum to exactly 1 over each window (padded
elements get 0) and are shared by all channels. Both rules treat them as
gates: relevance, or the difference from the reference, is carried by the
pooled features only, none by the head that computed the weights (the
"signal-take-all" treatment of multiplicative gates in LRP, Arras et al.
2017, as LRP for attention treats attention weights as constants, Ali et
al. 2022).

* **LRP**: with the weights held constant the LAP-Pool is a linear map, and
  its gradient hands relevance down by the z-rule, ``R_i = sum_K w_{K,i}
  z_i / O_K R_K`` (no stabiliser), as for average pooling: conserving,
  since the weights sum to 1. The head is run as the plain model (its
  ``Dense`` layers get no rule) and its maps are cut from the gradient.
* **The canonizer**: a per-channel affine map ``y = s * o + t`` (an
  inference-mode BatchNorm) after a LAP-Pool commutes with it, ``s O_K + t
  = sum_K w_{K,i} (s z_i + t)``, since the weights sum to 1 and do not
  depend on the channel. So a BatchNorm after a LAP-Pool whose input is a
  ``Conv`` / ``Dense`` output is merged into that layer, which is then
  pooled with the same (fixed) weights; paper 000's replacement of a
  strided convolution (stride-1 convolution, LAP-Pool, BatchNorm) becomes
  a merged convolution and a weighted average.
* **DeepLIFT**: each product ``w z`` changes by ``w_bar Delta z + Delta w
  z_bar`` (bars: means of the values at ``x`` and at the reference; the
  Shapley split of a product of two factors, exact). The feature part
  gives each element the multiplier ``w_bar`` (the mean of the fixed-weight
  pool's gradients at ``x`` and at the reference); the gate part of a
  window, ``sum_i Delta w_{K,i} z_bar_i`` (summed over the channels
  against their output multipliers), which only the head could carry, goes
  to the window's elements and channels in proportion to ``|Delta z_{i,f}|``
  (gate changes credited to the features they gate; a weight is shared by
  the channels and depends on all of them, so a channel that does not
  change can still see its weights change). The shares sum to ``Delta
  O_K``, so summation-to-delta holds through the pool: a window whose
  inputs do not change in any channel has equal head outputs (the head
  reads each element on its own), hence equal weights and no gate part.
  Elements whose change is rounding noise (the same value computed twice)
  get a share of that size, not the gate change of their window.

References:
  Arras et al., "Explaining Recurrent Neural Network Predictions in
  Sentiment Analysis", WASSA 2017 (LRP through multiplicative gates).
  Ali et al., "XAI for Transformers: Better Explanations through
  Conservative Propagation", ICML 2022 (attention weights as constants).
  Shrikumar et al., "Learning Important Features Through Propagating
  Activation Differences", ICML 2017 (rescale rule).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.lap.head import LAPHead
from lapjax.lap.pool import LAPPool, aggregate, importance_pool

# ``pool_at(values, q)``: a LAP-Pool's weighted average of ``values`` with
# the weights that importance ``q [B, H, W]`` gives (linear in ``values``).
PoolAt = Callable[[jax.Array, jax.Array], jax.Array]


class HeadCapture:
  """LAP-Pool calls seen by an interceptor (``flax.linen.intercept_methods``).

  ``route`` takes the LAP cases of an interceptor: a ``LAPHead`` runs as
  the plain model, its layers left alone and its maps cut from the
  gradient (``head``); a LAP-Pool goes to the caller's rule, which gets
  from ``pool`` its output, the fixed-weight pool and the importance its
  head gave.
  """

  def __init__(self):
    self.heads_running = 0
    self.pools: list[tuple[tuple[str, ...], list]] = []

  def head(self, module: nn.Module, next_fun, args, kwargs) -> jax.Array:
    self.heads_running += 1
    try:
      maps = next_fun(*args, **kwargs)
    finally:
      self.heads_running -= 1
    if (self.pools and module.name == "head"
        and tuple(module.path[:-1]) == self.pools[-1][0]):
      self.pools[-1][1].append(maps)
    return jax.lax.stop_gradient(maps)

  def pool(self, module: LAPPool, next_fun, args, kwargs
           ) -> tuple[jax.Array, PoolAt, jax.Array]:
    """``(output, pool_at, q)`` of one LAP-Pool call."""
    self.pools.append((tuple(module.path), []))
    try:
      out = next_fun(*args, **kwargs)
    finally:
      _, maps = self.pools.pop()
    if len(maps) != 1:
      raise ValueError(f"LAP-Pool {'/'.join(module.path)!r} ran its head "
                       f"{len(maps)} times; expected once")
    params = module.variables["params"]
    q = jax.lax.stop_gradient(aggregate(maps[0], module.aggregation,
                                        params.get("dc_logits")))
    pool_at = functools.partial(
        importance_pool, alpha=jax.lax.stop_gradient(params["alpha"]),
        window=module.window, strides=module.strides,
        padding=module.padding, eps=module.eps)
    return out, pool_at, q

  def route(self, module: nn.Module, next_fun, args, kwargs, on_pool
            ) -> jax.Array | None:
    """An interceptor's LAP cases: inside a head the plain model, a head
    run by ``head``, a LAP-Pool by ``on_pool(module, next_fun, args,
    kwargs)``; ``None`` for any other call (the caller's rules apply)."""
    if self.heads_running:           # a layer of a LAP head
      return next_fun(*args, **kwargs)
    if isinstance(module, LAPHead):
      return self.head(module, next_fun, args, kwargs)
    if isinstance(module, LAPPool):
      return on_pool(module, next_fun, args, kwargs)
    return None


def _window_mean(pool_at: PoolAt, values: jax.Array) -> jax.Array:
  """The plain mean of each window (equal importance: equal weights)."""
  return pool_at(values, jnp.zeros(values.shape[:3], values.dtype))


def deeplift_layer(pool_at: PoolAt):
  """``pool_at(z, q)`` whose backward pass is the DeepLIFT rule of the
  module docstring against ``z0`` and ``q0`` (the reference's input and
  importance); ``q`` and ``q0`` get no gradient."""

  @jax.custom_vjp
  def layer(z, z0, q, q0):
    return pool_at(z, q)

  def forward(z, z0, q, q0):
    return pool_at(z, q), (z, z0, q, q0)

  def backward(saved, g):
    z, z0, q, q0 = saved
    spread = jax.vjp(lambda v: pool_at(v, q), z)[1](g)[0]      # sum g w
    spread0 = jax.vjp(lambda v: pool_at(v, q0), z0)[1](g)[0]   # sum g w0
    dz = z - z0
    middle = (z + z0) / 2
    # The gate part of each window, all channels: sum g Delta w z_bar ...
    gate = (g * (pool_at(middle, q) - pool_at(middle, q0))).sum(
        -1, keepdims=True)
    # ... shared in proportion to |dz| over the window's elements and
    # channels (window sum = window mean * count).
    magnitude, to_inputs = jax.vjp(lambda v: _window_mean(pool_at, v),
                                   jnp.abs(dz).sum(-1, keepdims=True))
    positive = magnitude > 0
    per_window = jnp.where(positive,
                           gate / jnp.where(positive, magnitude, 1), 0)
    m = (spread + spread0) / 2 + jnp.sign(dz) * to_inputs(per_window)[0]
    return m, jnp.zeros_like(z0), jnp.zeros_like(q), jnp.zeros_like(q0)

  layer.defvjp(forward, backward)
  return layer
