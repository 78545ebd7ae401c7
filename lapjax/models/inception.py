"""Inception-V3 (torchvision), PyTorch-equal, with torchvision's names.

Submodules carry torchvision's names (``Conv2d_1a_3x3`` .. ``Mixed_7c``,
each convolution a ``BasicConv2d`` with ``conv`` and ``bn``), so the
checkpoint layout is the module path itself. Numerics as torchvision's:
convolutions without bias followed by BatchNorm (epsilon 1e-3) and ReLU,
max pools 3x3/2 without padding, the branches' average pools 3x3/1 with
padding 1 counting the padded zeros (``count_include_pad=True``), explicit
symmetric paddings. The auxiliary classifier only runs in training in
torchvision and is not built (its ``AuxLogits.*`` tensors are ignored by
the layout); dropout is inactive at inference.

``transform_input=True`` (what torchvision's pretrained ``inception_v3``
sets) re-normalises an ImageNet-normalised input to the ``(x - 0.5) / 0.5``
normalisation the Google weights were trained with:

.. math::
  x'_c = x_c \\frac{\\sigma_c}{0.5} + \\frac{\\mu_c - 0.5}{0.5}

Taps: ``Mixed_5b`` .. ``Mixed_7c`` (``[B, 8, 8, 2048]`` at 299 x 299, the
default CAM layer), and every other named layer; logits from ``fc``.

References:
  Szegedy et al., "Rethinking the Inception Architecture for Computer
  Vision", CVPR 2016.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.models.card import (
  IMAGENET_MEAN,
  IMAGENET_STD,
  TORCH_LEAF,
  Layout,
  ModelCard,
  VariablePath,
)
from lapjax.models.layers import (
  Activation,
  ModuleDef,
  PoolFactory,
  batch_norm_with,
  standard_pool,
)


class BasicConv2d(nn.Module):
  """``act(bn(conv(x)))``; ``padding`` as PyTorch's ``(pad_h, pad_w)``."""
  features: int
  kernel_size: tuple[int, int]
  norm: ModuleDef
  act: Activation
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size,
                (self.strides, self.strides), padding=((ph, ph), (pw, pw)),
                use_bias=False, name="conv")(x)
    return self.act(self.norm(name="bn")(x))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class _Mixed(nn.Module):
  """Base of the Inception blocks: ``conv(name, features, kernel, ...)``."""
  divisor: int
  norm: ModuleDef
  act: Activation

  def conv(self, name: str, features: int, kernel=(1, 1), strides: int = 1,
           padding=(0, 0)) -> BasicConv2d:
    if isinstance(kernel, int):
      kernel = (kernel, kernel)
    return BasicConv2d(features // self.divisor, kernel, self.norm, self.act,
                       strides, padding, name=name)


class InceptionA(_Mixed):
  """1x1, 5x5, double 3x3 and pooled 1x1 branches (Mixed_5b-d)."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv("branch1x1", 64)(x)
    b5 = self.conv("branch5x5_1", 48)(x)
    b5 = self.conv("branch5x5_2", 64, 5, padding=(2, 2))(b5)
    b3 = self.conv("branch3x3dbl_1", 64)(x)
    b3 = self.conv("branch3x3dbl_2", 96, 3, padding=(1, 1))(b3)
    b3 = self.conv("branch3x3dbl_3", 96, 3, padding=(1, 1))(b3)
    bp = self.conv("branch_pool", self.pool_features)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Mixed):
  """Grid reduction 35 -> 17 (Mixed_6a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv("branch3x3", 384, 3, strides=2)(x)
    bd = self.conv("branch3x3dbl_1", 64)(x)
    bd = self.conv("branch3x3dbl_2", 96, 3, padding=(1, 1))(bd)
    bd = self.conv("branch3x3dbl_3", 96, 3, strides=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Mixed):
  """Factorised 7x7 branches (Mixed_6b-e)."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = self.conv("branch1x1", 192)(x)
    b7 = self.conv("branch7x7_1", c7)(x)
    b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
    bd = self.conv("branch7x7dbl_1", c7)(x)
    bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
    bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
    bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Mixed):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv("branch3x3_1", 192)(x)
    b3 = self.conv("branch3x3_2", 320, 3, strides=2)(b3)
    b7 = self.conv("branch7x7x3_1", 192)(x)
    b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
    b7 = self.conv("branch7x7x3_4", 192, 3, strides=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Mixed):
  """Expanded filter bank with split 1x3 / 3x1 outputs (Mixed_7b-c)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv("branch1x1", 320)(x)
    b3 = self.conv("branch3x3_1", 384)(x)
    b3 = jnp.concatenate(
        [self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
         self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)],
        axis=-1)
    bd = self.conv("branch3x3dbl_1", 448)(x)
    bd = self.conv("branch3x3dbl_2", 384, 3, padding=(1, 1))(bd)
    bd = jnp.concatenate(
        [self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
         self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)],
        axis=-1)
    bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
         "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b",
         "Mixed_7c")


class InceptionV3(nn.Module):
  """torchvision's ``Inception3`` at inference; see the module docstring.

  Input ``x [B, H, W, 3]`` (H, W >= 75), ImageNet-normalised when
  ``transform_input`` (the pretrained weights' convention); logits
  ``[B, num_classes]``.

  Attributes:
    num_classes: logits per image.
    transform_input: re-normalise to ``(x - 0.5) / 0.5`` first (see above).
    width_divisor: every channel count divided by this (1 is the real
      network; tests use 16 for a small model of the same structure).
    act: activation, injectable (guided backprop passes its own ReLU).
    norm: ``norm(train) -> Module class`` (BatchNorm with epsilon 1e-3).
    pool: pooling factory (``standard_pool``). A LAP-extended Inception-V3
      (``lapjax.lap.LAPSpec``) may replace ``maxpool1``, ``maxpool2`` (the
      stem's 3x3/2 max pools) and ``global_pool`` (the paper's ImageNet
      LAP-InceptionV3 replaces ``global_pool`` and explains ``Mixed_7a``
      with a detached LAP, App. D.1.3). The max-pool branches inside
      ``Mixed_6a`` and ``Mixed_7a`` stay max pools.
  """
  num_classes: int
  transform_input: bool = False
  width_divisor: int = 1
  act: Activation = nn.relu
  norm: ModuleDef = batch_norm_with(epsilon=1e-3)
  pool: PoolFactory = standard_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.transform_input:
      mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    norm, d, act = self.norm(train), self.width_divisor, self.act
    conv = functools.partial(BasicConv2d, norm=norm, act=act)
    x = conv(32 // d, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32 // d, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64 // d, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = self.pool("maxpool1", window=3, strides=2)(x)
    x = conv(80 // d, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192 // d, (3, 3), name="Conv2d_4a_3x3")(x)
    x = self.pool("maxpool2", window=3, strides=2)(x)
    blocks: Sequence[nn.Module] = (
        InceptionA(d, norm, act, pool_features=32, name="Mixed_5b"),
        InceptionA(d, norm, act, pool_features=64, name="Mixed_5c"),
        InceptionA(d, norm, act, pool_features=64, name="Mixed_5d"),
        InceptionB(d, norm, act, name="Mixed_6a"),
        InceptionC(d, norm, act, channels_7x7=128, name="Mixed_6b"),
        InceptionC(d, norm, act, channels_7x7=160, name="Mixed_6c"),
        InceptionC(d, norm, act, channels_7x7=160, name="Mixed_6d"),
        InceptionC(d, norm, act, channels_7x7=192, name="Mixed_6e"),
        InceptionD(d, norm, act, name="Mixed_7a"),
        InceptionE(d, norm, act, name="Mixed_7b"),
        InceptionE(d, norm, act, name="Mixed_7c"),
    )
    for block in blocks:
      x = block(x)
    x = self.pool("global_pool", window=None)(x)
    return nn.Dense(self.num_classes, name="fc")(x)


def torchvision_layout() -> Layout:
  """torchvision's ``Inception3`` names: the module path with ``.`` for
  ``/`` (``Mixed_6b.branch7x7_2.conv.weight``); ``AuxLogits.*`` ignored."""

  def key(path: VariablePath) -> str:
    _, *mods, leaf = path
    return ".".join(mods) + "." + TORCH_LEAF[leaf]

  return Layout("torchvision", key, ignore=(r"(^|\.)num_batches_tracked$",
                                            r"^AuxLogits\."))


CARDS: dict[str, ModelCard] = {
    # torchvision's pretrained builder sets transform_input=True: images are
    # normalised with ImageNet's mean/std like every other torchvision model.
    "inception_v3": ModelCard(
        name="inception_v3",
        build=functools.partial(InceptionV3, transform_input=True),
        input_size=(299, 299), cam_layer="Mixed_7c", taps=MIXED,
        layouts={"torchvision": torchvision_layout()}, resize_size=342,
        interpolation="bilinear"),
}
