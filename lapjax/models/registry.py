"""Models by name, so that configs can say ``model.name = 'resnet50'``.

Every zoo family module (``resnet.py``, ``vit.py``, ...) exports ``CARDS``,
its ``ModelCard`` per timm-style name; the families that Hugging Face
directories can hold also export ``HF_MODEL_TYPES`` (``config.json``'s
``model_type`` -> builder). This module gathers them:

* ``CARDS``: every card by name;
* ``MODELS``: every constructor by name (the cards' ``build`` plus
  ``'small_cnn'``, the clue benchmark's CNN, and ``'vit'``, a
  ``VisionTransformer`` sized entirely by its keyword arguments (patch
  size, width, depth, heads, ``image_size``), as ``configs/vit.py`` trains
  it from scratch on the clue benchmark; neither has pretrained weights
  and so a card);
* ``HF_MODEL_TYPES``: the Hugging Face builders by ``model_type``.

``create_model`` and ``get_card`` look names up; an unknown name fails with
the closest names and the full list.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import flax.linen as nn

from lapjax.models import (
                           convnext,
                           densenet,
                           efficientnet,
                           inception,
                           resnet,
                           vgg,
                           vit,
)
from lapjax.models.card import Layout, ModelCard
from lapjax.models.cnn import SmallCNN

_FAMILIES: tuple[ModuleType, ...] = (resnet, vgg, densenet, efficientnet,
                                     inception, convnext, vit)

HFBuilder = Callable[[dict, "int | None"], tuple[nn.Module, Layout]]


def _gather(families: Iterable[ModuleType], attr: str) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for family in families:
    for name, value in getattr(family, attr, {}).items():
      if name in out:
        raise ValueError(f"{attr} name {name!r} is defined twice (again in "
                         f"{family.__name__})")
      out[name] = value
  return out


CARDS: dict[str, ModelCard] = _gather(_FAMILIES, "CARDS")
HF_MODEL_TYPES: dict[str, HFBuilder] = _gather(_FAMILIES, "HF_MODEL_TYPES")
MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN, "vit": vit.VisionTransformer,
    **{n: c.build for n, c in CARDS.items()}}


def _unknown(name: str, kind: str, names: Iterable[str]) -> ValueError:
  names = sorted(names)
  close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
  hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if (
      close) else ""
  return ValueError(f"unknown {kind} {name!r}{hint}; available: {names}")


def create_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model ``name`` (one of ``MODELS``) with ``num_classes`` logits.

  Args:
    name: a timm-style zoo name (``'resnet50'``, ``'densenet121'``,
      ``'vit_base_patch16_224'``; ``CARDS``), ``'small_cnn'`` or ``'vit'``.
    num_classes: logits per image.
    **kwargs: the model's attributes, e.g. ``widths`` for ``small_cnn``,
      ``width`` and ``small_inputs`` for the ResNets, ``act`` for ReLU
      models, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads`` and
      ``image_size`` for ``'vit'``.

  Returns:
    The Flax linen module (random initialisation: weights come from
    ``lapjax.models.load_pretrained``).

  Raises:
    ValueError: unknown name (with close matches) or bad options.
  """
  if name not in MODELS:
    raise _unknown(name, "model", MODELS)
  try:
    return MODELS[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad options {sorted(kwargs)} for model {name!r}: {e}"
                     ) from None


def get_card(name: str) -> ModelCard:
  """The ``ModelCard`` of the zoo model ``name`` (input size, mean/std, taps).

  Raises:
    ValueError: unknown name (with close matches), or a model without a card
      (``'small_cnn'`` has no pretrained weights).
  """
  if name in CARDS:
    return CARDS[name]
  if name in MODELS:
    raise ValueError(f"model {name!r} has no card: it is not a pretrained "
                     f"backbone; cards: {sorted(CARDS)}")
  raise _unknown(name, "model", CARDS)
