"""Models by name, so that configs can say ``model.name = 'resnet18'``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from lapjax.models.cnn import SmallCNN
from lapjax.models.resnet import ResNet18, ResNet34, ResNet50

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
}


def create_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model ``name`` (one of ``MODELS``) with ``num_classes`` logits.

  ``kwargs`` are the model's attributes (e.g. ``widths`` for ``small_cnn``,
  ``width`` and ``small_inputs`` for the ResNets).
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
  try:
    return MODELS[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad options {sorted(kwargs)} for model {name!r}: {e}"
                     ) from None
