"""ResNet-18/34/50 in Flax linen with injectable activation and norm.

Follows ``flax/examples/imagenet/models.py`` (He et al., 2016), with each stage
a named module so that stage outputs are taps: ``stem``, ``stem_pool``
(absent with ``small_inputs``), ``stage1`` .. ``stage4``, ``global_pool``;
logits from ``head``. ``small_inputs=True`` replaces the 7x7/2 stem and its
max pool by a 3x3/1 stem (the CIFAR-style stem), so a 64x64 input ends at
8x8 in ``stage4`` instead of 2x2.

References:
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from lapjax.models.layers import (
  Activation,
  ConvNormAct,
  ModuleDef,
  PoolFactory,
  batch_norm,
  standard_pool,
)


class BasicBlock(nn.Module):
  """Two 3x3 convs with an identity or 1x1 projection shortcut."""
  features: int
  strides: int
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = (self.strides, self.strides)
    y = nn.Conv(self.features, (3, 3), s, use_bias=False, name="conv1")(x)
    y = self.act(self.norm(name="norm1")(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
    y = self.norm(name="norm2", scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), s, use_bias=False, name="proj")(x)
      x = self.norm(name="proj_norm")(x)
    return self.act(x + y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4) with a projection shortcut."""
  features: int
  strides: int
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = (self.strides, self.strides)
    y = nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)
    y = self.act(self.norm(name="norm1")(y))
    y = nn.Conv(self.features, (3, 3), s, use_bias=False, name="conv2")(y)
    y = self.act(self.norm(name="norm2")(y))
    y = nn.Conv(self.features * 4, (1, 1), use_bias=False, name="conv3")(y)
    y = self.norm(name="norm3", scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features * 4, (1, 1), s, use_bias=False,
                  name="proj")(x)
      x = self.norm(name="proj_norm")(x)
    return self.act(x + y)


class Stage(nn.Module):
  """``num_blocks`` residual blocks; the first one may downsample."""
  block: ModuleDef
  num_blocks: int
  features: int
  strides: int
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = self.block(self.features, self.strides if i == 0 else 1, self.norm,
                     self.act, name=f"block{i + 1}")(x)
    return x


class ResNet(nn.Module):
  """A ResNet classifier; see the module docstring for its taps.

  Attributes:
    num_classes: logits per image.
    stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    block: ``BasicBlock`` or ``BottleneckBlock``.
    width: channels of the first stage (doubled at each later stage).
    small_inputs: 3x3 stride-1 stem without max pool, for small images.
    act: activation, injectable (guided backprop passes its own ReLU).
    norm: ``norm(train) -> Module class``, injectable (default BatchNorm).
    pool: pooling factory (``standard_pool``). A LAP-extended ResNet
      (``lapjax.lap.LAPSpec``) may replace ``stem_pool`` and
      ``global_pool``, and add ``stage2_pool`` .. ``stage4_pool``: a 2x2
      LAP-Pool on the previous stage's output in place of the stage's
      stride-2 convolutions (the paper's "LAP-Pool replacing the strided
      convolution of layer 4, fed by layer 3").
  """
  num_classes: int
  stage_sizes: Sequence[int]
  block: ModuleDef = BasicBlock
  width: int = 64
  small_inputs: bool = False
  act: Activation = nn.relu
  norm: ModuleDef = batch_norm
  pool: PoolFactory = standard_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self.norm(train)
    if self.small_inputs:
      x = ConvNormAct(self.width, norm, self.act, name="stem")(x)
    else:
      x = ConvNormAct(self.width, norm, self.act, kernel_size=(7, 7),
                      strides=(2, 2), name="stem")(x)
      x = self.pool("stem_pool", window=3, strides=2, padding="SAME")(x)
    for i, size in enumerate(self.stage_sizes):
      strides = 1 if i == 0 else 2
      down = (self.pool(f"stage{i + 1}_pool", window=2, optional=True)
              if i > 0 else None)
      if down is not None:
        x, strides = down(x), 1
      x = Stage(self.block, size, self.width * 2**i, strides, norm,
                self.act, name=f"stage{i + 1}")(x)
    x = self.pool("global_pool", window=None)(x)
    return nn.Dense(self.num_classes, name="head")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=BottleneckBlock)
