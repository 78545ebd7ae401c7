"""Every CNN-style lapjax method on a ViT, through token taps read as grids.

A tiny ViT (8 x 8 patches of a 32 x 48 input: a 4 x 6 grid, H != W; two
blocks of width 32) with random weights. ``from_flax`` reads its
``token_layout()``, so its token taps are ``[B, 4, 6, 32]`` grids; the
references below are computed from the raw tokens (``tokens=None``) with
the grid indexed by hand (token ``1 + i * w + j`` is cell ``(i, j)``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lapjax
from lapjax import attribution as attr
from lapjax import lap
from lapjax.models.vit import VisionTransformer
from lapjax.tokens import TokenLayout

H, W, P = 32, 48, 8
GRID = (H // P, W // P)
CAM_LAYER = "block2/norm1"
TARGETS = jnp.array([0, 2])


@pytest.fixture(scope="module")
def vit():
  module = VisionTransformer(num_classes=3, patch_size=P, embed_dim=32,
                             depth=2, num_heads=2, image_size=(H, W))
  x = jax.random.uniform(jax.random.key(0), (2, H, W, 3))
  variables = module.init(jax.random.key(1), x)
  return module, variables, x


@pytest.fixture(scope="module")
def clf(vit):
  module, variables, _ = vit
  return lapjax.from_flax(module, variables,
                          layers=("block1", CAM_LAYER, "block2",
                                  "block2/attn/probs"))


def _grid_by_hand(tokens: np.ndarray, prefix: int = 1) -> np.ndarray:
  """``[B, T, D]`` -> ``[B, h, w, D]``, cell ``(i, j)`` = token
  ``prefix + i * w + j``."""
  h, w = GRID
  out = np.zeros((tokens.shape[0], h, w, tokens.shape[-1]), tokens.dtype)
  for i in range(h):
    for j in range(w):
      out[:, i, j] = tokens[:, prefix + i * w + j]
  return out


def _raw_layer_gradients(vit, layer, targets):
  """Raw tokens of ``layer`` and d logit[target] / d tokens (no grids)."""
  module, variables, x = vit
  raw = lapjax.from_flax(module, variables, layers=(layer,), tokens=None)
  tokens = raw.apply(x)[1][layer]

  def score(delta):
    logits = raw.apply(x, {layer: delta})[0]
    return jnp.take_along_axis(logits, targets[:, None], 1).sum()

  grads = jax.jit(jax.grad(score))(jnp.zeros_like(tokens))
  return np.asarray(tokens), np.asarray(grads)


# Token taps as grids.


def test_vit_taps_are_patch_grids_and_attention_stays_as_it_is(vit, clf):
  module, variables, x = vit
  assert clf.tokens == TokenLayout((P, P), num_prefix_tokens=1)
  logits, feats = clf.apply(x)
  raw = lapjax.from_flax(module, variables, layers=clf.layers, tokens=None)
  raw_logits, raw_feats = raw.apply(x)
  assert raw.tokens is None
  np.testing.assert_array_equal(logits, raw_logits)
  for layer in ("block1", CAM_LAYER, "block2"):
    assert feats[layer].shape == (2, *GRID, 32)
    np.testing.assert_array_equal(feats[layer],
                                  _grid_by_hand(np.asarray(raw_feats[layer])))
  probs = feats["block2/attn/probs"]
  assert probs.shape == (2, 2, 1 + GRID[0] * GRID[1], 1 + GRID[0] * GRID[1])
  np.testing.assert_array_equal(probs, raw_feats["block2/attn/probs"])


def test_patch_embed_grid_holds_each_patch_at_its_place(vit):
  """Patch ``(i, j)`` filled with the constant ``c_ij = 10 i + j``: the
  patch embedding (a linear ``8 x 8`` stride-8 conv) at grid cell ``(i,
  j)`` is ``c_ij * kernel.sum((0, 1, 2)) + bias``; ``patch_embed`` has no
  class token, so its tokens are exactly the grid."""
  module, variables, _ = vit
  h, w = GRID
  values = 10.0 * np.arange(h)[:, None] + np.arange(w)[None, :]
  x = jnp.asarray(np.kron(values, np.ones((P, P)))[None, :, :, None]
                  * np.ones((1, 1, 1, 3)), jnp.float32)
  clf = lapjax.from_flax(module, variables, layers=("patch_embed",))
  grid = clf.apply(x)[1]["patch_embed"]
  proj = variables["params"]["patch_embed"]["proj"]
  expected = (values[None, :, :, None] * np.asarray(proj["kernel"]).sum(
      (0, 1, 2)) + np.asarray(proj["bias"]))
  np.testing.assert_allclose(grid, expected, rtol=1e-5, atol=1e-4)


def test_grid_deltas_reach_the_patch_tokens_only(vit, clf):
  """d logit / d grid delta equals the raw tokens' gradient at the patch
  tokens, read by hand."""
  _, _, x = vit
  tokens, raw_grads = _raw_layer_gradients(vit, CAM_LAYER, TARGETS)
  zeros = jnp.zeros((2, *GRID, 32))

  def score(delta):
    logits = clf.apply(x, {CAM_LAYER: delta})[0]
    return jnp.take_along_axis(logits, TARGETS[:, None], 1).sum()

  grads = jax.jit(jax.grad(score))(zeros)
  np.testing.assert_allclose(grads, _grid_by_hand(raw_grads), rtol=1e-5,
                             atol=1e-7)
  assert np.abs(raw_grads[:, 0]).max() > 0     # the class token had some
  shifted = clf.apply(x, {CAM_LAYER: jnp.ones_like(zeros)})[1][CAM_LAYER]
  np.testing.assert_allclose(shifted, _grid_by_hand(tokens) + 1.0,
                             rtol=1e-6)


def test_token_shaped_delta_is_refused_with_the_grid_shape(vit, clf):
  _, _, x = vit
  with pytest.raises(ValueError, match=r"patch grid has shape \(2, 4, 6, 32\)"):
    clf.apply(x, {CAM_LAYER: jnp.zeros((2, 25, 32))})


def test_layers_none_picks_the_token_layers(vit):
  module, variables, _ = vit
  clf = lapjax.from_flax(module, variables, input_shape=(H, W, 3))
  assert clf.layers == ("patch_embed", "block1", "block2", "norm")


def test_other_input_sizes_give_their_own_grid(vit):
  """Position embeddings are resampled to a 40 x 24 input: a 5 x 3 grid."""
  module, variables, _ = vit
  clf = lapjax.from_flax(module, variables, layers=(CAM_LAYER,))
  x = jnp.ones((1, 40, 24, 3))
  assert clf.apply(x)[1][CAM_LAYER].shape == (1, 5, 3, 32)
  maps = attr.grad_cam(clf, x, jnp.array([1]), layer=CAM_LAYER)
  assert maps.shape == (1, 40, 24)


# CAM-type methods: equal to the same formula on the raw tokens.


def test_grad_cam_and_layer_cam_equal_their_formulas_on_the_tokens(vit,
                                                                   clf):
  """Both signs of the target's cotangent (float targets ``[B, K]``), so
  that the ReLU keeps one side of the map whatever its sign."""
  _, _, x = vit
  tokens, grads = _raw_layer_gradients(vit, CAM_LAYER, TARGETS)
  acts, g = _grid_by_hand(tokens), _grid_by_hand(grads)
  pre = np.einsum("bd,bhwd->bhw", g.mean(axis=(1, 2)), acts)
  assert float(np.abs(pre).max()) > 0
  for sign in (1.0, -1.0):
    weights = sign * jax.nn.one_hot(TARGETS, 3)
    got = attr.grad_cam(clf, x, weights, layer=CAM_LAYER, resize=False)
    np.testing.assert_allclose(got, np.maximum(sign * pre, 0), rtol=1e-4,
                               atol=1e-5 * np.abs(pre).max())
  want = np.maximum((np.maximum(g, 0) * acts).sum(-1), 0)
  assert float(want.max()) > 0
  got = attr.layer_cam(clf, x, TARGETS, layer=CAM_LAYER, resize=False)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())


def test_lafam_is_the_normalised_channel_mean_of_the_patch_tokens(vit, clf):
  _, _, x = vit
  module, variables, _ = vit
  raw = lapjax.from_flax(module, variables, layers=("block2",), tokens=None)
  mean = _grid_by_hand(np.asarray(raw.apply(x)[1]["block2"])).mean(-1)
  lo = mean.min(axis=(1, 2), keepdims=True)
  hi = mean.max(axis=(1, 2), keepdims=True)
  got = attr.lafam(clf, x, TARGETS, layer="block2", resize=False)
  np.testing.assert_allclose(got, (mean - lo) / (hi - lo + 1e-8),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_plus_plus",
                                    "layer_cam", "score_cam", "lafam"])
def test_cams_give_input_sized_maps_from_the_token_grid(vit, clf, method):
  _, _, x = vit
  kwargs = {"chunk_size": 16} if method == "score_cam" else {}
  maps = getattr(attr, method)(clf, x, TARGETS, layer=CAM_LAYER, **kwargs)
  native = getattr(attr, method)(clf, x, TARGETS, layer=CAM_LAYER,
                                 resize=False, **kwargs)
  assert maps.shape == (2, H, W) and native.shape == (2, *GRID)
  assert bool(jnp.isfinite(maps).all()) and float(maps.min()) >= 0


def test_grad_cam_batch_single_and_jit_agree(vit, clf):
  """With the negated target cotangent, where this random ViT's Grad-CAM
  is non-zero (its plain maps are all cut by the ReLU)."""
  _, _, x = vit
  weights = -jax.nn.one_hot(TARGETS, 3)
  eager = attr.grad_cam(clf, x, weights, layer=CAM_LAYER)
  scale = float(jnp.abs(eager).max())
  assert scale > 0
  jitted = jax.jit(lambda x, t: attr.grad_cam(clf, x, t, layer=CAM_LAYER))
  np.testing.assert_allclose(jitted(x, weights), eager, rtol=1e-5,
                             atol=1e-6 * scale)
  single = attr.grad_cam(clf, x[1:], weights[1:], layer=CAM_LAYER)
  np.testing.assert_allclose(single[0], eager[1], rtol=1e-5,
                             atol=1e-6 * scale)
  other = x.at[0].set(jax.random.uniform(jax.random.key(5), x.shape[1:]))
  np.testing.assert_allclose(jitted(other, weights)[1], eager[1],
                             rtol=1e-5, atol=1e-6 * scale)


def test_attribution_lens_around_layer_cam_on_the_vit(vit, clf):
  """The lens of a CAM on token grids is the lens of the class-wise maps;
  the class-wise maps equal the single-class ones."""
  _, _, x = vit
  class_set = jnp.array([[0, 1, 2], [2, 0, 1]])
  cams = attr.layer_cam(clf, x, class_set, layer=CAM_LAYER)
  assert float(cams.max()) > 0
  np.testing.assert_allclose(
      cams[:, 0], attr.layer_cam(clf, x, class_set[:, 0], layer=CAM_LAYER),
      rtol=1e-5, atol=1e-6 * float(cams.max()))
  refined = attr.attribution_lens(attr.layer_cam, clf, x, class_set,
                                  layer=CAM_LAYER)
  np.testing.assert_allclose(refined, attr.lens_refine(cams), rtol=1e-5,
                             atol=1e-6)
  one = attr.attribution_lens(attr.layer_cam, clf, x, class_set,
                              target=TARGETS, layer=CAM_LAYER)
  np.testing.assert_allclose(one, refined[:, 0], rtol=1e-6)


def test_detached_lap_heads_on_a_vit_block_give_grid_maps(vit):
  module, variables, x = vit
  dcs = lap.one_vs_others(3, bgo=0)
  model = lap.DetachedLAPModel(module, ("block1", CAM_LAYER),
                               dcs.num_dcs, head_widths=(8,))
  lap_vars = model.init(jax.random.key(2), x)
  taps = lap.detached_map_layers(("block1", CAM_LAYER))
  clf = lapjax.from_flax(model, lap_vars, layers=taps)
  assert clf.tokens == module.token_layout()
  logits, feats = clf.apply(x)
  np.testing.assert_array_equal(logits, module.apply(
      {"params": lap_vars["params"]["backbone"]}, x))
  for tap in taps:
    assert feats[tap].shape == (2, *GRID, dcs.num_dcs)
  maps = attr.lap_maps(clf, x, TARGETS, layers=taps, dcs=dcs)
  assert maps.shape == (2, H, W)
  assert bool(((maps >= 0) & (maps <= 1)).all())


# Gradient and perturbation methods, unchanged.


def test_integrated_gradients_on_the_vit_are_complete(vit, clf):
  """sum IG = f(x) - f(x') up to quadrature error. The baseline ``x'`` is
  another image: from black the LayerNorms see only position embeddings
  (std 0.02) and the logits change within the first few per cent of the
  path, which a 32-point rule does not resolve."""
  _, _, x = vit
  baseline = jax.random.uniform(jax.random.key(9), x.shape)
  maps = attr.integrated_gradients(clf, x, TARGETS, steps=32,
                                   baseline=baseline)
  diff = (clf.apply(x)[0] - clf.apply(baseline)[0])
  diff = jnp.take_along_axis(diff, TARGETS[:, None], 1)[:, 0]
  assert float(jnp.abs(diff).min()) > 1e-2
  np.testing.assert_allclose(maps.sum((1, 2)), diff, rtol=1e-3)


def test_gradient_and_input_x_gradient_are_the_input_gradient(vit, clf):
  module, variables, x = vit

  def score(x):
    logits = module.apply(variables, x)
    return jnp.take_along_axis(logits, TARGETS[:, None], 1).sum()

  g = jax.jit(jax.grad(score))(x)
  np.testing.assert_allclose(attr.gradient(clf, x, TARGETS), g.sum(-1),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(attr.input_x_gradient(clf, x, TARGETS),
                             (x * g).sum(-1), rtol=1e-5, atol=1e-7)


def test_occlusion_with_patch_windows_scores_each_patch(vit, clf):
  """8 x 8 windows at stride 8 occlude one patch each: the map on patch
  ``(i, j)`` is ``f(x) - f(x with that patch zeroed)``."""
  module, variables, x = vit
  maps = attr.occlusion(clf, x, TARGETS, window=(P, P), stride=(P, P))
  forward = jax.jit(module.apply)
  logits = forward(variables, x)
  for i, j in ((0, 0), (1, 4), (3, 5)):
    occluded = x.at[:, i * P:(i + 1) * P, j * P:(j + 1) * P].set(0.0)
    drop = logits - forward(variables, occluded)
    want = jnp.take_along_axis(drop, TARGETS[:, None], 1)[:, 0]
    patch = maps[:, i * P:(i + 1) * P, j * P:(j + 1) * P]
    np.testing.assert_allclose(patch, jnp.broadcast_to(
        want[:, None, None], patch.shape), rtol=1e-4, atol=1e-6)


def test_stochastic_methods_run_on_the_vit_and_repeat_with_a_key(vit, clf):
  _, _, x = vit
  key = jax.random.key(3)
  runs = {
      "smoothgrad": lambda: attr.smoothgrad(clf, x, TARGETS, key=key,
                                            samples=4),
      "rise": lambda: attr.rise(clf, x, TARGETS, key=key, num_masks=32,
                                cells=4),
      "relax": lambda: attr.relax(clf, x, TARGETS, layer="block2", key=key,
                                  num_masks=32, cells=4),
      "sloc": lambda: attr.sloc(clf, x, TARGETS, key=key, p=0.5,
                                patch_sizes=(8,), num_masks=16, steps=10),
  }
  for name, run in runs.items():
    maps = run()
    assert maps.shape == (2, H, W), name
    assert bool(jnp.isfinite(maps).all()), name
    assert float(jnp.abs(maps).max()) > 0, name
    np.testing.assert_array_equal(run(), maps, err_msg=name)


def test_guided_backprop_refuses_the_gelu_vit_by_name(vit):
  module, variables, _ = vit
  with pytest.raises(ValueError, match="act=gelu, not ReLU"):
    attr.guided_classifier(module, variables, layers=(CAM_LAYER,))


# Bad input.


class _WrongTokens(lapjax.models.vit.VisionTransformer):
  """A ViT whose layout claims two prefix tokens where it has one."""

  def token_layout(self) -> TokenLayout:
    return TokenLayout((P, P), num_prefix_tokens=2)


def test_a_token_count_off_the_grid_names_layer_shape_and_grid(vit):
  module, variables, x = vit
  wrong = _WrongTokens(**{f: getattr(module, f) for f in (
      "num_classes", "patch_size", "embed_dim", "depth", "num_heads",
      "image_size")})
  clf = lapjax.from_flax(wrong, variables, layers=(CAM_LAYER,))
  with pytest.raises(ValueError) as info:
    clf.apply(x)
  message = str(info.value)
  for part in (repr(CAM_LAYER), "(2, 25, 32)", "[B, 26, D]",
               "2 prefix token(s) and a 4x6 patch grid", "32x48 input"):
    assert part in message, (part, message)
  explicit = lapjax.from_flax(module, variables, layers=(CAM_LAYER,),
                              tokens=TokenLayout((16, 16), 1))
  with pytest.raises(ValueError, match=r"a 2x3 patch grid"):
    explicit.apply(x)
