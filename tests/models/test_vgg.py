"""VGG: torchvision numbers, adaptive pooling, layout, cards, properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.models import layers, vgg, weights
from tests.models import zoo_checks

# VGG's 2x2 max pools after conv + bias are the pattern for which XLA:CPU
# without optimisations returns NaN gradients (docs/xla-noopt-nan.md): run
# as users run.
pytestmark = pytest.mark.xla_optimized

NUM_CLASSES = 10
# The reduced VGGs of tools/fixtures/make_vgg.py.
REDUCED = {"vgg11_bn": (((4,), (8,), (8, 8), (8, 8), (8, 8)), True),
           "vgg16": (((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8)),
                     False)}


def imported(name: str, **kwargs):
  blocks, bn = REDUCED[name]
  module = vgg.VGG(NUM_CLASSES, blocks=blocks, batch_norm=bn,
                   classifier_width=16, **kwargs)
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / f"{name}.pth",
      layout=vgg.torchvision_layout(blocks, bn), input_shape=(36, 44, 3))


@pytest.mark.parametrize("name", sorted(REDUCED))
def test_torchvision_checkpoint_gives_torchvision_numbers(name):
  zoo_checks.assert_matches_fixture(*imported(name), name)


def test_adaptive_pool_equals_pytorch():
  """Overlapping windows (10 -> 7), repeated inputs (1 -> 7), 13x17 -> 3x5."""
  fixture = zoo_checks.load_fixture("vgg_adaptive_pool")
  for i in range(3):
    got = layers.adaptive_avg_pool(jnp.asarray(fixture[f"in{i}"]),
                                   tuple(fixture[f"size{i}"]))
    np.testing.assert_allclose(got, fixture[f"out{i}"], rtol=1e-6,
                               atol=1e-6)


def test_adaptive_pool_matrix_closed_forms():
  # A multiple of the output: plain non-overlapping means.
  np.testing.assert_array_equal(layers.adaptive_pool_matrix(6, 3),
                                np.kron(np.eye(3), [0.5, 0.5]))
  # 5 -> 3: windows [0, 2), [1, 4), [3, 5).
  np.testing.assert_allclose(layers.adaptive_pool_matrix(5, 3), [
      [1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
      [0, 0, 0, 1 / 2, 1 / 2]])
  # 2 -> 7: inputs repeated; the middle output's window [0, 2) holds both.
  np.testing.assert_array_equal(layers.adaptive_pool_matrix(2, 7), [
      [1, 0], [1, 0], [1, 0], [0.5, 0.5], [0, 1], [0, 1], [0, 1]])


NAMES = zoo_checks.state_dict_names("vgg")


@pytest.mark.parametrize("name", sorted(vgg.CARDS))
def test_full_size_layouts_name_every_torchvision_tensor(name):
  card = vgg.CARDS[name]
  zoo_checks.assert_layout_covers(card.build(num_classes=1000),
                                  card.layouts["torchvision"], NAMES[name])


def test_cards():
  assert sorted(vgg.CARDS) == ["vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]
  for card in vgg.CARDS.values():
    assert card.cam_layer == "block5" and card.input_size == (224, 224)
    assert card.taps[-2:] == ("block5", "pool5")
  assert vgg.CARDS["vgg16_bn"].build(num_classes=3).batch_norm
  assert not vgg.CARDS["vgg16"].build(num_classes=3).batch_norm


def test_dropout_only_in_training():
  module, variables = imported("vgg16")
  x = jnp.asarray(zoo_checks.load_fixture("vgg16")["input"])
  eval_logits = module.apply(variables, x)
  train = [module.apply(variables, x, train=True,
                        rngs={"dropout": jax.random.key(k)}) for k in (0, 1)]
  assert not np.allclose(train[0], train[1])
  assert not np.allclose(train[0], eval_logits)


def test_jit_batch_and_other_images():
  module, variables = imported("vgg11_bn")
  x = jnp.asarray(zoo_checks.load_fixture("vgg11_bn")["input"])
  zoo_checks.assert_jit_and_batch_properties(module, variables, x)


def test_injected_activation_reaches_every_relu():
  calls = []
  blocks, bn = REDUCED["vgg11_bn"]
  module = vgg.VGG(NUM_CLASSES, blocks=blocks, batch_norm=bn,
                   act=lambda y: calls.append(1) or jax.nn.relu(y))
  x = jnp.zeros((1, 36, 44, 3))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  calls.clear()
  jax.eval_shape(module.apply, variables, x)      # counts traced calls
  assert len(calls) == 8 + 2           # every conv, both hidden linears


@pytest.mark.parametrize("method", zoo_checks.ATTRIBUTION_METHODS)
def test_attribution_methods_run_on_a_reduced_vgg(method):
  module, variables = imported("vgg11_bn")
  x = jnp.asarray(zoo_checks.load_fixture("vgg11_bn")["input"])
  maps = zoo_checks.run_attribution(method, module, variables, x,
                                    vgg.CARDS["vgg11_bn"].cam_layer)
  zoo_checks.assert_finite_maps(method, maps, (2, 36, 44))
