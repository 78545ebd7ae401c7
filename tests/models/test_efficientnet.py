"""EfficientNet-B0..B3 and Lite0: PyTorch numbers, layouts, properties."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax.models import efficientnet, weights
from lapjax.models.layers import batch_norm_with
from tests.models import zoo_checks

NUM_CLASSES = 10
SHAPE = (40, 32, 3)
# The reduced models of tools/fixtures/make_efficientnet.py.
TV_STAGES = (efficientnet.MBConvStage(1, 3, 1, 8, 8, 1),
             efficientnet.MBConvStage(6, 3, 2, 8, 16, 2),
             efficientnet.MBConvStage(6, 5, 2, 16, 24, 1))
LITE_STAGES = (efficientnet.MBConvStage(1, 3, 1, 8, 16, 1),
               efficientnet.MBConvStage(6, 3, 2, 16, 24, 2),
               efficientnet.MBConvStage(6, 5, 2, 24, 32, 1))


def reduced(kind: str, **kwargs) -> efficientnet.EfficientNet:
  if kind == "efficientnet":
    return efficientnet.EfficientNet(NUM_CLASSES, TV_STAGES, stem_features=8,
                                     head_features=96, **kwargs)
  lite = dict(se=False, padding="tf", clip=6.0, act=nn.relu,
              norm=batch_norm_with(epsilon=1e-3, momentum=0.99))
  return efficientnet.EfficientNet(NUM_CLASSES, LITE_STAGES, stem_features=8,
                                   head_features=160, **{**lite, **kwargs})


def imported(kind: str, **kwargs):
  module = reduced(kind, **kwargs)
  layout = (efficientnet.torchvision_layout(TV_STAGES)
            if kind == "efficientnet"
            else efficientnet.lite_layout(LITE_STAGES))
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / f"{kind}.pth", layout=layout,
      input_shape=SHAPE)


@pytest.mark.parametrize("kind", ["efficientnet", "efficientnet_lite"])
def test_checkpoint_gives_pytorch_numbers(kind):
  zoo_checks.assert_matches_fixture(*imported(kind), kind)


NAMES = zoo_checks.state_dict_names("efficientnet")


@pytest.mark.parametrize("name", sorted(efficientnet.CARDS))
def test_full_size_layouts_name_every_checkpoint_tensor(name):
  card = efficientnet.CARDS[name]
  (layout,) = card.layouts.values()
  zoo_checks.assert_layout_covers(card.build(num_classes=1000), layout,
                                  NAMES[name])


def test_scaling_rounds_like_torchvision():
  # make_divisible rounds to the nearest multiple of 8, never losing > 10 %.
  assert [efficientnet.make_divisible(v) for v in (35.2, 17.6, 12.0, 4.0)] \
      == [32, 16, 16, 8]
  b3 = efficientnet.scaled_stages(1.2, 1.4)
  assert [s.num_blocks for s in b3] == [2, 3, 3, 5, 5, 6, 2]   # ceil(1.4 n)
  assert [s.features for s in b3] == [24, 32, 48, 96, 136, 232, 384]
  module = efficientnet.CARDS["efficientnet_b3"].build(num_classes=1000)
  assert (module.stem_features, module.head_features) == (40, 1536)


def test_jit_batch_and_non_square_inputs():
  module, variables = imported("efficientnet")
  x = jax.random.normal(jax.random.key(0), (3, *SHAPE))
  zoo_checks.assert_jit_and_batch_properties(module, variables, x)


def test_lite_relu6_keeps_its_forward_under_guided_relus():
  # ReLU6 is min(act(x), 6): guided backprop swaps act only, the logits stay.
  module, variables = imported("efficientnet_lite")
  x = jnp.asarray(zoo_checks.load_fixture("efficientnet_lite")["input"]) * 8
  guided = module.clone(act=attr.guided_relu)
  np.testing.assert_allclose(guided.apply(variables, x),
                             module.apply(variables, x), rtol=1e-6,
                             atol=1e-6)
  clf = attr.guided_classifier(module, variables, layers=["head"])
  maps = attr.guided_backprop(clf, x, jnp.array([0, 1]))
  assert maps.shape == (2, 40, 32) and np.all(np.isfinite(maps))


@pytest.mark.parametrize("method", zoo_checks.ATTRIBUTION_METHODS)
def test_attribution_methods_run(method):
  module, variables = imported("efficientnet")
  x = jnp.asarray(zoo_checks.load_fixture("efficientnet")["input"])
  maps = zoo_checks.run_attribution(method, module, variables, x, "head")
  zoo_checks.assert_finite_maps(method, maps, (2, 40, 32))
