"""EfficientNet-B0..B3 (torchvision) and EfficientNet-Lite0, PyTorch-equal.

One ``EfficientNet`` class builds both families from a list of
``MBConvStage`` specs:

* torchvision's ``efficientnet_b0`` .. ``b3``: SiLU, squeeze-and-excitation
  (squeeze to a quarter of the block's input channels), symmetric paddings
  ``(k - 1) // 2``, BatchNorm epsilon 1e-5, widths rounded to multiples of 8
  and depths ``ceil(depth_mult * n)`` exactly as ``_efficientnet_conf``;
* EfficientNet-Lite0 as the ``efficientnet-lite-pytorch`` package defines it
  (converted from TensorFlow's ``efficientnet/lite``): ReLU6, no SE,
  TensorFlow ``'SAME'`` paddings (asymmetric for strided convolutions, as
  that package's ``Conv2dStaticSamePadding`` at the card's input size),
  BatchNorm epsilon 1e-3, stem (32) and head (1280) not scaled.

Taps: ``stem``, ``stage1`` .. ``stage7`` (one per MBConv stage), ``head``
(the last 1x1 convolution's activations, ``[B, H/32, W/32, 1280]`` for B0,
the default CAM layer), ``global_pool``; logits from ``classifier``.
Stochastic depth and dropout are inactive at inference and not built.

The MBConv block (Sandler et al., 2018) with SE (Hu et al., 2018):

.. math::
  y = \\mathrm{BN}(W_p \\ast (s \\odot h)) + x \\cdot 1[\\text{stride } 1,
  C_{in} = C_{out}], \\quad h = \\phi(\\mathrm{BN}(W_d \\circledast
  \\phi(\\mathrm{BN}(W_e \\ast x)))), \\quad s = \\sigma(W_2\\, \\phi(W_1
  \\bar h))

References:
  Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
  Networks", ICML 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.models.card import TORCH_LEAF, Layout, ModelCard, VariablePath
from lapjax.models.layers import (
  Activation,
  ModuleDef,
  PoolFactory,
  batch_norm_with,
  standard_pool,
)


@dataclasses.dataclass(frozen=True)
class MBConvStage:
  """One stage of MBConv blocks, widths already scaled.

  Attributes:
    expand_ratio: hidden width of a block over its input width.
    kernel_size: of the depthwise convolution.
    strides: of the stage's first block (later blocks have stride 1).
    in_features: input channels of the first block.
    features: output channels of every block.
    num_blocks: blocks in the stage.
  """
  expand_ratio: int
  kernel_size: int
  strides: int
  in_features: int
  features: int
  num_blocks: int


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds ``value`` to a multiple of ``divisor``, losing at most 10 %
  (torchvision's ``_make_divisible``, from TensorFlow's MobileNet code)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


# B0's stages: (expand, kernel, stride, in, out, blocks) before scaling.
_B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
              (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3),
              (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


def scaled_stages(width_mult: float = 1.0, depth_mult: float = 1.0,
                  base: Sequence[tuple[int, ...]] = _B0_STAGES
                  ) -> tuple[MBConvStage, ...]:
  """torchvision's ``_efficientnet_conf`` for ``efficientnet_b*``: widths
  ``make_divisible(c * width_mult)``, depths ``ceil(n * depth_mult)``."""
  return tuple(
      MBConvStage(e, k, s, make_divisible(cin * width_mult),
                  make_divisible(cout * width_mult),
                  int(math.ceil(n * depth_mult)))
      for e, k, s, cin, cout, n in base)


def conv_padding(kernel: int, padding: str):
  """PyTorch's symmetric ``(k - 1) // 2`` or TensorFlow's ``'SAME'``."""
  if padding == "tf":
    return "SAME"
  return (((kernel - 1) // 2, (kernel - 1) // 2),) * 2


class ConvNormAct(nn.Module):
  """``act(norm(conv(x)))`` with PyTorch's or TensorFlow's padding.

  ``padding='torch'`` pads ``(k - 1) // 2`` on every side (PyTorch's
  ``padding=k // 2``); ``'tf'`` is TensorFlow's ``'SAME'`` (extra row and
  column at the bottom/right for even totals). ``act=None``: no activation.
  """
  features: int
  norm: ModuleDef
  act: Activation | None
  kernel_size: int = 1
  strides: int = 1
  groups: int = 1
  padding: str = "torch"
  clip: float | None = None
  down: nn.Module | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    pad = conv_padding(k, self.padding)
    # With ``down`` (a k x k / strides pool, e.g. a LAP-Pool): the strided
    # convolution as a stride-1 one followed by ``down`` (paper 000,
    # App. C.1); the same kernel either way.
    s = 1 if self.down is not None else self.strides
    x = nn.Conv(self.features, (k, k), (s, s), padding=pad,
                feature_group_count=self.groups, use_bias=False,
                name="conv")(x)
    if self.down is not None:
      x = self.down(x)
    x = self.norm(name="norm")(x)
    if self.act is not None:
      x = self.act(x)
      if self.clip is not None:      # ReLU6 = min(ReLU, 6): guided ReLU fits
        x = jnp.minimum(x, self.clip)
    return x


class SqueezeExcite(nn.Module):
  """``x * sigmoid(fc2(act(fc1(mean_hw x))))``, 1x1 convolutions with bias
  (torchvision's ``SqueezeExcitation``)."""
  squeeze: int
  act: Activation

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.act(nn.Conv(self.squeeze, (1, 1), name="fc1")(s))
    s = nn.Conv(x.shape[-1], (1, 1), name="fc2")(s)
    return x * jax.nn.sigmoid(s)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand, depthwise ``k x k``, SE, 1x1 project;
  identity shortcut at stride 1 with equal widths. Submodules ``expand``
  (absent at ``expand_ratio`` 1), ``depthwise``, ``se`` (optional),
  ``project``. ``down``: the pool that takes the strided depthwise
  convolution's stride (see ``ConvNormAct``)."""
  in_features: int
  features: int
  expand_ratio: int
  kernel_size: int
  strides: int
  norm: ModuleDef
  act: Activation
  se: bool
  padding: str
  clip: float | None
  down: nn.Module | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvNormAct, norm=self.norm,
                             padding=self.padding, clip=self.clip)
    hidden = make_divisible(self.in_features * self.expand_ratio)
    y = x
    if hidden != self.in_features:
      y = conv(hidden, act=self.act, name="expand")(y)
    y = conv(hidden, act=self.act, kernel_size=self.kernel_size,
             strides=self.strides, groups=hidden, down=self.down,
             name="depthwise")(y)
    if self.se:
      y = SqueezeExcite(max(1, self.in_features // 4), self.act,
                        name="se")(y)
    y = conv(self.features, act=None, name="project")(y)
    if self.strides == 1 and self.in_features == self.features:
      y = y + x
    return y


class MBConvStack(nn.Module):
  """The blocks ``block1`` .. ``blockN`` of one ``MBConvStage`` (``down``:
  the first block's stride pool)."""
  spec: MBConvStage
  norm: ModuleDef
  act: Activation
  se: bool
  padding: str
  clip: float | None
  down: nn.Module | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.spec
    for i in range(s.num_blocks):
      x = MBConv(s.in_features if i == 0 else s.features, s.features,
                 s.expand_ratio, s.kernel_size, s.strides if i == 0 else 1,
                 self.norm, self.act, self.se, self.padding, self.clip,
                 down=self.down if i == 0 else None,
                 name=f"block{i + 1}")(x)
    return x


class EfficientNet(nn.Module):
  """An EfficientNet classifier; see the module docstring for its taps.

  Input ``x [B, H, W, 3]``, normalised as the card says; output logits
  ``[B, num_classes]``.

  Attributes:
    num_classes: logits per image.
    stages: the MBConv stages (``scaled_stages(...)`` for B0..B3).
    stem_features: channels of the 3x3/2 stem.
    head_features: channels of the last 1x1 convolution.
    se: squeeze-and-excitation in every block (not in Lite).
    padding: ``'torch'`` (symmetric) or ``'tf'`` (TensorFlow ``'SAME'``).
    clip: upper clip of every activation (6.0 for Lite's ReLU6).
    act: activation, injectable (guided backprop passes its own ReLU).
    norm: ``norm(train) -> Module class`` (BatchNorm with the source's eps).
    pool: pooling factory (``standard_pool``). A LAP-extended EfficientNet
      (``lapjax.lap.LAPSpec``) may replace ``global_pool`` and add
      ``stage{i}_pool`` at every stage whose first block strides (B0:
      stages 2, 3, 4 and 6): that block's strided depthwise ``k x k``
      convolution run with stride 1 and followed by a ``k x k`` LAP-Pool of
      the same stride and padding (paper 000, App. C.1).
  """
  num_classes: int
  stages: Sequence[MBConvStage]
  stem_features: int = 32
  head_features: int = 1280
  se: bool = True
  padding: str = "torch"
  clip: float | None = None
  act: Activation = nn.silu
  norm: ModuleDef = batch_norm_with(epsilon=1e-5)
  pool: PoolFactory = standard_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self.norm(train)
    x = ConvNormAct(self.stem_features, norm, self.act, kernel_size=3,
                    strides=2, padding=self.padding, clip=self.clip,
                    name="stem")(x)
    for i, spec in enumerate(self.stages):
      down = (self.pool(f"stage{i + 1}_pool", window=spec.kernel_size,
                        strides=spec.strides,
                        padding=conv_padding(spec.kernel_size, self.padding),
                        optional=True)
              if spec.strides > 1 else None)
      x = MBConvStack(spec, norm, self.act, self.se, self.padding, self.clip,
                      down=down, name=f"stage{i + 1}")(x)
    x = ConvNormAct(self.head_features, norm, self.act, padding=self.padding,
                    clip=self.clip, name="head")(x)
    x = self.pool("global_pool", window=None)(x)
    return nn.Dense(self.num_classes, name="classifier")(x)


def _blocks(stages: Sequence[MBConvStage]):
  """``(stage, block, in_features, expand_ratio)`` of every block, 1-based."""
  for i, s in enumerate(stages):
    for j in range(s.num_blocks):
      yield i + 1, j + 1, s.in_features if j == 0 else s.features, \
          s.expand_ratio


def torchvision_layout(stages: Sequence[MBConvStage]) -> Layout:
  """torchvision's ``EfficientNet`` names: ``features.0`` the stem,
  ``features.{i}.{j}.block.{k}`` the blocks, ``features.{N + 1}`` the head,
  ``classifier.1`` the linear layer."""
  has_expand = {(i, j): make_divisible(cin * e) != cin
                for i, j, cin, e in _blocks(stages)}
  head = len(stages) + 1

  def key(path: VariablePath) -> str:
    _, *mods, leaf = path
    name = TORCH_LEAF[leaf]
    if mods[0] == "classifier":
      return f"classifier.1.{name}"
    if mods[0] in ("stem", "head"):
      i = 0 if mods[0] == "stem" else head
      return f"features.{i}.{0 if mods[1] == 'conv' else 1}.{name}"
    i, j = int(mods[0][5:]), int(mods[1][5:])
    order = (["expand"] if has_expand[i, j] else []) + [
        "depthwise", "se", "project"]
    k = order.index(mods[2])
    prefix = f"features.{i}.{j - 1}.block.{k}"
    if mods[2] == "se":
      return f"{prefix}.{mods[3]}.{name}"
    return f"{prefix}.{0 if mods[3] == 'conv' else 1}.{name}"

  return Layout("torchvision", key)


def lite_layout(stages: Sequence[MBConvStage]) -> Layout:
  """The ``efficientnet-lite-pytorch`` names (lukemelas' EfficientNet-PyTorch):
  ``_conv_stem``/``_bn0``, ``_blocks.{n}`` numbered across stages with
  ``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``,
  ``_project_conv``/``_bn2``, then ``_conv_head``/``_bn1`` and ``_fc``."""
  flat = {(i, j): n for n, (i, j, _, _) in enumerate(_blocks(stages))}
  block_names = {"expand": ("_expand_conv", "_bn0"),
                 "depthwise": ("_depthwise_conv", "_bn1"),
                 "project": ("_project_conv", "_bn2")}

  def key(path: VariablePath) -> str:
    _, *mods, leaf = path
    name = TORCH_LEAF[leaf]
    if mods[0] == "classifier":
      return f"_fc.{name}"
    conv_or_norm = 0 if mods[-1] == "conv" else 1
    if mods[0] == "stem":
      return f"{('_conv_stem', '_bn0')[conv_or_norm]}.{name}"
    if mods[0] == "head":
      return f"{('_conv_head', '_bn1')[conv_or_norm]}.{name}"
    n = flat[int(mods[0][5:]), int(mods[1][5:])]
    return f"_blocks.{n}.{block_names[mods[2]][conv_or_norm]}.{name}"

  return Layout("efficientnet_lite", key)


def efficientnet_b(width_mult: float, depth_mult: float, *,
                   num_classes: int = 1000, **kwargs) -> EfficientNet:
  """torchvision's ``efficientnet_b*`` with these multipliers."""
  stages = scaled_stages(width_mult, depth_mult)
  return EfficientNet(num_classes=num_classes, stages=stages,
                      stem_features=stages[0].in_features,
                      head_features=4 * stages[-1].features, **kwargs)


LITE0_STAGES = scaled_stages(1.0, 1.0)


def efficientnet_lite0(*, num_classes: int = 1000, **kwargs) -> EfficientNet:
  """EfficientNet-Lite0: B0's stages, ReLU6, no SE, TensorFlow paddings."""
  return EfficientNet(
      num_classes=num_classes, stages=LITE0_STAGES, stem_features=32,
      head_features=1280, se=False, padding="tf", clip=6.0, act=nn.relu,
      norm=batch_norm_with(epsilon=1e-3, momentum=0.99), **kwargs)


def _b_card(name: str, width: float, depth: float, size: int, resize: int,
            interpolation: str) -> ModelCard:
  stages = scaled_stages(width, depth)
  return ModelCard(
      name=name,
      build=functools.partial(efficientnet_b, width, depth),
      input_size=(size, size), cam_layer="head",
      taps=("stem", *(f"stage{i + 1}" for i in range(len(stages))), "head"),
      layouts={"torchvision": torchvision_layout(stages)},
      resize_size=resize, interpolation=interpolation)


# Input and resize sizes: the DEFAULT weights' transforms in torchvision.
CARDS: dict[str, ModelCard] = {
    "efficientnet_b0": _b_card("efficientnet_b0", 1.0, 1.0, 224, 256,
                               "bicubic"),
    "efficientnet_b1": _b_card("efficientnet_b1", 1.0, 1.1, 240, 255,
                               "bilinear"),
    "efficientnet_b2": _b_card("efficientnet_b2", 1.1, 1.2, 288, 288,
                               "bicubic"),
    "efficientnet_b3": _b_card("efficientnet_b3", 1.2, 1.4, 300, 320,
                               "bicubic"),
    # TensorFlow's Lite preprocessing: (pixel - 127) / 128, a 224 centre crop
    # of the image resized to 224 + 32 (bicubic).
    "efficientnet_lite0": ModelCard(
        name="efficientnet_lite0", build=efficientnet_lite0,
        input_size=(224, 224), cam_layer="head",
        taps=("stem", *(f"stage{i + 1}" for i in range(7)), "head"),
        layouts={"efficientnet_lite": lite_layout(LITE0_STAGES)},
        mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3, resize_size=256,
        interpolation="bicubic"),
}
