"""DenseNet: torchvision numbers, both layouts, cards, properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.models import densenet, weights
from tests.models import zoo_checks

NUM_CLASSES = 10
CHECKPOINT = zoo_checks.FIXTURES / "densenet.pth"


def reduced(**kwargs) -> densenet.DenseNet:
  """The reduced DenseNet of ``tools/fixtures/make_densenet.py``."""
  return densenet.DenseNet(NUM_CLASSES, block_config=(2, 2, 2, 2),
                           growth_rate=4, num_init_features=8, bn_size=2,
                           **kwargs)


def imported(checkpoint=CHECKPOINT, layout=densenet.TORCHVISION_LAYOUT,
             **kwargs):
  module = reduced(**kwargs)
  return module, weights.import_weights(module, checkpoint, layout=layout,
                                        input_shape=(48, 40, 3))


def test_torchvision_checkpoint_gives_torchvision_numbers():
  zoo_checks.assert_matches_fixture(*imported(), "densenet")


def test_legacy_names_of_the_downloadable_weights():
  """torchvision's ImageNet files say ``norm.1`` for ``norm1``."""
  state = weights.read_checkpoint(CHECKPOINT)
  legacy = {k.replace("norm1", "norm.1").replace("norm2", "norm.2")
            .replace("conv1", "conv.1").replace("conv2", "conv.2"): v
            for k, v in state.items()}
  assert any(".norm.1." in k for k in legacy)
  _, want = imported()
  _, got = imported(legacy, densenet.TORCHVISION_LEGACY_LAYOUT)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  with pytest.raises(weights.WeightMismatchError, match="norm.1"):
    imported(legacy)


NAMES = zoo_checks.state_dict_names("densenet")


@pytest.mark.parametrize("name", sorted(densenet.CARDS))
def test_full_size_layouts_name_every_torchvision_tensor(name):
  card = densenet.CARDS[name]
  zoo_checks.assert_layout_covers(card.build(num_classes=1000),
                                  card.layouts["torchvision"], NAMES[name])


@pytest.mark.parametrize("name, expected", [
    ("densenet121", 7_978_856), ("densenet169", 14_149_480),
    ("densenet201", 20_013_928)])
def test_parameter_counts_match_torchvision(name, expected):
  shapes = jax.eval_shape(densenet.CARDS[name].build(num_classes=1000).init,
                          jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(int(np.prod(p.shape))
             for p in jax.tree.leaves(shapes["params"])) == expected


def test_cards():
  assert sorted(densenet.CARDS) == ["densenet121", "densenet169",
                                    "densenet201"]
  for card in densenet.CARDS.values():
    assert card.cam_layer == "features" == card.taps[-1]
    assert set(card.layouts) == {"torchvision", "torchvision_legacy"}


def test_jit_batch_and_other_images():
  module, variables = imported()
  x = jnp.asarray(zoo_checks.load_fixture("densenet")["input"])
  zoo_checks.assert_jit_and_batch_properties(module, variables, x)


def test_injected_activation_reaches_every_relu():
  calls = []
  module = reduced(act=lambda y: calls.append(1) or jax.nn.relu(y))
  x = jnp.zeros((1, 48, 40, 3))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  calls.clear()
  jax.eval_shape(module.apply, variables, x)      # counts traced calls
  # stem, 2 per dense layer, 1 per transition, the functional final ReLU.
  assert len(calls) == 1 + 2 * 8 + 3 + 1


@pytest.mark.parametrize("method", zoo_checks.ATTRIBUTION_METHODS)
def test_attribution_methods_run_on_a_reduced_densenet121(method):
  module, variables = imported()
  x = jnp.asarray(zoo_checks.load_fixture("densenet")["input"])
  maps = zoo_checks.run_attribution(method, module, variables, x,
                                    densenet.CARDS["densenet121"].cam_layer)
  zoo_checks.assert_finite_maps(method, maps, (2, 48, 40))
