"""Models: taps, shapes, injectable act/norm, known parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import available_layers
from lapjax.models import SmallCNN, create_model


def _num_params(model, shape):
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros(shape, jnp.float32))
  return sum(int(np.prod(p.shape))
             for p in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672),
    ("resnet50", 25_557_032)])
def test_resnet_parameter_counts_match_the_reference_architecture(
    name, expected):
  """The counts torchvision reports for the ImageNet ResNets."""
  model = create_model(name, num_classes=1000)
  assert _num_params(model, (1, 224, 224, 3)) == expected


def test_resnet_taps_and_small_image_stem():
  model = create_model("resnet18", num_classes=5, small_inputs=True, width=8)
  x = jnp.zeros((2, 32, 48, 3))
  v = model.init(jax.random.key(0), x)
  taps = available_layers(model, v, (32, 48, 3))
  top = {k: s for k, s in taps.items() if "/" not in k}
  assert list(top) == ["stem", "stage1", "stage2", "stage3", "stage4",
                       "global_pool", "head"]
  assert top["stage1"] == (1, 32, 48, 8)
  assert top["stage4"] == (1, 4, 6, 64)
  big = create_model("resnet18", num_classes=5, width=8)
  vb = big.init(jax.random.key(0), x)
  assert available_layers(big, vb, (32, 48, 3))["stage4"] == (1, 1, 2, 64)


def test_small_cnn_taps_shallow_to_deep():
  model = SmallCNN(3, widths=(4, 8, 8))
  v = model.init(jax.random.key(0), jnp.zeros((1, 16, 24, 3)))
  taps = [k for k in available_layers(model, v, (16, 24, 3)) if "/" not in k]
  assert taps == ["block1", "pool1", "block2", "pool2", "block3",
                  "global_pool", "head"]


def test_injected_activation_is_used_everywhere():
  calls = []

  def act(x):
    calls.append(x.shape)
    return jax.nn.relu(x)

  model = create_model("resnet18", num_classes=2, small_inputs=True, width=4,
                       act=act)
  model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  # 1 stem + 8 blocks x 2 activations.
  assert len(calls) == 17


def test_injected_norm():
  import flax.linen as nn

  def group_norm(train):
    del train
    return lambda name=None, **kw: nn.GroupNorm(num_groups=2, name=name, **kw)

  model = SmallCNN(2, widths=(4, 4), norm=group_norm)
  v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert "batch_stats" not in v
  assert "GroupNorm" not in str(jax.tree.map(jnp.shape, v))  # named 'norm'
  assert "norm" in v["params"]["block1"]["unit0"]


@pytest.mark.parametrize("shape, window, strides, padding", [
    ((2, 8, 12, 3), 2, 2, "VALID"),      # reshape path
    ((2, 9, 12, 3), 2, 2, "VALID"),      # odd height: nn.max_pool
    ((2, 8, 12, 3), 3, 2, "SAME"),       # overlapping windows
])
def test_pool_matches_flax_max_pool(shape, window, strides, padding):
  from lapjax.models import Pool
  x = jax.random.normal(jax.random.key(0), shape)
  got = Pool(window=window, strides=strides, padding=padding).apply({}, x)
  want = nn.max_pool(x, (window, window), (strides, strides),
                     padding=padding)
  np.testing.assert_array_equal(got, want)
  # Gradients agree wherever the maximum is unique (random inputs).
  gx = jax.grad(lambda x: (Pool(window=window, strides=strides,
                                padding=padding).apply({}, x) ** 2).sum())(x)
  gw = jax.grad(lambda x: (nn.max_pool(x, (window, window),
                                       (strides, strides),
                                       padding=padding) ** 2).sum())(x)
  np.testing.assert_allclose(gx, gw, rtol=1e-6)


def test_unknown_model_and_bad_options():
  with pytest.raises(ValueError, match="unknown model 'vgg'.*available"):
    create_model("vgg", num_classes=2)
  with pytest.raises(ValueError, match="bad options"):
    create_model("small_cnn", num_classes=2, depth=3)
