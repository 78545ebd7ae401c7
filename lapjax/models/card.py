"""Model cards and weight layouts: what the zoo knows about each backbone.

A ``ModelCard`` says how to build a model (``build(num_classes=...)``), what
input it expects (size, mean/std, the resize-then-crop of its reference
transform), which layer CAM methods use by default, which taps it has, and
how its parameters are named in each checkpoint layout it can import.

A ``Layout`` maps every variable of the Flax model to the checkpoint tensor
it comes from. ``Layout.key(path)`` receives the variable's path
``(collection, *module_path, leaf)`` -- e.g. ``('params', 'stage1',
'block1', 'conv1', 'kernel')`` or ``('batch_stats', 'stem', 'norm',
'mean')`` -- and returns either

* the checkpoint key (``'layer1.0.conv1.weight'``); the tensor is then
  converted by the leaf's standard rule (``lapjax.models.weights``): a 4-D
  ``kernel`` from ``OIHW`` to ``HWIO``, a 2-D ``kernel`` transposed
  (``[out, in] -> [in, out]``), everything else (``scale``, ``bias``,
  ``mean``, ``var``, embeddings) unchanged; or
* a ``Source(keys, combine)``: ``combine(*tensors)`` builds the value from
  several checkpoint tensors (e.g. timm's fused ``qkv`` split into three).

Checkpoint keys matching ``Layout.ignore`` (regular expressions, e.g.
``num_batches_tracked``) are allowed to stay unused; every other tensor must
be used exactly once (``lapjax.models.weights.import_weights`` is strict).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

VariablePath = tuple[str, ...]

# PyTorch's name of each Flax variable leaf: Conv / Dense / norm parameters
# and BatchNorm statistics (``running_mean``, ``running_var``).
TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
              "mean": "running_mean", "var": "running_var"}


@dataclasses.dataclass(frozen=True)
class Source:
  """A variable built from several checkpoint tensors: ``combine(*keys)``."""
  keys: tuple[str, ...]
  combine: Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one checkpoint convention (torchvision, timm, HF) names a model.

  Attributes:
    name: ``'torchvision'``, ``'timm'``, ``'hf'``, ...
    key: ``key(path) -> str | Source`` for every Flax variable path.
    ignore: regular expressions of checkpoint keys that may stay unused.
    prefix: a prefix that checkpoints of this layout may carry on every key
      (e.g. ``'vit.'`` in HF directories); stripped before matching.
    head: module paths of the classifier head (``'head'``,
      ``'classifier'``): with ``import_weights(..., reinit_head=True)``
      their variables whose shapes differ from the checkpoint's in the last
      (class) axis only keep their fresh initialisation.
  """
  name: str
  key: Callable[[VariablePath], str | Source]
  ignore: tuple[str, ...] = (r"(^|\.)num_batches_tracked$",)
  prefix: str = ""
  head: tuple[str, ...] = ("head", "classifier", "fc")


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """Everything lapjax knows about a named backbone.

  Attributes:
    name: timm-style name (``'resnet50'``, ``'vit_base_patch16_224'``).
    build: ``build(num_classes=..., **kwargs) -> flax.linen.Module``.
    input_size: ``(H, W)`` the weights were trained at.
    mean, std: per-channel normalisation of images in [0, 1].
    resize_size: shorter side before the centre crop to ``input_size`` in the
      reference evaluation transform (256 for 224 crops).
    interpolation: ``'bilinear'`` or ``'bicubic'``, of that resize.
    cam_layer: the tap CAM methods use by default (the last spatial stage).
    taps: the named stage outputs, shallow to deep.
    layouts: checkpoint layouts this model imports, by name.
    num_classes: logits of the pretrained head.
    token_grid: for transformers, the patch grid ``(h, w)`` of a token tap,
      and ``num_prefix_tokens`` the class/register tokens before it.
  """
  name: str
  build: Callable[..., Any]
  input_size: tuple[int, int]
  cam_layer: str
  taps: tuple[str, ...]
  layouts: Mapping[str, Layout]
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  resize_size: int = 256
  interpolation: str = "bilinear"
  num_classes: int = 1000
  token_grid: tuple[int, int] | None = None
  num_prefix_tokens: int = 0
