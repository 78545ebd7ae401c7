"""A small fast CNN for the clue benchmark, tests and demos."""

from __future__ import annotations

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


class SmallCNN(nn.Module):
  """Conv-norm-act blocks with 2x2 max pooling between them.

  Taps (``lapjax.from_flax`` layer names), shallow to deep: ``block1``,
  ``pool1``, ``block2``, ..., ``block{n}`` (the last conv block, the usual
  Grad-CAM layer), ``global_pool`` (``[B, C]``); the logits come from
  ``head``. With the default 4 blocks a 64x64 input gives 8x8 last features.

  Attributes:
    num_classes: logits per image.
    widths: channels of each block; a 2x2 max pool follows all but the last.
    convs_per_block: conv-norm-act units in each block.
    act: activation, injectable (guided backprop passes its own ReLU).
    norm: ``norm(train) -> Module class``, injectable (default BatchNorm).
    pool: pooling factory (``standard_pool``; ``lapjax.lap.LAPSpec`` puts
      LAP-Pools at chosen places).
  """
  num_classes: int
  widths: Sequence[int] = (32, 64, 128, 128)
  convs_per_block: int = 1
  act: Activation = nn.relu
  norm: ModuleDef = batch_norm
  pool: PoolFactory = standard_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self.norm(train)
    for i, width in enumerate(self.widths):
      x = _Block(width, self.convs_per_block, norm, self.act,
                 name=f"block{i + 1}")(x)
      if i < len(self.widths) - 1:
        x = self.pool(f"pool{i + 1}", window=2)(x)
    x = self.pool("global_pool", window=None)(x)
    return nn.Dense(self.num_classes, name="head")(x)


class _Block(nn.Module):
  features: int
  convs: int
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.convs):
      x = ConvNormAct(self.features, self.norm, self.act, name=f"unit{j}")(x)
    return x
