"""ResNet-18/34/50/101/152 and WideResNet-50-2, equal to torchvision's.

One ``ResNet`` class computes what ``torchvision.models.resnet`` computes
(ResNet v1.5: a bottleneck's stride sits on its 3x3 convolution): a 7x7/2
stem with padding 3, a 3x3/2 max pool with padding 1, stages of basic or
bottleneck blocks whose shortcut is a 1x1 convolution and BatchNorm
(epsilon 1e-5) where the shape changes, global average pooling and a dense
head. Every padding is explicit and symmetric as in PyTorch (Flax's
``'SAME'`` pads strided windows at the bottom/right only, which shifts
them by a pixel), so imported weights give PyTorch's numbers.

Taps (``lapjax.from_flax`` layer names), shallow to deep: ``stem``,
``stem_pool`` (absent with ``small_inputs``), ``stage1`` .. ``stage4``,
``global_pool``; the logits come from ``head``. Blocks are
``stage{i}/block{j}``.

Variants of the same class:

* ``small_inputs=True``: a 3x3/1 stem without max pool (the CIFAR-style
  stem of the clue configs), so a 64x64 input ends at 8x8 in ``stage4``;
* ``width_per_group=128``: WideResNet-50-2 (bottleneck width doubled);
* the Hugging Face ``ResNetForImageClassification`` options
  (``stem_width``/``stage_widths`` from its ``embedding_size`` and
  ``hidden_sizes``, ``downsample_first_stage``, ``stride_on_1x1`` for
  ``downsample_in_bottleneck``), built from a ``config.json`` by
  ``HF_MODEL_TYPES['resnet']``.

Checkpoint layouts (``lapjax.models.card.Layout``): ``'torchvision'``
(``layer1.0.conv1.weight``, ``fc.weight``) and ``'hf'``
(``resnet.encoder.stages.0.layers.0.layer.0.convolution.weight``,
``classifier.1.weight``).

References:
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
  Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from lapjax.models.card import TORCH_LEAF, Layout, ModelCard, VariablePath
from lapjax.models.layers import (
  Activation,
  ConvNormAct,
  ModuleDef,
  PoolFactory,
  batch_norm,
  standard_pool,
  symmetric_padding,
)

_PAD1 = symmetric_padding(1)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or 1x1 projection shortcut.

  Output channels: ``features`` (``expansion = 1``). With ``down`` (a
  3x3/``strides`` pool, e.g. a LAP-Pool), the strided ``conv1`` becomes a
  stride-1 convolution followed by ``down`` (paper 000, App. C.1).
  """
  features: int
  strides: int
  norm: ModuleDef
  act: Activation
  width_per_group: int = 64
  stride_on_1x1: bool = False
  zero_init_residual: bool = True
  down: nn.Module | None = None

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = _strided_conv(x, self.features, 3, self.strides, self.down,
                      name="conv1")
    y = self.act(self.norm(name="norm1")(y))
    y = nn.Conv(self.features, (3, 3), padding=_PAD1, use_bias=False,
                name="conv2")(y)
    y = self.norm(name="norm2", **_last_norm_init(self.zero_init_residual))(y)
    return self.act(_shortcut(x, self.features, self.strides, self.norm) + y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4), with a projection shortcut.

  The inner width is ``features * width_per_group // 64`` (torchvision's
  ``base_width``; 128 in WideResNet-50-2); the output has ``4 * features``
  channels. The stride sits on the 3x3 convolution (ResNet v1.5, as
  torchvision), or on the first 1x1 with ``stride_on_1x1`` (the original
  ResNet, Hugging Face's ``downsample_in_bottleneck``). With ``down`` (a
  3x3/``strides`` pool, e.g. a LAP-Pool), the strided 3x3 ``conv2``
  becomes a stride-1 convolution followed by ``down`` (paper 000,
  App. C.1); a strided 1x1 has no window to pool over, so ``down`` with
  ``stride_on_1x1`` is refused.
  """
  features: int
  strides: int
  norm: ModuleDef
  act: Activation
  width_per_group: int = 64
  stride_on_1x1: bool = False
  zero_init_residual: bool = True
  down: nn.Module | None = None

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.down is not None and self.stride_on_1x1:
      raise ValueError(
          "a LAP-Pool replaces a strided convolution with a stride-1 one "
          "and a pool of the same kernel size and stride; with "
          "stride_on_1x1 the strided convolution is a 1x1, whose 1x1 "
          "'pool' would only subsample. Use stride_on_1x1=False (torchvision"
          "'s ResNet v1.5) for LAP-Pools at the strided stages")
    inner = self.features * self.width_per_group // 64
    s = (self.strides, self.strides)
    s1 = s if self.stride_on_1x1 else (1, 1)
    y = nn.Conv(inner, (1, 1), s1, padding="VALID", use_bias=False,
                name="conv1")(x)
    y = self.act(self.norm(name="norm1")(y))
    y = _strided_conv(y, inner, 3, 1 if self.stride_on_1x1 else self.strides,
                      self.down, name="conv2")
    y = self.act(self.norm(name="norm2")(y))
    y = nn.Conv(self.features * 4, (1, 1), padding="VALID", use_bias=False,
                name="conv3")(y)
    y = self.norm(name="norm3", **_last_norm_init(self.zero_init_residual))(y)
    return self.act(_shortcut(x, self.features * 4, self.strides, self.norm)
                    + y)


def _strided_conv(x: jax.Array, features: int, kernel: int, strides: int,
                  down: nn.Module | None, *, name: str) -> jax.Array:
  """A ``kernel x kernel`` convolution (padding ``kernel // 2``, no bias)
  with stride ``strides``; with ``down``, a stride-1 convolution followed by
  ``down`` (the pool of the same window and stride), as paper 000's App.
  C.1 replaces strided convolutions. Called inside a block's compact
  ``__call__``; both forms have the same kernel, so weights carry over."""
  pad = symmetric_padding(kernel // 2)
  if down is None:
    return nn.Conv(features, (kernel, kernel), (strides, strides),
                   padding=pad, use_bias=False, name=name)(x)
  return down(nn.Conv(features, (kernel, kernel), padding=pad,
                      use_bias=False, name=name)(x))


def _last_norm_init(zero: bool) -> dict[str, Any]:
  return {"scale_init": nn.initializers.zeros} if zero else {}


def _shortcut(x: jax.Array, features: int, strides: int,
              norm: ModuleDef) -> jax.Array:
  """Identity, or a 1x1 convolution and norm where the shape changes
  (called inside a block's compact ``__call__``: ``proj``, ``proj_norm``)."""
  if strides == 1 and x.shape[-1] == features:
    return x
  x = nn.Conv(features, (1, 1), (strides, strides), padding="VALID",
              use_bias=False, name="proj")(x)
  return norm(name="proj_norm")(x)


class Stage(nn.Module):
  """``num_blocks`` residual blocks; the first one may downsample (with
  ``down``: its strided convolution replaced, see ``BasicBlock``)."""
  block: ModuleDef
  num_blocks: int
  features: int
  strides: int
  norm: ModuleDef
  act: Activation
  width_per_group: int = 64
  stride_on_1x1: bool = False
  zero_init_residual: bool = True
  down: nn.Module | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = self.block(self.features, self.strides if i == 0 else 1, self.norm,
                     self.act, width_per_group=self.width_per_group,
                     stride_on_1x1=self.stride_on_1x1,
                     zero_init_residual=self.zero_init_residual,
                     down=self.down if i == 0 else None,
                     name=f"block{i + 1}")(x)
    return x


class ResNet(nn.Module):
  """A ResNet classifier; see the module docstring for its taps.

  ``x [B, H, W, 3]`` (normalised) ``-> logits [B, num_classes]``.

  Attributes:
    num_classes: logits per image.
    stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    block: ``BasicBlock`` or ``BottleneckBlock``.
    width: stem channels, and the first stage's width (``planes``, doubled
      at each later stage) unless ``stage_widths`` is given.
    stage_widths: each stage's ``planes`` (a bottleneck stage outputs 4x
      as many channels); None: ``width * 2**i``.
    width_per_group: bottleneck inner width per 64 planes (64; 128 in
      WideResNet-50-2).
    small_inputs: 3x3 stride-1 stem without max pool, for small images.
    downsample_first_stage: stride 2 in the first stage too (Hugging
      Face's ``downsample_in_first_stage``).
    stride_on_1x1: a bottleneck's stride on its first 1x1 convolution
      instead of the 3x3 (Hugging Face's ``downsample_in_bottleneck``).
    zero_init_residual: initialise each block's last norm scale to zero
      (training from scratch; torchvision's option, irrelevant for
      imported weights).
    act: activation, injectable (guided backprop passes its own ReLU).
    norm: ``norm(train) -> Module class``, injectable (default BatchNorm,
      epsilon 1e-5 as PyTorch).
    pool: pooling factory (``standard_pool``). A LAP-extended ResNet
      (``lapjax.lap.LAPSpec``) may replace ``stem_pool`` and
      ``global_pool``, and add ``stage2_pool`` .. ``stage4_pool`` (the
      stages whose first block strides): paper 000's replacement of a
      strided convolution (Sec. 2.2, "Usage"), the first block's strided
      3x3 convolution run with stride 1 and followed by a 3x3/2 LAP-Pool
      (padding 1, as the convolution). The 1x1/2 projection shortcut stays
      as it is: the same replacement of a 1x1 convolution is a 1x1 "pool",
      which only subsamples, so it is that shortcut already. The pool is a
      submodule of the ``ResNet`` (``stage3_pool``, tap
      ``stage3_pool/head``) that the stage's first block calls.
  """
  num_classes: int
  stage_sizes: Sequence[int]
  block: ModuleDef = BasicBlock
  width: int = 64
  stage_widths: Sequence[int] | None = None
  width_per_group: int = 64
  small_inputs: bool = False
  downsample_first_stage: bool = False
  stride_on_1x1: bool = False
  zero_init_residual: bool = True
  act: Activation = nn.relu
  norm: ModuleDef = batch_norm
  pool: PoolFactory = standard_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.block is BasicBlock and self.width_per_group != 64:
      raise ValueError("BasicBlock supports only width_per_group=64; got "
                       f"{self.width_per_group}")
    widths = (tuple(self.stage_widths) if self.stage_widths is not None
              else tuple(self.width * 2**i
                         for i in range(len(self.stage_sizes))))
    if len(widths) != len(self.stage_sizes):
      raise ValueError(f"stage_widths {widths} and stage_sizes "
                       f"{tuple(self.stage_sizes)} differ in length")
    norm = self.norm(train)
    if self.small_inputs:
      x = ConvNormAct(self.width, norm, self.act, padding=_PAD1,
                      name="stem")(x)
    else:
      x = ConvNormAct(self.width, norm, self.act, kernel_size=(7, 7),
                      strides=(2, 2), padding=symmetric_padding(3),
                      name="stem")(x)
      x = self.pool("stem_pool", window=3, strides=2, padding=_PAD1)(x)
    for i, (size, planes) in enumerate(zip(self.stage_sizes, widths)):
      strides = 2 if i > 0 or self.downsample_first_stage else 1
      down = (self.pool(f"stage{i + 1}_pool", window=3, strides=2,
                        padding=_PAD1, optional=True)
              if strides == 2 else None)
      x = Stage(self.block, size, planes, strides, norm, self.act,
                width_per_group=self.width_per_group,
                stride_on_1x1=self.stride_on_1x1,
                zero_init_residual=self.zero_init_residual, down=down,
                name=f"stage{i + 1}")(x)
    x = self.pool("global_pool", window=None)(x)
    return nn.Dense(self.num_classes, name="head")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                              block=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3),
                              block=BottleneckBlock)
WideResNet50_2 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                   block=BottleneckBlock, width_per_group=128)


# Checkpoint layouts. ``path`` is ``(collection, *module_path, leaf)``.



def _torchvision_key(path: VariablePath) -> str:
  _, *modules, leaf = path
  name = TORCH_LEAF[leaf]
  if modules == ["head"]:
    return f"fc.{name}"
  if modules[0] == "stem":
    return f"{'conv1' if modules[1] == 'conv' else 'bn1'}.{name}"
  stage, block, layer = modules
  prefix = f"layer{stage.removeprefix('stage')}.{_index(block, 'block')}"
  if layer in ("proj", "proj_norm"):
    return f"{prefix}.downsample.{0 if layer == 'proj' else 1}.{name}"
  return f"{prefix}.{layer.replace('norm', 'bn')}.{name}"


def _hf_key(path: VariablePath) -> str:
  _, *modules, leaf = path
  name = TORCH_LEAF[leaf]
  if modules == ["head"]:
    return f"classifier.1.{name}"
  unit = "convolution" if leaf == "kernel" else "normalization"
  if modules[0] == "stem":
    return f"resnet.embedder.embedder.{unit}.{name}"
  stage, block, layer = modules
  prefix = (f"resnet.encoder.stages.{_index(stage, 'stage')}.layers."
            f"{_index(block, 'block')}")
  if layer in ("proj", "proj_norm"):
    return f"{prefix}.shortcut.{unit}.{name}"
  return f"{prefix}.layer.{int(layer[-1]) - 1}.{unit}.{name}"


def _index(name: str, prefix: str) -> int:
  """``'block3' -> 2``: lapjax counts from 1, PyTorch containers from 0."""
  return int(name.removeprefix(prefix)) - 1


TORCHVISION_LAYOUT = Layout("torchvision", _torchvision_key)
HF_LAYOUT = Layout("hf", _hf_key)
LAYOUTS = {"torchvision": TORCHVISION_LAYOUT, "hf": HF_LAYOUT}


def from_hf_config(config: Mapping[str, Any], num_classes: int | None = None
                   ) -> tuple[nn.Module, Layout]:
  """The ResNet of a Hugging Face ``ResNetConfig`` (its ``config.json``).

  Reads ``embedding_size``, ``hidden_sizes`` (stage output channels),
  ``depths``, ``layer_type`` (``'basic'`` or ``'bottleneck'``),
  ``downsample_in_first_stage`` and ``downsample_in_bottleneck``; the
  number of classes is ``num_classes``, else the config's ``id2label``
  (or ``num_labels``).

  Returns:
    ``(module, layout)``: a ``ResNet`` and the ``'hf'`` layout.
  """
  layer_type = config.get("layer_type", "bottleneck")
  if layer_type not in ("basic", "bottleneck"):
    raise ValueError(f"ResNet layer_type must be 'basic' or 'bottleneck'; "
                     f"got {layer_type!r}")
  if config.get("hidden_act", "relu") != "relu":
    raise ValueError(f"only hidden_act='relu' is supported; got "
                     f"{config['hidden_act']!r}")
  if config.get("num_channels", 3) != 3:
    raise ValueError(f"ResNet num_channels must be 3; got "
                     f"{config['num_channels']}")
  block, expansion = ((BottleneckBlock, 4) if layer_type == "bottleneck"
                      else (BasicBlock, 1))
  hidden = list(config.get("hidden_sizes", (256, 512, 1024, 2048)))
  if any(h % expansion for h in hidden):
    raise ValueError(f"bottleneck hidden_sizes must be multiples of 4; got "
                     f"{hidden}")
  module = ResNet(
      num_classes=_hf_num_classes(config, num_classes),
      stage_sizes=tuple(config.get("depths", (3, 4, 6, 3))), block=block,
      width=config.get("embedding_size", 64),
      stage_widths=tuple(h // expansion for h in hidden),
      downsample_first_stage=config.get("downsample_in_first_stage", False),
      stride_on_1x1=config.get("downsample_in_bottleneck", False))
  return module, HF_LAYOUT


def _hf_num_classes(config: Mapping[str, Any], num_classes: int | None
                    ) -> int:
  if num_classes is not None:
    return num_classes
  if config.get("id2label"):
    return len(config["id2label"])
  return int(config.get("num_labels", 2))


HF_MODEL_TYPES: dict[str, Callable[..., tuple[nn.Module, Layout]]] = {
    "resnet": from_hf_config}

_TAPS = ("stem", "stem_pool", "stage1", "stage2", "stage3", "stage4")


def _card(name: str, build: Callable[..., nn.Module]) -> ModelCard:
  return ModelCard(name=name, build=build, input_size=(224, 224),
                   cam_layer="stage4", taps=_TAPS, layouts=LAYOUTS)


CARDS: dict[str, ModelCard] = {
    card.name: card for card in (
        _card("resnet18", ResNet18), _card("resnet34", ResNet34),
        _card("resnet50", ResNet50), _card("resnet101", ResNet101),
        _card("resnet152", ResNet152),
        _card("wide_resnet50_2", WideResNet50_2))}
