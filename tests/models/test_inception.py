"""Inception-V3: torchvision numbers, layout, input transform, properties."""

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.models import inception, weights
from lapjax.models.card import IMAGENET_MEAN, IMAGENET_STD
from tests.models import zoo_checks

SHAPE = (83, 75, 3)


def imported(**kwargs):
  """The torchvision Inception-V3 of tools/fixtures/make_inception.py: every
  width / 16, transform_input=True, auxiliary classifier in the state dict
  (the layout ignores it)."""
  module = inception.InceptionV3(10, transform_input=True, width_divisor=16,
                                 **kwargs)
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / "inception.safetensors",
      layout=inception.torchvision_layout(), input_shape=SHAPE)


def test_torchvision_checkpoint_gives_torchvision_numbers():
  zoo_checks.assert_matches_fixture(*imported(), "inception")


def test_full_size_layout_names_every_torchvision_tensor():
  card = inception.CARDS["inception_v3"]
  names = zoo_checks.state_dict_names("inception")["inception_v3"]
  assert any(k.startswith("AuxLogits.") for k in names)   # ignored, unused
  zoo_checks.assert_layout_covers(card.build(num_classes=1000),
                                  card.layouts["torchvision"], names)
  assert card.build(num_classes=1000).transform_input   # as torchvision's


def test_transform_input_maps_imagenet_normalisation_to_half_half():
  # x' = x * std / 0.5 + (mean - 0.5) / 0.5 turns (img - mean) / std into
  # (img - 0.5) / 0.5, the Google weights' normalisation.
  module, variables = imported()
  img = jax.random.uniform(jax.random.key(0), (1, *SHAPE))
  imagenet = (img - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  plain = module.clone(transform_input=False)
  np.testing.assert_allclose(module.apply(variables, imagenet),
                             plain.apply(variables, (img - 0.5) / 0.5),
                             rtol=1e-5, atol=1e-5)


def test_jit_batch_and_non_square_inputs():
  module, variables = imported()
  x = jax.random.normal(jax.random.key(0), (2, *SHAPE))
  zoo_checks.assert_jit_and_batch_properties(module, variables, x)


def test_grad_cam_runs_at_the_card_layer():
  # The other methods are the same gradients; their test runs on the
  # cheaper families (Inception's many branches make compiling slow).
  method = "grad_cam"
  module, variables = imported()
  x = jnp.asarray(zoo_checks.load_fixture("inception")["input"])
  card = inception.CARDS["inception_v3"]
  maps = zoo_checks.run_attribution(method, module, variables, x,
                                    card.cam_layer)
  zoo_checks.assert_finite_maps(method, maps, (1, 83, 75))
