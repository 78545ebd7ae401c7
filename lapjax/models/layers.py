"""Building blocks shared by lapjax models: each tap point is its own module.

Pooling and activations are wrapped in named modules so that every stage and
pooling output has a path (``'block2'``, ``'pool1'``) that
``lapjax.from_flax`` can tap and perturb without changing the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ModuleDef = Any
Activation = Callable[[jax.Array], jax.Array]
# 'SAME', 'VALID', or explicit ((top, bottom), (left, right)) pads.
Padding = str | Sequence[tuple[int, int]]


def symmetric_padding(pad: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's ``padding=pad``: ``pad`` rows and columns on every side.

  Flax's ``'SAME'`` puts the odd pad of a strided window at the bottom and
  right only, which shifts every window by one pixel against PyTorch.
  """
  return ((pad, pad), (pad, pad))


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
  padding: Padding = "SAME"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, self.strides, use_bias=False,
                padding=self.padding, name="conv")(x)
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

  Explicit ``padding`` pairs pad max pooling with ``-inf`` and count padded
  zeros in average pooling, as PyTorch's ``MaxPool2d``/``AvgPool2d`` do
  (``count_include_pad=True``).
  """
  window: int = 2
  strides: int = 2
  kind: str = "max"
  padding: Padding = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.window
    b, h, w, c = x.shape
    if (self.kind == "max" and self.strides == s and self.padding == "VALID"
        and h % s == 0 and w % s == 0):
      return x.reshape(b, h // s, s, w // s, s, c).max(axis=(2, 4))
    pool = {"max": nn.max_pool, "avg": nn.avg_pool}[self.kind]
    padding = (self.padding if isinstance(self.padding, str)
               else tuple(tuple(p) for p in self.padding))
    return pool(x, (s, s), (self.strides, self.strides), padding=padding)


class GlobalAvgPool(nn.Module):
  """``[B, H, W, C] -> [B, C]``, mean over space."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
  """``[out, size]`` averaging weights of PyTorch's adaptive average pooling.

  Output ``i`` averages inputs ``floor(i * size / out)`` up to (excluding)
  ``ceil((i + 1) * size / out)``: windows overlap when ``size`` is not a
  multiple of ``out``, and repeat inputs when ``size < out``.
  """
  weights = np.zeros((out, size), np.float32)
  for i in range(out):
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]
                      ) -> jax.Array:
  """PyTorch's ``adaptive_avg_pool2d``, ``[B, H, W, C] -> [B, h, w, C]``.

  .. math::
    y_{ij} = \\frac{1}{|R_i||C_j|} \\sum_{r \\in R_i, c \\in C_j} x_{rc},
    \\quad R_i = [\\lfloor iH/h \\rfloor, \\lceil (i+1)H/h \\rceil)

  (and ``C_j`` likewise), computed as two small matrix products.
  """
  rows = adaptive_pool_matrix(x.shape[1], output_size[0])
  cols = adaptive_pool_matrix(x.shape[2], output_size[1])
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class AdaptiveAvgPool(nn.Module):
  """``adaptive_avg_pool`` as a named module (a tap), e.g. VGG's 7x7 pool."""
  output_size: tuple[int, int] = (7, 7)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return adaptive_avg_pool(x, self.output_size)


PoolFactory = Callable[..., "nn.Module | None"]


def standard_pool(name: str, *, window: int | None, strides: int | None = None,
                  padding: Padding = "VALID", optional: bool = False
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


def batch_norm_with(*, epsilon: float, momentum: float = 0.9
                    ) -> Callable[[bool], ModuleDef]:
  """A ``norm(train)`` factory like ``batch_norm`` with another epsilon
  (PyTorch's ``eps``; e.g. 1e-3 in Inception-V3 and EfficientNet-Lite).

  ``momentum`` is Flax's, one minus PyTorch's (0.9 for PyTorch's 0.1).
  """
  def norm(train: bool) -> ModuleDef:
    return functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=momentum, epsilon=epsilon)
  return norm


def inject_backbone_act(wrapper: nn.Module) -> None:
  """Gives a wrapper's ``backbone`` the wrapper's ``act``.

  For models that wrap a ``backbone`` and take ``act`` (None: the
  backbone's own), so that ``wrapper.clone(act=guided_relu)`` reaches every
  activation as it does for every lapjax model. Call it in the wrapper's
  ``__post_init__``, before ``super().__post_init__()``.
  """
  act = wrapper.act
  if act is not None and getattr(wrapper.backbone, "act", None) is not act:
    object.__setattr__(wrapper, "backbone", wrapper.backbone.clone(act=act))


def model_activation(module: nn.Module) -> Activation | None:
  """The activation ``module`` runs: its ``act``, or for a wrapper whose
  ``act`` is None (``inject_backbone_act``), its backbone's."""
  act = getattr(module, "act", None)
  while act is None and hasattr(module, "backbone"):
    module = module.backbone
    act = getattr(module, "act", None)
  return act
