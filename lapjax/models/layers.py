"""Building blocks shared by lapjax models: each tap point is its own module.

Pooling and activations are wrapped in named modules so that every stage and
pooling output has a path (``'block2'``, ``'pool1'``) that
``lapjax.from_flax`` can tap and perturb without changing the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
Activation = Callable[[jax.Array], jax.Array]


def batch_norm(train: bool) -> ModuleDef:
  """BatchNorm as lapjax models use it: running statistics unless training."""
  return functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5)


class ConvNormAct(nn.Module):
  """``act(norm(conv(x)))``, the unit of the small CNN and the ResNet stem."""
  features: int
  norm: ModuleDef
  act: Activation
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, self.strides, use_bias=False,
                name="conv")(x)
    return self.act(self.norm(name="norm")(x))


class Pool(nn.Module):
  """Local max or average pooling, ``[B, H, W, C] -> [B, H/s, W/s, C]``.

  A module (not a function) so that it has a name to tap, and so that LAP-Pool
  can stand in its place. Non-overlapping max windows that tile the input
  (``window == strides``, ``VALID``, sizes divisible) are computed as a
  reshape and a max: the same values, and a backward pass that XLA:CPU runs
  far faster than the ``select_and_scatter`` of ``nn.max_pool`` (the input
  gradient of the default CNN: 280 ms -> 171 ms for 64 images). At tied
  maxima the gradient is shared equally rather than given to the first.
  """
  window: int = 2
  strides: int = 2
  kind: str = "max"
  padding: str = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.window
    b, h, w, c = x.shape
    if (self.kind == "max" and self.strides == s and self.padding == "VALID"
        and h % s == 0 and w % s == 0):
      return x.reshape(b, h // s, s, w // s, s, c).max(axis=(2, 4))
    pool = {"max": nn.max_pool, "avg": nn.avg_pool}[self.kind]
    return pool(x, (s, s), (self.strides, self.strides),
                padding=self.padding)


class GlobalAvgPool(nn.Module):
  """``[B, H, W, C] -> [B, C]``, mean over space."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


PoolFactory = Callable[..., "nn.Module | None"]


def standard_pool(name: str, *, window: int | None, strides: int | None = None,
                  padding: str = "VALID", optional: bool = False
                  ) -> nn.Module | None:
  """The pooling a lapjax model uses at ``name``: max pooling, or global
  average pooling for ``window=None``; None at ``optional`` places (where a
  LAP-extended model may add a pool that the plain model does not have).

  Models call their ``pool`` attribute (this function by default) for every
  pooling place, so ``lapjax.lap.LAPSpec`` can put LAP-Pools there.
  """
  if optional:
    return None
  if window is None:
    return GlobalAvgPool(name=name)
  return Pool(window=window, strides=strides or window, padding=padding,
              name=name)
