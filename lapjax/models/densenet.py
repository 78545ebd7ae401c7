"""DenseNet-121/169/201, equal to torchvision's.

A 7x7/2 stem convolution (padding 3), BatchNorm (epsilon 1e-5), ReLU and a
3x3/2 max pool (padding 1); dense blocks whose layers each see the
concatenation of all earlier outputs of the block and add ``growth_rate``
channels (``norm1 - act - conv1`` 1x1 to ``bn_size * growth_rate``,
``norm2 - act - conv2`` 3x3 padding 1 to ``growth_rate``); between blocks
transitions ``norm - act - conv`` 1x1 halving the channels and a 2x2/2
average pool; a final BatchNorm and ReLU (``features``), global average
pooling and a linear head.

Taps (``lapjax.from_flax`` layer names), shallow to deep: ``stem``,
``stem_pool``, ``denseblock1``, ``transition1``, ..., ``transition3``,
``denseblock4``, ``features`` (after the final norm and ReLU, the CAM
layer), ``global_pool``; the logits come from ``head``. Dense layers are
``denseblock{i}/denselayer{j}`` (their output: the ``growth_rate`` new
channels).

Checkpoint layouts: ``'torchvision'``
(``features.denseblock1.denselayer1.norm1.weight``, ``classifier.weight``)
and ``'torchvision_legacy'``, the names of torchvision's downloadable
ImageNet checkpoints (``...denselayer1.norm.1.weight``), which
torchvision's own loader renames.

References:
  Huang et al., "Densely Connected Convolutional Networks", CVPR 2017.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.models.card import TORCH_LEAF, Layout, ModelCard, VariablePath
from lapjax.models.layers import (
  Activation,
  ConvNormAct,
  ModuleDef,
  Pool,
  PoolFactory,
  batch_norm,
  standard_pool,
  symmetric_padding,
)


class DenseLayer(nn.Module):
  """``conv2(act(norm2(conv1(act(norm1(x))))))``: ``growth_rate`` new
  channels from the concatenated input."""
  growth_rate: int
  bn_size: int
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.norm(name="norm1")(x))
    y = nn.Conv(self.bn_size * self.growth_rate, (1, 1), padding="VALID",
                use_bias=False, name="conv1")(y)
    y = self.act(self.norm(name="norm2")(y))
    return nn.Conv(self.growth_rate, (3, 3), padding=symmetric_padding(1),
                   use_bias=False, name="conv2")(y)


class DenseBlock(nn.Module):
  """``num_layers`` dense layers; returns the input and every layer's new
  channels, concatenated in order: ``C + num_layers * growth_rate``."""
  num_layers: int
  growth_rate: int
  bn_size: int
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(1, self.num_layers + 1):
      new = DenseLayer(self.growth_rate, self.bn_size, self.norm, self.act,
                       name=f"denselayer{j}")(x)
      x = jnp.concatenate([x, new], axis=-1)
    return x


class Transition(nn.Module):
  """``norm - act - conv`` 1x1 to ``features`` channels, 2x2/2 average
  pool."""
  features: int
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.act(self.norm(name="norm")(x))
    x = nn.Conv(self.features, (1, 1), padding="VALID", use_bias=False,
                name="conv")(x)
    return Pool(window=2, strides=2, kind="avg", name="pool")(x)


class NormAct(nn.Module):
  """``act(norm(x))``: DenseNet's final ``norm5`` and functional ReLU."""
  norm: ModuleDef
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self.act(self.norm(name="norm")(x))


class DenseNet(nn.Module):
  """A DenseNet classifier; see the module docstring for its taps.

  ``x [B, H, W, 3]`` (normalised) ``-> logits [B, num_classes]``.

  Attributes:
    num_classes: logits per image.
    block_config: dense layers per block, e.g. ``(6, 12, 24, 16)``.
    growth_rate: channels each dense layer adds (``k``).
    num_init_features: channels of the stem.
    bn_size: bottleneck width of a dense layer, in multiples of ``k``.
    act: activation, injectable (guided backprop passes its own ReLU).
    norm: ``norm(train) -> Module class``, injectable (default BatchNorm).
    pool: pooling factory (``standard_pool``) for ``stem_pool`` and
      ``global_pool``.
  """
  num_classes: int
  block_config: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  act: Activation = nn.relu
  norm: ModuleDef = batch_norm
  pool: PoolFactory = standard_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self.norm(train)
    x = ConvNormAct(self.num_init_features, norm, self.act,
                    kernel_size=(7, 7), strides=(2, 2),
                    padding=symmetric_padding(3), name="stem")(x)
    x = self.pool("stem_pool", window=3, strides=2,
                  padding=symmetric_padding(1))(x)
    channels = self.num_init_features
    for i, num_layers in enumerate(self.block_config, start=1):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, norm,
                     self.act, name=f"denseblock{i}")(x)
      channels += num_layers * self.growth_rate
      if i < len(self.block_config):
        channels //= 2
        x = Transition(channels, norm, self.act, name=f"transition{i}")(x)
    x = NormAct(norm, self.act, name="features")(x)
    x = self.pool("global_pool", window=None)(x)
    return nn.Dense(self.num_classes, name="head")(x)


DenseNet121 = functools.partial(DenseNet, block_config=(6, 12, 24, 16))
DenseNet169 = functools.partial(DenseNet, block_config=(6, 12, 32, 32))
DenseNet201 = functools.partial(DenseNet, block_config=(6, 12, 48, 32))



def _torchvision_key(path: VariablePath, *, legacy: bool = False) -> str:
  _, *modules, leaf = path
  name = TORCH_LEAF[leaf]
  if modules == ["head"]:
    return f"classifier.{name}"
  if modules[0] == "stem":
    return f"features.{'conv0' if modules[1] == 'conv' else 'norm0'}.{name}"
  if modules[0] == "features":
    return f"features.norm5.{name}"
  if modules[0].startswith("transition"):
    return f"features.{modules[0]}.{modules[1]}.{name}"
  block, layer, unit = modules
  if legacy:        # 'norm1' -> 'norm.1', as in the downloadable weights
    unit = f"{unit[:-1]}.{unit[-1]}"
  return f"features.{block}.{layer}.{unit}.{name}"


TORCHVISION_LAYOUT = Layout("torchvision", _torchvision_key)
TORCHVISION_LEGACY_LAYOUT = Layout(
    "torchvision_legacy", functools.partial(_torchvision_key, legacy=True))
LAYOUTS = {"torchvision": TORCHVISION_LAYOUT,
           "torchvision_legacy": TORCHVISION_LEGACY_LAYOUT}

_TAPS = ("stem", "stem_pool", "denseblock1", "transition1", "denseblock2",
         "transition2", "denseblock3", "transition3", "denseblock4",
         "features")


def _card(name: str, build) -> ModelCard:
  return ModelCard(name=name, build=build, input_size=(224, 224),
                   cam_layer="features", taps=_TAPS, layouts=LAYOUTS)


CARDS: dict[str, ModelCard] = {
    card.name: card for card in (
        _card("densenet121", DenseNet121), _card("densenet169", DenseNet169),
        _card("densenet201", DenseNet201))}
