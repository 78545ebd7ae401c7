"""ConvNeXt: torchvision and Hugging Face numbers, layouts, properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.models import convnext, weights
from tests.models import zoo_checks

NUM_CLASSES = 10
SHAPE = (64, 32, 3)


def imported():
  """The reduced torchvision ConvNeXt of tools/fixtures/make_convnext.py."""
  module = convnext.ConvNeXt(NUM_CLASSES, depths=(1, 1, 2, 1),
                             widths=(8, 16, 16, 24))
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / "convnext.pth",
      layout=convnext.torchvision_layout(), input_shape=SHAPE)


def test_torchvision_checkpoint_gives_torchvision_numbers():
  zoo_checks.assert_matches_fixture(*imported(), "convnext")


def test_hugging_face_directory_gives_transformers_numbers():
  module, variables = weights.load_pretrained(
      zoo_checks.FIXTURES / "hf_convnext")
  assert (module.num_classes, tuple(module.widths), module.head_norm_epsilon
          ) == (NUM_CLASSES, (8, 16, 16, 24), 1e-12)
  zoo_checks.assert_matches_fixture(module, variables, "hf_convnext")


def test_hf_config_options_and_refusals():
  config = {"model_type": "convnext", "hidden_sizes": [16, 32],
            "depths": [1, 2], "patch_size": 2, "layer_scale_init_value": 0.0,
            "num_labels": 5}
  module, layout = convnext.HF_MODEL_TYPES["convnext"](config, None)
  assert (module.num_classes, module.patch_size, module.layer_scale_init,
          tuple(module.depths)) == (5, 2, None, (1, 2))
  assert layout.name == "hf"
  variables = jax.eval_shape(module.init, jax.random.key(0),
                             jnp.zeros((1, 16, 16, 3)))
  assert "layer_scale" not in variables["params"]["stage1"]["block1"]
  assert convnext.hf_convnext(config, 7)[0].num_classes == 7
  with pytest.raises(ValueError, match="exact GELU"):
    convnext.hf_convnext({**config, "hidden_act": "relu"})


NAMES = zoo_checks.state_dict_names("convnext")


@pytest.mark.parametrize("name", sorted(convnext.CARDS))
def test_full_size_layouts_name_every_torchvision_tensor(name):
  card = convnext.CARDS[name]
  zoo_checks.assert_layout_covers(card.build(num_classes=1000),
                                  card.layouts["torchvision"], NAMES[name])


def test_full_size_hf_layout_names_every_transformers_tensor():
  module, layout = convnext.hf_convnext({"num_labels": 1000})   # ConvNeXt-T
  zoo_checks.assert_layout_covers(module, layout, NAMES["hf_convnext_tiny"])


def test_jit_batch_and_non_square_inputs():
  module, variables = imported()
  x = jax.random.normal(jax.random.key(0), (3, *SHAPE))
  zoo_checks.assert_jit_and_batch_properties(module, variables, x)


def test_layer_scale_scales_each_block_residual():
  # gamma = 0 makes every block the identity: stage1 == stem.
  module, variables = imported()
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if p[-1].key == "layer_scale" else v,
      variables["params"])
  clf = zoo_checks.from_flax(module, {"params": params},
                             layers=["stem", "stage1"])
  x = jnp.asarray(zoo_checks.load_fixture("convnext")["input"])
  _, feats = clf.apply(x)
  np.testing.assert_array_equal(feats["stage1"], feats["stem"])


@pytest.mark.parametrize("method", zoo_checks.ATTRIBUTION_METHODS)
def test_attribution_methods_run(method):
  module, variables = imported()
  x = jnp.asarray(zoo_checks.load_fixture("convnext")["input"])
  card = convnext.CARDS["convnext_tiny"]
  maps = zoo_checks.run_attribution(method, module, variables, x,
                                    card.cam_layer)
  zoo_checks.assert_finite_maps(method, maps, (2, 64, 32))
