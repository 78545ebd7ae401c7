"""PITFALLS.md items 3, 6, 7, 12, 13, 15 and 21: one test each (issue 15,
item 17). The other items are tested beside their code."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import metrics
from lapjax.attribution import postprocess as pp
from lapjax.data import boxes
from lapjax.metrics import faithfulness as F
from lapjax.metrics import sanity
from tests.attribution.models import linear_classifier

perturbation = importlib.import_module("lapjax.attribution.perturbation")
H, W = 30, 48                                   # H != W


def test_03_multi_object_pointing_game_and_tolerance():
  """Two objects in one mask: a maximum near the second, smaller object
  counts; 10 px right of it is a miss at tolerance 0 and a hit at 15, and
  the distance is to the nearest object, not to the first or the union's
  box."""
  mask = boxes.boxes_to_mask(
      np.array([[[2, 2, 12, 12], [20, 30, 24, 34]]], np.float32),
      np.array([[True, True]]), H, W)
  inside = np.zeros((1, H, W), np.float32)
  inside[0, 22, 31] = 1.0                       # on the second object
  assert metrics.pointing_game(inside, mask)[0] == 1
  right = np.zeros((1, H, W), np.float32)
  right[0, 22, 43] = 1.0                        # 10 px right of column 33
  assert metrics.pointing_game(right, mask, tolerance=0)[0] == 0
  assert metrics.pointing_game(right, mask, tolerance=15)[0] == 1
  # Between the objects, inside their union's bounding box: a miss.
  between = np.zeros((1, H, W), np.float32)
  between[0, 16, 20] = 1.0
  assert metrics.pointing_game(between, mask, tolerance=0)[0] == 0


def test_06_negative_relevance_is_least_relevant_unless_abs_is_asked():
  """Ranking metrics read the sign as given: strongly negative pixels in
  the mask are not 'relevant' (abs would make them a hit), and strongly
  negative pixels outside change no ranking score."""
  mask = np.zeros((1, H, W), bool)
  mask[0, 5:15, 10:20] = True                   # 100 pixels
  neg_in = np.zeros((1, H, W), np.float32)
  neg_in[0, 5:15, 10:20] = -5.0
  neg_in[0, 25:, 40:] = 1.0                     # 40 positive pixels outside
  assert metrics.pointing_game(neg_in, mask)[0] == 0
  assert metrics.top_k_intersection(neg_in, mask, k=40)[0] == 0
  assert metrics.relevance_rank_accuracy(neg_in, mask)[0] == 0
  assert metrics.roc_auc(neg_in, mask)[0] < 0.5
  assert metrics.relevance_mass_accuracy(neg_in, mask)[0] == 0
  magnitudes = pp.absolute(neg_in)              # explicit, by the user
  assert metrics.pointing_game(magnitudes, mask)[0] == 1
  assert metrics.top_k_intersection(magnitudes, mask, k=40)[0] == 1
  pos_in = np.zeros((1, H, W), np.float32)
  pos_in[0, 5:10, 10:20] = 1.0                  # half the mask
  neg_out = pos_in.copy()
  neg_out[0, 20:, :] = -50.0
  for f in (metrics.pointing_game, metrics.relevance_rank_accuracy,
            metrics.top_k_intersection, metrics.relevance_mass_accuracy):
    assert float(f(neg_out, mask)[0]) == float(f(pos_in, mask)[0]), f
  assert float(metrics.relevance_mass_accuracy(pos_in, mask)[0]) == 1.0


def test_07_resize_before_or_after_thresholding():
  """A 2 x 2 map with one hot cell, upsampled x2 to 4 x 4. Binarising at
  20 % of the maximum and then upsampling (nearest) gives the cell's 4
  pixels; upsampling (bilinear: 4, 3, 3, 2.25, 1, 1, 0.75, ...) and then
  binarising keeps 6 pixels: IoU with the cell's pixels 1 vs 4/6."""
  m = jnp.array([[[4.0, 0.0], [0.0, 0.0]]])
  cell = np.zeros((1, 4, 4), bool)
  cell[0, :2, :2] = True
  after = pp.resize(pp.binarize_threshold(m, 0.8).astype(jnp.float32),
                    (4, 4), "nearest") > 0.5
  before = pp.binarize_threshold(pp.resize(m, (4, 4), "bilinear"), 0.8)
  assert int(after.sum()) == 4 and int(before.sum()) == 6
  assert float(metrics.iou(after, cell)[0]) == 1.0
  assert float(metrics.iou(before, cell)[0]) == pytest.approx(4 / 6)
  # Top-k keeps its count either way; the pixels can still differ.
  top = pp.binarize_top_k(pp.resize(m, (4, 4), "bilinear"), 6 / 16)
  assert int(top.sum()) == 6


def test_12_uneven_steps_and_no_channel_averaging():
  """``steps`` not dividing ``H W``: ``rint(f H W)`` pixels at fraction
  ``f`` (24 pixels, 7 steps: 0, 3, 7, 10, 14, 17, 21, 24), each step
  counted exactly; maps with a channel axis are refused, not averaged."""
  h, w = 4, 6
  weights = jnp.zeros((2, h, w, 3)).at[1].set(1.0 / 3)   # logit_1 = #pixels
  x = jnp.ones((1, h, w, 3))
  maps = jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w)
  out = F.insertion_deletion(linear_classifier(weights), x, maps,
                             jnp.array([1]), steps=7, score="logit")
  counts = np.array([0, 3, 7, 10, 14, 17, 21, 24])
  np.testing.assert_allclose(out["del_curve"][0], 24 - counts, rtol=1e-6)
  np.testing.assert_allclose(out["ins_curve"][0], counts, rtol=1e-6)
  with pytest.raises(ValueError, match="channels reduced"):
    F.insertion_deletion(linear_classifier(weights), x, maps[..., None]
                         .repeat(3, -1), jnp.array([1]), steps=7)


def test_13_sic_aic_skip_images_already_confident_when_blurred():
  """PAIR's second filter: an image whose blurred start image is already
  predicted as the explained class is skipped and counted; the same image
  under a model that needs the detail is scored."""
  hh, ww = 8, 10
  checker = np.indices((hh, ww)).sum(0) % 2 * 2.0 - 1.0
  wt = np.zeros((2, hh, ww, 3), np.float32)
  wt[1, 1:7, 2:9] = checker[1:7, 2:9, None]
  noise = np.random.default_rng(0).uniform(-0.1, 0.1, (1, hh, ww, 3))
  x = jnp.asarray(0.5 + 0.4 * checker[None, ..., None] + noise, jnp.float32)
  maps = jnp.asarray(np.abs(wt[1]).sum(-1))[None]
  kw = dict(key=jax.random.key(0), blur_sigma=1.5)
  needs_detail = F.sic_aic(linear_classifier(jnp.asarray(wt),
                                             jnp.array([0.0, -20.0])),
                           x, maps, jnp.array([1]), **kw)
  confident = F.sic_aic(linear_classifier(jnp.asarray(wt),
                                          jnp.array([0.0, 20.0])),
                        x, maps, jnp.array([1]), **kw)
  assert needs_detail["n_skipped"] == 0 and np.isfinite(needs_detail["sic"][0])
  assert confident["n_skipped"] == 1 and bool(confident["skipped"][0])
  assert np.isnan(confident["sic"][0]) and np.isnan(confident["aic"][0])


class _Scale(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x * self.param("w", nn.initializers.normal(1.0), x.shape[1:])


class _TwoScales(nn.Module):
  """``logits`` from ``x_0 * a * b``: same-shaped layers 'a' then 'b'."""

  @nn.compact
  def __call__(self, x):
    y = _Scale(name="b")(_Scale(name="a")(x[..., 0]))
    return y.reshape(y.shape[0], -1)[:, :2]


def test_15_each_randomised_layer_has_its_own_key():
  """Quantus re-seeded every layer with the same seed. Here layer ``i`` of
  the cascade ('b' then 'a', output first) takes its parameters from
  ``init(fold_in(key, i))``: with a map equal to ``a * b`` the steps'
  similarities are known, and differ from one shared key's."""
  model = _TwoScales()
  x = jnp.ones((2, 5, 7, 1))
  v = model.init(jax.random.key(0), x)
  key = jax.random.key(9)
  out = sanity.cascading_randomization(
      model, v, x, jnp.array([0, 1]), lambda clf, x, t: clf.apply(x)[1]["b"],
      key=key, classifier_layers=["b"], similarities=["pearson"])
  assert out["layers"] == ["b", "a"]
  fresh = [model.init(jax.random.fold_in(key, i), x)["params"]
           for i in range(2)]
  a0, b0 = v["params"]["a"]["w"], v["params"]["b"]["w"]
  ref = jnp.broadcast_to(a0 * b0, (2, 5, 7))
  step1 = a0 * fresh[0]["b"]["w"]
  step2 = fresh[1]["a"]["w"] * fresh[0]["b"]["w"]
  got = np.asarray(out["similarity"]["pearson"])
  for i, m in ((1, step1), (2, step2)):
    np.testing.assert_allclose(
        got[i], sanity.pearson(ref, jnp.broadcast_to(m, (2, 5, 7))),
        rtol=1e-5)
  shared = fresh[0]["a"]["w"] * fresh[0]["b"]["w"]
  assert not np.allclose(got[2], sanity.pearson(
      ref, jnp.broadcast_to(shared, (2, 5, 7))), rtol=1e-3)


def test_21_rise_masks_are_idempotent_under_a_fixed_key():
  """Random shifts drawn from the key: the same key gives the same masks
  and the same map, bit for bit; another key gives other shifts."""
  key = jax.random.key(3)
  one = perturbation._rise_mask(key, (11, 13), 3, 0.5)
  np.testing.assert_array_equal(
      one, perturbation._rise_mask(key, (11, 13), 3, 0.5))
  others = [perturbation._rise_mask(jax.random.fold_in(key, i), (11, 13), 3,
                                    0.5) for i in range(4)]
  assert not all(np.array_equal(one, o) for o in others)
  wts = jax.random.normal(jax.random.key(1), (2, 11, 13, 1))
  x = jax.random.uniform(jax.random.key(2), (2, 11, 13, 1))
  kw = dict(key=key, num_masks=12, cells=3, chunk_size=5)
  first = attr.rise(linear_classifier(wts), x, jnp.array([0, 1]), **kw)
  np.testing.assert_array_equal(
      first, attr.rise(linear_classifier(wts), x, jnp.array([0, 1]), **kw))
  other = attr.rise(linear_classifier(wts), x, jnp.array([0, 1]),
                    **{**kw, "key": jax.random.key(4)})
  assert not np.allclose(first, other)
