"""configs/vit.py: valid variants, every ViT-capable method, a CAM layer
the head reads, and a second cycle that grafts every parameter."""

import pytest

from configs import vit as vit_config
from lapjax.evaluation.evaluate import check_method_names
from lapjax.evaluation.methods import transformer_methods
from lapjax.train.config import base_config, validate

VARIANTS = (None, "restart", "cycle2", "long", "wide", "tiny")
GUIDED = ("guided_backprop", "guided_grad_cam")


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_validate_and_name_known_methods(variant):
  c = vit_config.get_config(variant)
  validate(c)
  size = c.data.image_size
  check_method_names(c, {"image_shape": (*size, 3)})
  depth = c.model.kwargs.depth
  # The last block's own patch tokens never reach the class-token head.
  assert c.evaluation.layer == f"block{depth}/norm1"
  assert all(s % c.model.kwargs.patch_size == 0 for s in size)


def test_methods_are_the_cnn_ones_without_guided_plus_transformer_ones():
  cnn = [m for m in base_config().evaluation.methods if m not in GUIDED]
  expected = set(cnn) | set(transformer_methods())
  assert set(vit_config.METHODS) == expected
  assert len(vit_config.METHODS) == len(expected)


@pytest.mark.parametrize("variant", ("restart", "cycle2"))
def test_warm_restarts_keep_the_model_of_the_first_cycle(variant):
  base, c = vit_config.get_config(), vit_config.get_config(variant)
  assert c.init_from == "runs/vit"
  assert c.model.to_dict() == base.model.to_dict()
  assert c.data.to_dict() == base.data.to_dict()


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="unknown config variant 'big'"):
    vit_config.get_config("big")


def test_check_method_names_sees_a_typo():
  c = vit_config.get_config("tiny")
  c.evaluation.methods = (*c.evaluation.methods, "inflw")
  with pytest.raises(ValueError, match="inflw"):
    check_method_names(c, {"image_shape": (32, 32, 3)})
