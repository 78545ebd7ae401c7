"""Every attribution method on the reduced-size zoo backbones.

ResNet-50-style (bottlenecks), DenseNet-121-style, EfficientNet-B0-style and
ConvNeXt-T-style models with their fixture weights (PyTorch's numbers,
``tests/models/test_<family>.py``), explained at their card's CAM layer on
2 images of 48 x 40 pixels (H != W): each method returns finite maps of the
input's size, per image and class. Few steps, samples and masks: the file
checks that the methods run on these architectures, not their quality.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from lapjax.models import get_card
from tests.models import (
  test_convnext,
  test_densenet,
  test_efficientnet,
  test_resnet,
)

SHAPE = (2, 48, 40, 3)

# (model, card whose cam_layer the reduced model shares, its fixture).
MODELS = {
    "resnet50": ("resnet50",
                 functools.partial(test_resnet.imported, "resnet_wide")),
    "densenet121": ("densenet121", test_densenet.imported),
    "efficientnet_b0": ("efficientnet_b0", functools.partial(
        test_efficientnet.imported, "efficientnet")),
    "convnext_tiny": ("convnext_tiny", test_convnext.imported),
}

KEY = jax.random.key(0)

# name -> (function, options, needs the guided-ReLU classifier).
METHODS = {
    "gradient": (attr.gradient, {}, False),
    "input_x_gradient": (attr.input_x_gradient, {}, False),
    "integrated_gradients": (attr.integrated_gradients, {"steps": 3}, False),
    "smoothgrad": (attr.smoothgrad, {"key": KEY, "samples": 2}, False),
    "guided_backprop": (attr.guided_backprop, {}, True),
    "grad_cam": (attr.grad_cam, {"layer": None}, False),
    "grad_cam_plus_plus": (attr.grad_cam_plus_plus, {"layer": None}, False),
    "layer_cam": (attr.layer_cam, {"layer": None}, False),
    "guided_grad_cam": (attr.guided_grad_cam, {"layer": None}, True),
    "score_cam": (attr.score_cam, {"layer": None}, False),
    "lafam": (attr.lafam, {"layer": None}, False),
    "occlusion": (attr.occlusion, {"window": (12, 10), "stride": (12, 10)},
                  False),
    "rise": (attr.rise, {"key": KEY, "num_masks": 6}, False),
    "relax": (attr.relax, {"layer": None, "key": KEY, "num_masks": 6},
              False),
    "sloc": (attr.sloc, {"key": KEY, "p": 0.5, "num_masks": 6, "steps": 3},
             False),
}
# sloc_xp is sloc with a fixed p (the call above); sloc_m only adds the
# insertion-minus-deletion monitor, and would double the file's SLOC cost.

# Models that are not ReLU networks: guided backprop is refused with a
# message (ConvNeXt's exact GELU is no injectable ``act``; EfficientNet's
# SiLU would be silently replaced by a ReLU otherwise).
NO_GUIDED = {"convnext_tiny": "no injectable 'act' attribute",
             "efficientnet_b0": "uses act=silu, not ReLU"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
  """One classifier per model, shared by every method."""
  card_name, imported = MODELS[request.param]
  module, variables = imported()
  layer = get_card(card_name).cam_layer
  clf = from_flax(module, variables, layers=[layer])
  guided = (None if request.param in NO_GUIDED
            else attr.guided_classifier(module, variables, layers=[layer]))
  x = jax.random.uniform(jax.random.key(1), SHAPE)
  logits = clf.apply(x)[0]
  return {"name": request.param, "module": module, "variables": variables,
          "layer": layer, "clf": clf, "guided": guided, "x": x,
          "targets": jnp.argmax(logits, -1), "logits": logits}


def _assert_maps(maps, shape):
  maps = np.asarray(maps)
  assert maps.shape == shape
  assert np.all(np.isfinite(maps))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_gives_finite_maps_of_the_input_size(model, method):
  fn, options, guided = METHODS[method]
  if "layer" in options:
    options = {**options, "layer": model["layer"]}
  if guided and model["guided"] is None:
    with pytest.raises(ValueError, match=NO_GUIDED[model["name"]]):
      attr.guided_classifier(model["module"], model["variables"])
    return
  clf = model["guided"] if guided else model["clf"]
  maps = fn(clf, model["x"], model["targets"], **options)
  _assert_maps(maps, SHAPE[:3])


def test_attribution_lens_over_grad_cam(model):
  classes = attr.top_k_classes(model["logits"], 2)
  maps = attr.attribution_lens(attr.grad_cam, model["clf"], model["x"],
                               classes, layer=model["layer"])
  assert maps.shape[0] == SHAPE[0] and maps.shape[-2:] == SHAPE[1:3]
  _assert_maps(maps, maps.shape)
