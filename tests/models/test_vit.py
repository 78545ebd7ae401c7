"""ViT: equal to timm and Hugging Face transformers, taps, attention deltas.

The fixtures (``tools/fixtures/make_vit.py``) hold reduced-size timm and HF
models with random weights and their outputs; no torch here.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lapjax
from lapjax import attribution
from lapjax.models import vit
from lapjax.models.weights import import_weights, load_pretrained

ZOO = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
TAPS = ("patch_embed", "block1", "block2", "norm")
PATCH = 8


def _tiny(**kwargs) -> vit.VisionTransformer:
  """timm ``VisionTransformer(img_size=(32, 48), patch_size=8,
  embed_dim=48, depth=2, num_heads=3, num_classes=10)``."""
  return vit.VisionTransformer(
      **{"num_classes": 10, "patch_size": PATCH, "embed_dim": 48, "depth": 2,
         "num_heads": 3, "image_size": (32, 48), **kwargs})


@pytest.fixture(scope="module")
def timm_model():
  module = _tiny()
  variables = import_weights(module, ZOO / "vit_tiny.pth",
                             layout=vit.LAYOUTS["timm"])
  return module, variables, dict(np.load(ZOO / "vit_tiny.npz"))


def _assert_logits(logits, expected):
  np.testing.assert_allclose(logits, expected, rtol=1e-5,
                             atol=1e-5 * np.abs(expected).max())


def _assert_tap(feature, expected):
  np.testing.assert_allclose(feature, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def test_timm_checkpoint_gives_timms_logits_taps_and_attention(timm_model):
  module, variables, fx = timm_model
  layers = (*TAPS, "block2/attn/probs")
  # tokens=None: the taps as timm's tokens (by default they are grids).
  clf = lapjax.from_flax(module, variables, layers=layers, tokens=None)
  logits, feats = jax.jit(clf.apply)(jnp.asarray(fx["input"]))
  _assert_logits(logits, fx["logits"])
  for tap in TAPS:
    _assert_tap(feats[tap], fx[f"stage:{tap}"])
  probs = feats["block2/attn/probs"]
  assert probs.shape == (2, 3, 1 + 4 * 6, 1 + 4 * 6)
  _assert_tap(probs, fx["attn:block2"])
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_other_input_sizes_resample_position_embeddings_like_timm(
    timm_model):
  """A 40 x 24 input (5 x 3 grid from 4 x 6): timm's dynamic_img_size."""
  module, variables, _ = timm_model
  fx = np.load(ZOO / "vit_tiny_resampled.npz")
  _assert_logits(jax.jit(module.apply)(variables, jnp.asarray(fx["input"])),
                 fx["logits"])


def test_hugging_face_directory_gives_transformers_logits_and_taps():
  config = json.loads((ZOO / "hf_vit" / "config.json").read_text())
  module, layout = vit.HF_MODEL_TYPES["vit"](config, None)
  assert (module.num_classes, module.mlp_dim, module.image_size,
          module.layer_norm_eps) == (7, 80, (32, 48), 1e-12)
  variables = import_weights(module, ZOO / "hf_vit", layout=layout)
  fx = np.load(ZOO / "hf_vit.npz")
  clf = lapjax.from_flax(module, variables, layers=TAPS, tokens=None)
  logits, feats = jax.jit(clf.apply)(jnp.asarray(fx["input"]))
  _assert_logits(logits, fx["logits"])
  for tap in TAPS:
    _assert_tap(feats[tap], fx[f"stage:{tap}"])


def test_load_pretrained_builds_a_hugging_face_directory_by_its_config():
  module, variables = load_pretrained(ZOO / "hf_vit")
  fx = np.load(ZOO / "hf_vit.npz")
  assert isinstance(module, vit.VisionTransformer)
  _assert_logits(jax.jit(module.apply)(variables, jnp.asarray(fx["input"])),
                 fx["logits"])
  module, variables = load_pretrained(ZOO / "hf_vit", num_classes=3)
  assert variables["params"]["head"]["kernel"].shape == (48, 3)


def test_hf_config_num_classes_override_and_unsupported_activation():
  config = json.loads((ZOO / "hf_vit" / "config.json").read_text())
  module, _ = vit.HF_MODEL_TYPES["vit"](config, 3)
  assert module.num_classes == 3
  with pytest.raises(ValueError, match="gelu_new"):
    vit.HF_MODEL_TYPES["vit"]({**config, "hidden_act": "silu"}, None)


@pytest.mark.parametrize("name, params", [
    ("vit_small_patch16_224", 22_050_664),
    ("vit_base_patch16_224", 86_567_656),
    ("vit_base_patch32_224", 88_224_232),
    ("vit_base_patch8_224", 86_576_872)])
def test_cards_build_timms_architectures(name, params):
  """Parameter counts as timm's models report them; taps and token grid."""
  card = vit.CARDS[name]
  module = card.build(num_classes=card.num_classes)
  x = jax.ShapeDtypeStruct((1, *card.input_size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  assert sum(int(np.prod(p.shape))
             for p in jax.tree.leaves(variables)) == params
  shapes = {}

  def record(v):
    shapes.update(lapjax.available_layers(module, v, (*card.input_size, 3)))
    return 0

  jax.eval_shape(record, variables)
  grid = card.token_grid
  tokens = 1 + grid[0] * grid[1]
  assert grid == (224 // module.patch_size,) * 2
  assert card.num_prefix_tokens == 1
  assert card.taps[-2] == "block12"
  assert card.cam_layer == "block12/norm1"
  assert shapes[card.cam_layer] == (1, tokens, module.embed_dim)
  for tap in card.taps[1:]:
    assert shapes[tap] == (1, tokens, module.embed_dim)
  for tap in vit.attention_taps(module.depth):
    assert shapes[tap] == (1, module.num_heads, tokens, tokens)
  assert (card.mean, card.std) == ((0.5,) * 3, (0.5,) * 3)
  assert (card.resize_size, card.interpolation) == (248, "bicubic")


def test_attention_deltas_give_the_gradient_of_the_probabilities(
    timm_model):
  """d logit / d probs via deltas equals a central finite difference of the
  logit when the probabilities are perturbed along a random direction; in
  the last block only the class token's row reaches the head."""
  module, variables, fx = timm_model
  probs = ("block1/attn/probs", "block2/attn/probs")
  clf = lapjax.from_flax(module, variables, layers=(*probs, "block2"),
                         tokens=None)
  x = jnp.asarray(fx["input"][:1])
  _, feats = clf.apply(x)
  zeros = {k: jnp.zeros_like(v) for k, v in feats.items()}

  @jax.jit
  def score(deltas):
    return clf.apply(x, deltas)[0][0, 3]

  grads = jax.jit(jax.grad(score))(zeros)
  # Why the CAM layer is block{depth}/norm1: the last block's patch tokens
  # do not reach the head.
  assert np.abs(grads["block2"][:, 1:]).max() == 0.0
  assert np.abs(grads["block2"][:, 0]).min() > 0.0
  last = grads["block2/attn/probs"]
  assert np.abs(last[:, :, 1:]).max() == 0.0
  assert np.abs(last[:, :, 0]).min() > 0.0
  assert np.abs(grads["block1/attn/probs"][:, :, 1:]).max() > 0.0
  keys = jax.random.split(jax.random.key(0), len(probs))
  for layer, key in zip(probs, keys):
    direction = jax.random.normal(key, feats[layer].shape)
    step = 1e-3
    plus = score({**zeros, layer: step * direction})
    minus = score({**zeros, layer: -step * direction})
    finite = (plus - minus) / (2 * step)
    np.testing.assert_allclose(jnp.vdot(grads[layer], direction), finite,
                               rtol=2e-3)


def test_jit_batch_and_other_images_do_not_change_logits(timm_model):
  module, variables, fx = timm_model
  x = jnp.asarray(fx["input"])            # 32 x 48: non-square 4 x 6 grid
  eager = module.apply(variables, x)
  jitted = jax.jit(module.apply)(variables, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
  single = jax.jit(module.apply)(variables, x[1:])
  np.testing.assert_allclose(single[0], eager[1], rtol=1e-5, atol=1e-6)
  other = x.at[0].set(jax.random.normal(jax.random.key(1), x.shape[1:]))
  np.testing.assert_allclose(jax.jit(module.apply)(variables, other)[1],
                             eager[1], rtol=1e-5, atol=1e-6)


def test_inputs_that_are_not_whole_patches_are_refused(timm_model):
  module, variables, _ = timm_model
  with pytest.raises(ValueError, match="multiples of 8"):
    module.apply(variables, jnp.zeros((1, 30, 48, 3)))


def test_bicubic_resize_matrix_is_identity_at_equal_size_and_normalised():
  np.testing.assert_array_equal(vit.bicubic_resize_matrix(5, 5), np.eye(5))
  for size_in, size_out in ((4, 7), (6, 3), (14, 24)):
    weights = vit.bicubic_resize_matrix(size_in, size_out)
    assert weights.shape == (size_out, size_in)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-12)
    # Mirror symmetry of the sampling grid.
    np.testing.assert_allclose(weights, weights[::-1, ::-1], atol=1e-12)


@pytest.mark.parametrize("method", [
    "gradient", "integrated_gradients", "smoothgrad", "occlusion",
    "grad_cam"])
def test_attribution_methods_run_on_the_reduced_vit(timm_model, method):
  module, variables, fx = timm_model
  x = jnp.asarray(fx["input"])
  cam_layer = "block2/norm1"               # the cards' block{depth}/norm1
  clf = lapjax.from_flax(module, variables, layers=(cam_layer,))
  targets = jnp.array([1, 4])
  if method == "grad_cam":               # the tap is a 4 x 6 grid
    maps = attribution.grad_cam(clf, x, targets, layer=cam_layer)
  elif method == "integrated_gradients":
    maps = attribution.integrated_gradients(clf, x, targets, steps=4)
  elif method == "smoothgrad":
    maps = attribution.smoothgrad(clf, x, targets, key=jax.random.key(0),
                                  samples=3)
  elif method == "occlusion":
    maps = attribution.occlusion(clf, x, targets, window=(8, 8),
                                 stride=(8, 8))
  else:
    maps = attribution.gradient(clf, x, targets)
  assert maps.shape == (2, 32, 48)
  assert bool(jnp.isfinite(maps).all())
  assert float(jnp.abs(maps).max()) > 0.0
