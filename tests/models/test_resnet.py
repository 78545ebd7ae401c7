"""ResNet: torchvision and Hugging Face numbers, layouts, cards, properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.models import resnet, weights
from tests.models import zoo_checks

NUM_CLASSES = 10


def reduced(kind: str, **kwargs) -> resnet.ResNet:
  """The reduced torchvision ResNets of ``tools/fixtures/make_resnet.py``."""
  if kind == "resnet_basic":
    return resnet.ResNet(NUM_CLASSES, stage_sizes=(2, 1, 1, 1),
                         block=resnet.BasicBlock, width=8,
                         stage_widths=(8, 8, 16, 16), **kwargs)
  return resnet.ResNet(NUM_CLASSES, stage_sizes=(1, 2, 1, 1),
                       block=resnet.BottleneckBlock, width=8,
                       stage_widths=(4, 4, 8, 8), width_per_group=128,
                       **kwargs)


def imported(kind: str, **kwargs):
  module = reduced(kind, **kwargs)
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / f"{kind}.pth",
      layout=resnet.TORCHVISION_LAYOUT, input_shape=(48, 40, 3))


@pytest.mark.parametrize("kind", ["resnet_basic", "resnet_wide"])
def test_torchvision_checkpoint_gives_torchvision_numbers(kind):
  zoo_checks.assert_matches_fixture(*imported(kind), kind)


@pytest.mark.parametrize("name", ["hf_resnet", "hf_resnet_basic"])
def test_hugging_face_directory_gives_transformers_numbers(name):
  module, variables = weights.load_pretrained(zoo_checks.FIXTURES / name)
  assert module.num_classes == NUM_CLASSES
  # hf_resnet sets both of Hugging Face's non-default options.
  assert module.stride_on_1x1 == module.downsample_first_stage == (
      name == "hf_resnet")
  zoo_checks.assert_matches_fixture(module, variables, name)


def test_checkpoint_of_another_size_is_refused_with_its_names():
  with pytest.raises(weights.WeightMismatchError,
                     match=r"(?s)missing.*layer1\.0\.conv3\.weight"):
    weights.import_weights(reduced("resnet_wide"),
                           zoo_checks.FIXTURES / "resnet_basic.pth",
                           layout=resnet.TORCHVISION_LAYOUT)
  with pytest.raises(ValueError, match="BasicBlock supports only"):
    reduced("resnet_basic", width_per_group=128).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_hf_config_options_and_refusals():
  config = {"model_type": "resnet", "embedding_size": 32,
            "hidden_sizes": [64, 128], "depths": [2, 1],
            "layer_type": "bottleneck", "id2label": {"0": "a", "1": "b"}}
  module, layout = resnet.HF_MODEL_TYPES["resnet"](config, None)
  assert (module.num_classes, module.width, tuple(module.stage_widths)) == (
      2, 32, (16, 32))
  assert layout is resnet.HF_LAYOUT
  assert resnet.from_hf_config(config, 7)[0].num_classes == 7
  with pytest.raises(ValueError, match="layer_type.*'basic' or"):
    resnet.from_hf_config({**config, "layer_type": "preactivation"})
  with pytest.raises(ValueError, match="multiples of 4"):
    resnet.from_hf_config({**config, "hidden_sizes": [64, 130]})
  with pytest.raises(ValueError, match="hidden_act='relu'"):
    resnet.from_hf_config({**config, "hidden_act": "gelu"})


NAMES = zoo_checks.state_dict_names("resnet")


@pytest.mark.parametrize("name", sorted(resnet.CARDS))
def test_full_size_layouts_name_every_torchvision_tensor(name):
  card = resnet.CARDS[name]
  zoo_checks.assert_layout_covers(card.build(num_classes=1000),
                                  card.layouts["torchvision"], NAMES[name])


def test_full_size_hf_layout_names_every_transformers_tensor():
  config = {"model_type": "resnet", "num_labels": 1000}   # ResNet-50
  module, layout = resnet.from_hf_config(config)
  zoo_checks.assert_layout_covers(module, layout, NAMES["hf_resnet50"])


@pytest.mark.parametrize("name, expected", [
    ("resnet101", 44_549_160), ("resnet152", 60_192_808),
    ("wide_resnet50_2", 68_883_240)])
def test_parameter_counts_match_torchvision(name, expected):
  """The counts torchvision reports (ResNet-18/34/50: test_models.py)."""
  shapes = jax.eval_shape(resnet.CARDS[name].build(num_classes=1000).init,
                          jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(int(np.prod(p.shape))
             for p in jax.tree.leaves(shapes["params"])) == expected


def test_cards():
  assert sorted(resnet.CARDS) == sorted([
      "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
      "wide_resnet50_2"])
  for card in resnet.CARDS.values():
    assert card.cam_layer == "stage4" and card.input_size == (224, 224)
    assert card.taps == ("stem", "stem_pool", "stage1", "stage2", "stage3",
                         "stage4")
    assert set(card.layouts) == {"torchvision", "hf"}


def test_jit_batch_and_other_images():
  module, variables = imported("resnet_basic")
  x = jnp.asarray(zoo_checks.load_fixture("resnet_basic")["input"])
  zoo_checks.assert_jit_and_batch_properties(module, variables, x)


def test_injected_activation_reaches_every_bottleneck_relu():
  calls = []
  module = reduced("resnet_wide",
                   act=lambda y: calls.append(1) or jax.nn.relu(y))
  x = jnp.zeros((1, 48, 40, 3))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  calls.clear()
  jax.eval_shape(module.apply, variables, x)      # counts traced calls
  assert len(calls) == 1 + 3 * 5        # stem + 3 per bottleneck block


@pytest.mark.parametrize("method", zoo_checks.ATTRIBUTION_METHODS)
def test_attribution_methods_run_on_a_reduced_resnet50(method):
  module, variables = imported("resnet_wide")
  x = jnp.asarray(zoo_checks.load_fixture("resnet_wide")["input"])
  maps = zoo_checks.run_attribution(method, module, variables, x,
                                    resnet.CARDS["resnet50"].cam_layer)
  zoo_checks.assert_finite_maps(method, maps, (2, 48, 40))
