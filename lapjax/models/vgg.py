"""VGG-11 and VGG-16, with and without BatchNorm, equal to torchvision's.

``features`` are blocks of 3x3 convolutions (padding 1, with bias; with
``batch_norm`` each followed by BatchNorm, epsilon 1e-5) and ReLU, each
block ending in a 2x2/2 max pool; then PyTorch's adaptive average pooling
to 7x7 (exact for any input size, see ``layers.adaptive_avg_pool``), the
features flattened in PyTorch's ``(C, H, W)`` order, and the classifier
``Linear(512*7*7, 4096) - ReLU - Dropout - Linear(4096, 4096) - ReLU -
Dropout - Linear(4096, num_classes)`` (dropout only with ``train=True``).

Taps (``lapjax.from_flax`` layer names), shallow to deep: ``block1``,
``pool1``, ..., ``block5`` (the last convolutional features, the CAM
layer), ``pool5``, ``avgpool``, ``fc1``, ``fc2`` (the classifier's first
two linear layers, before their ReLU); the logits come from ``head``.

Checkpoint layout ``'torchvision'``: ``features.{i}.weight`` (``i`` the
layer's index in torchvision's ``features`` sequence) and
``classifier.{0,3,6}.weight``.

References:
  Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
  Image Recognition", ICLR 2015.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from lapjax.models import layers
from lapjax.models.card import TORCH_LEAF, Layout, ModelCard, VariablePath
from lapjax.models.layers import (
  Activation,
  AdaptiveAvgPool,
  ModuleDef,
  PoolFactory,
  standard_pool,
  symmetric_padding,
)

# Conv widths per block (a max pool after each): torchvision's cfgs 'A', 'D'.
VGG11_BLOCKS = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))


class ConvBlock(nn.Module):
  """``conv{j}`` (3x3, padding 1) [``norm{j}``] and ``act``, per width."""
  widths: Sequence[int]
  batch_norm: bool
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j, width in enumerate(self.widths, start=1):
      x = nn.Conv(width, (3, 3), padding=symmetric_padding(1),
                  name=f"conv{j}")(x)
      if self.batch_norm:
        x = self.norm(name=f"norm{j}")(x)
      x = self.act(x)
    return x


class VGG(nn.Module):
  """A VGG classifier; see the module docstring for its taps.

  ``x [B, H, W, 3]`` (normalised) ``-> logits [B, num_classes]``; any
  ``H, W`` of at least 32 (five 2x2 max pools).

  Attributes:
    num_classes: logits per image.
    blocks: convolution widths of each block (``VGG11_BLOCKS``, ...).
    batch_norm: BatchNorm after every convolution (``vgg11_bn``, ...).
    classifier_width: width of the two hidden linear layers.
    pool_size: output of the adaptive average pool.
    dropout_rate: dropout after each hidden linear layer (training only).
    act: activation, injectable (guided backprop passes its own ReLU).
    norm: ``norm(train) -> Module class``, injectable (default BatchNorm).
    pool: pooling factory (``standard_pool``) for ``pool1`` .. ``pool5``.
  """
  num_classes: int
  blocks: Sequence[Sequence[int]] = VGG16_BLOCKS
  batch_norm: bool = False
  classifier_width: int = 4096
  pool_size: tuple[int, int] = (7, 7)
  dropout_rate: float = 0.5
  act: Activation = nn.relu
  norm: ModuleDef = layers.batch_norm   # (``batch_norm`` is the flag)
  pool: PoolFactory = standard_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self.norm(train)
    for i, widths in enumerate(self.blocks, start=1):
      x = ConvBlock(tuple(widths), self.batch_norm, norm, self.act,
                    name=f"block{i}")(x)
      x = self.pool(f"pool{i}", window=2)(x)
    x = AdaptiveAvgPool(tuple(self.pool_size), name="avgpool")(x)
    # PyTorch flattens [B, C, H, W]: keep its order for its Linear weights.
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    for i in (1, 2):
      x = self.act(nn.Dense(self.classifier_width, name=f"fc{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train,
                     name=f"dropout{i}")(x)
    return nn.Dense(self.num_classes, name="head")(x)


VGG11 = functools.partial(VGG, blocks=VGG11_BLOCKS)
VGG11BN = functools.partial(VGG, blocks=VGG11_BLOCKS, batch_norm=True)
VGG16 = functools.partial(VGG, blocks=VGG16_BLOCKS)
VGG16BN = functools.partial(VGG, blocks=VGG16_BLOCKS, batch_norm=True)

_CLASSIFIER = {"fc1": 0, "fc2": 3, "head": 6}


def torchvision_layout(blocks: Sequence[Sequence[int]], batch_norm: bool
                       ) -> Layout:
  """torchvision's names for a ``VGG(blocks=..., batch_norm=...)``.

  torchvision numbers the modules of ``features`` in order: per width a
  convolution, [BatchNorm,] ReLU; per block a max pool.
  """
  index: dict[tuple[str, str], int] = {}
  i = 0
  for b, widths in enumerate(blocks, start=1):
    for j in range(1, len(widths) + 1):
      index[f"block{b}", f"conv{j}"] = i
      if batch_norm:
        index[f"block{b}", f"norm{j}"] = i + 1
      i += 3 if batch_norm else 2
    i += 1

  def key(path: VariablePath) -> str:
    _, *modules, leaf = path
    if len(modules) == 1:
      return f"classifier.{_CLASSIFIER[modules[0]]}.{TORCH_LEAF[leaf]}"
    return f"features.{index[tuple(modules)]}.{TORCH_LEAF[leaf]}"

  return Layout("torchvision", key)


_TAPS = ("block1", "pool1", "block2", "pool2", "block3", "pool3", "block4",
         "pool4", "block5", "pool5")


def _card(name: str, blocks: Sequence[Sequence[int]], bn: bool) -> ModelCard:
  build = functools.partial(VGG, blocks=blocks, batch_norm=bn)
  return ModelCard(name=name, build=build, input_size=(224, 224),
                   cam_layer="block5", taps=_TAPS,
                   layouts={"torchvision": torchvision_layout(blocks, bn)})


CARDS: dict[str, ModelCard] = {
    card.name: card for card in (
        _card("vgg11", VGG11_BLOCKS, False),
        _card("vgg11_bn", VGG11_BLOCKS, True),
        _card("vgg16", VGG16_BLOCKS, False),
        _card("vgg16_bn", VGG16_BLOCKS, True))}
