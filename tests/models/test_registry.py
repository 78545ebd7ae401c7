"""The registry: every zoo card by name, close-match errors, old options."""

import types

import flax.linen as nn
import pytest

import lapjax
from lapjax.models import (
  CARDS,
  HF_MODEL_TYPES,
  MODELS,
  ModelCard,
  create_model,
  get_card,
  registry,
)
from lapjax.models.card import Layout

# The backbones of issue 22 (the seed papers'), timm-style names.
ZOO = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "wide_resnet50_2", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn",
    "densenet121", "densenet169", "densenet201", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_lite0", "inception_v3", "convnext_tiny", "convnext_small",
    "convnext_base", "vit_small_patch16_224", "vit_base_patch16_224",
    "vit_base_patch32_224", "vit_base_patch8_224",
}


def test_every_zoo_backbone_has_a_card():
  assert set(CARDS) == ZOO
  assert set(MODELS) == ZOO | {"small_cnn", "vit"}
  assert set(HF_MODEL_TYPES) == {"resnet", "convnext", "vit"}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_card_is_consistent(name):
  card = get_card(name)
  assert isinstance(card, ModelCard) and card.name == name
  assert card.cam_layer in card.taps or card.cam_layer.split("/")[0] in {
      t.split("/")[0] for t in card.taps}
  assert len(set(card.taps)) == len(card.taps)
  assert card.layouts and all(
      isinstance(layout, Layout) and layout.name == key
      for key, layout in card.layouts.items())
  assert len(card.mean) == len(card.std) == 3 and min(card.std) > 0
  assert len(card.input_size) == 2 and card.resize_size >= max(
      card.input_size)
  assert card.interpolation in ("bilinear", "bicubic")
  module = create_model(name, num_classes=7)
  assert isinstance(module, nn.Module) and module.num_classes == 7


def test_unknown_names_suggest_close_matches():
  with pytest.raises(ValueError, match=r"unknown model 'resnet5' \(did you "
                                       r"mean 'resnet50'.*available: \["):
    create_model("resnet5", num_classes=2)
  with pytest.raises(ValueError, match="did you mean 'densenet121'"):
    get_card("densenet12")
  with pytest.raises(ValueError, match="did you mean 'vit_base_patch16_224'"):
    lapjax.load_pretrained("vit_base_patch16", "absent.pth")
  with pytest.raises(ValueError) as info:
    create_model("xyzzy", num_classes=2)
  assert "did you mean" not in str(info.value)
  assert "'small_cnn'" in str(info.value)


def test_small_cnn_has_no_card():
  with pytest.raises(ValueError, match="'small_cnn' has no card"):
    get_card("small_cnn")


def test_existing_options_keep_working():
  resnet = create_model("resnet18", num_classes=5, small_inputs=True,
                        width=8)
  assert (resnet.num_classes, resnet.small_inputs, resnet.width) == (5, True,
                                                                     8)
  cnn = create_model("small_cnn", num_classes=2, widths=(4, 8))
  assert tuple(cnn.widths) == (4, 8)
  with pytest.raises(ValueError, match="bad options.*'depth'"):
    create_model("small_cnn", num_classes=2, depth=3)


def test_a_name_defined_twice_is_an_error():
  card = get_card("resnet18")
  a = types.SimpleNamespace(__name__="fam_a", CARDS={"x": card})
  b = types.SimpleNamespace(__name__="fam_b", CARDS={"x": card})
  with pytest.raises(ValueError, match="'x' is defined twice.*fam_b"):
    registry._gather((a, b), "CARDS")


def test_public_entry_points():
  for name in ("create_model", "get_card", "load_pretrained", "from_nnx",
               "from_flax"):
    assert callable(getattr(lapjax, name)), name
