"""ConvNeXt-T/S/B (torchvision and Hugging Face layouts), PyTorch-equal.

Stem: a ``p x p`` convolution of stride ``p`` (patchify, ``p = 4``) and a
channel LayerNorm. Four stages of ConvNeXt blocks; stages 2-4 start with a
LayerNorm and a 2x2/2 convolution (``downsample``). A block:

.. math::
  y = x + \\gamma \\odot W_2\\, \\mathrm{GELU}(W_1\\,
  \\mathrm{LN}(\\mathrm{DWConv}_{7 \\times 7}(x)))

with the exact (erf) GELU, LayerNorm epsilon 1e-6 and a learnt per-channel
layer scale ``gamma`` (initialised to 1e-6). Head: global average pooling,
LayerNorm (epsilon 1e-6 in torchvision, the config's ``layer_norm_eps`` in
Hugging Face checkpoints), linear. Stochastic depth is inactive at inference
and not built.

Taps: ``stem``, ``stage1`` .. ``stage4`` (``[B, H/32, W/32, C4]``, the
default CAM layer), ``global_pool``; logits from ``classifier``.

References:
  Liu et al., "A ConvNet for the 2020s", CVPR 2022.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lapjax.models.card import (
  TORCH_LEAF,
  Layout,
  ModelCard,
  Source,
  VariablePath,
)
from lapjax.models.layers import GlobalAvgPool


def _layer_norm(epsilon: float, name: str) -> nn.LayerNorm:
  # Two-pass variance, as PyTorch computes it.
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, name=name)


class ConvNeXtBlock(nn.Module):
  """Depthwise 7x7, LayerNorm, ``fc1`` (4x), exact GELU, ``fc2``, layer
  scale, residual; ``[B, H, W, C] -> [B, H, W, C]``."""
  layer_scale_init: float | None = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    y = nn.Conv(c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c,
                name="dwconv")(x)
    y = _layer_norm(1e-6, "norm")(y)
    y = nn.gelu(nn.Dense(4 * c, name="fc1")(y), approximate=False)
    y = nn.Dense(c, name="fc2")(y)
    if self.layer_scale_init is not None:
      gamma = self.param("layer_scale", nn.initializers.constant(
          self.layer_scale_init), (c,))
      y = gamma * y
    return x + y


class Downsample(nn.Module):
  """LayerNorm then a 2x2 convolution of stride 2 (with bias)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _layer_norm(1e-6, "norm")(x)
    return nn.Conv(self.features, (2, 2), (2, 2), padding="VALID",
                   name="conv")(x)


class ConvNeXtStage(nn.Module):
  """An optional ``downsample``, then ``block1`` .. ``blockN``."""
  features: int
  num_blocks: int
  downsample: bool
  layer_scale_init: float | None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.downsample:
      x = Downsample(self.features, name="downsample")(x)
    for i in range(self.num_blocks):
      x = ConvNeXtBlock(self.layer_scale_init, name=f"block{i + 1}")(x)
    return x


class Stem(nn.Module):
  """Patchify convolution (``patch_size`` square, same stride) and
  LayerNorm."""
  features: int
  patch_size: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.features, (p, p), (p, p), padding="VALID",
                name="conv")(x)
    return _layer_norm(1e-6, "norm")(x)


class ConvNeXt(nn.Module):
  """A ConvNeXt classifier; see the module docstring for its taps.

  Input ``x [B, H, W, 3]`` normalised with the card's mean/std; logits
  ``[B, num_classes]``.

  Attributes:
    num_classes: logits per image.
    depths: blocks per stage, ``(3, 3, 9, 3)`` for ConvNeXt-T.
    widths: channels per stage, ``(96, 192, 384, 768)`` for ConvNeXt-T.
    patch_size: stem patch (and stride).
    layer_scale_init: initial layer scale; None builds blocks without it
      (Hugging Face's ``layer_scale_init_value <= 0``).
    head_norm_epsilon: epsilon of the head's LayerNorm.
  """
  num_classes: int
  depths: Sequence[int] = (3, 3, 9, 3)
  widths: Sequence[int] = (96, 192, 384, 768)
  patch_size: int = 4
  layer_scale_init: float | None = 1e-6
  head_norm_epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train              # no BatchNorm; stochastic depth is not built
    x = Stem(self.widths[0], self.patch_size, name="stem")(x)
    for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
      x = ConvNeXtStage(width, depth, i > 0, self.layer_scale_init,
                        name=f"stage{i + 1}")(x)
    x = GlobalAvgPool(name="global_pool")(x)
    x = _layer_norm(self.head_norm_epsilon, "head_norm")(x)
    return nn.Dense(self.num_classes, name="classifier")(x)


def _flatten_scale(t: np.ndarray) -> np.ndarray:
  return t.reshape(-1)           # torchvision stores gamma as [C, 1, 1]


def torchvision_layout() -> Layout:
  """torchvision's ``ConvNeXt`` names: ``features.0`` the stem,
  ``features.{2i - 1}`` stage ``i``'s blocks, ``features.{2i - 2}`` its
  downsampling, ``classifier.{0, 2}`` the head's LayerNorm and linear."""
  block = {"dwconv": "block.0", "norm": "block.2", "fc1": "block.3",
           "fc2": "block.5"}

  def key(path: VariablePath) -> str | Source:
    _, *mods, leaf = path
    if mods[0] == "stem":
      return f"features.0.{0 if mods[1] == 'conv' else 1}.{TORCH_LEAF[leaf]}"
    if mods[0] == "head_norm":
      return f"classifier.0.{TORCH_LEAF[leaf]}"
    if mods[0] == "classifier":
      return f"classifier.2.{TORCH_LEAF[leaf]}"
    i = int(mods[0][5:])
    if mods[1] == "downsample":
      j = 0 if mods[2] == "norm" else 1
      return f"features.{2 * i - 2}.{j}.{TORCH_LEAF[leaf]}"
    prefix = f"features.{2 * i - 1}.{int(mods[1][5:]) - 1}"
    if leaf == "layer_scale":
      return Source((f"{prefix}.layer_scale",), _flatten_scale)
    return f"{prefix}.{block[mods[2]]}.{TORCH_LEAF[leaf]}"

  return Layout("torchvision", key)


def hf_layout() -> Layout:
  """Hugging Face ``ConvNextForImageClassification`` names:
  ``convnext.embeddings``, ``convnext.encoder.stages.{i}.downsampling_layer``
  and ``.layers.{j}``, ``convnext.layernorm``, ``classifier``."""
  block = {"dwconv": "dwconv", "norm": "layernorm", "fc1": "pwconv1",
           "fc2": "pwconv2"}

  def key(path: VariablePath) -> str:
    _, *mods, leaf = path
    name = TORCH_LEAF.get(leaf, leaf)
    if mods[0] == "stem":
      sub = "patch_embeddings" if mods[1] == "conv" else "layernorm"
      return f"convnext.embeddings.{sub}.{name}"
    if mods[0] == "head_norm":
      return f"convnext.layernorm.{name}"
    if mods[0] == "classifier":
      return f"classifier.{name}"
    stage = f"convnext.encoder.stages.{int(mods[0][5:]) - 1}"
    if mods[1] == "downsample":
      j = 0 if mods[2] == "norm" else 1
      return f"{stage}.downsampling_layer.{j}.{name}"
    prefix = f"{stage}.layers.{int(mods[1][5:]) - 1}"
    if leaf == "layer_scale":
      return f"{prefix}.layer_scale_parameter"
    return f"{prefix}.{block[mods[2]]}.{name}"

  return Layout("hf", key)


def hf_convnext(config: dict[str, Any], num_classes: int | None = None
                ) -> tuple[ConvNeXt, Layout]:
  """Builds the ConvNeXt of a Hugging Face ``config.json`` (any size).

  Args:
    config: the parsed ``config.json`` (``model_type`` ``'convnext'``).
    num_classes: logits of the head; default the config's labels
      (``id2label``, else ``num_labels``).

  Returns:
    ``(module, layout)``: the module and the Hugging Face layout.

  Raises:
    ValueError: an activation other than the exact GELU, or a stem of other
      than 3 input channels.
  """
  act = config.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"ConvNeXt config has hidden_act={act!r}; lapjax's "
                     "ConvNeXt uses the exact GELU ('gelu') only")
  if config.get("num_channels", 3) != 3:
    raise ValueError("ConvNeXt config has num_channels="
                     f"{config['num_channels']}; RGB (3) only")
  if num_classes is None:
    labels = config.get("id2label")
    num_classes = len(labels) if labels else config.get("num_labels", 2)
  scale = config.get("layer_scale_init_value", 1e-6)
  module = ConvNeXt(
      num_classes=num_classes,
      depths=tuple(config.get("depths", (3, 3, 9, 3))),
      widths=tuple(config.get("hidden_sizes", (96, 192, 384, 768))),
      patch_size=int(config.get("patch_size", 4)),
      layer_scale_init=scale if scale > 0 else None,
      head_norm_epsilon=config.get("layer_norm_eps", 1e-12))
  return module, hf_layout()


HF_MODEL_TYPES: dict[str, Callable[[dict, int | None],
                                   tuple[nn.Module, Layout]]] = {
    "convnext": hf_convnext,
}


def _card(name: str, depths: tuple[int, ...], widths: tuple[int, ...],
          resize: int) -> ModelCard:
  return ModelCard(
      name=name,
      build=functools.partial(ConvNeXt, depths=depths, widths=widths),
      input_size=(224, 224), cam_layer="stage4",
      taps=("stem", "stage1", "stage2", "stage3", "stage4"),
      layouts={"torchvision": torchvision_layout(), "hf": hf_layout()},
      resize_size=resize, interpolation="bilinear")


# Resize sizes: torchvision's IMAGENET1K_V1 transforms.
CARDS: dict[str, ModelCard] = {
    "convnext_tiny": _card("convnext_tiny", (3, 3, 9, 3),
                           (96, 192, 384, 768), 236),
    "convnext_small": _card("convnext_small", (3, 3, 27, 3),
                            (96, 192, 384, 768), 230),
    "convnext_base": _card("convnext_base", (3, 3, 27, 3),
                           (128, 256, 512, 1024), 232),
}
