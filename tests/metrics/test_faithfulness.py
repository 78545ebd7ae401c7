"""Faithfulness metrics on linear models with hand-computable curves, and the
PITFALLS items 8-13."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.metrics import faithfulness as F
from tests.attribution.models import linear_classifier

H, W = 4, 6                                     # H != W


def _model(weights):
  return linear_classifier(jnp.asarray(weights, jnp.float32))


def test_auc_is_invariant_to_the_number_of_steps_for_a_linear_curve():
  for steps in (2, 5, 11, 101):
    curve = jnp.linspace(1.0, 0.0, steps)
    np.testing.assert_allclose(F.auc(curve), 50.0, rtol=1e-6)
  np.testing.assert_allclose(F.auc(jnp.array([1.0, 1.0])), 100.0)
  with pytest.raises(ValueError, match="at least 2 points"):
    F.auc(jnp.array([1.0]))


def test_deletion_curve_equals_the_remaining_sum_on_a_linear_model():
  """logit_1 = sum(x * w): deleting pixels (baseline 0) in rank order
  removes their x * w; the curve is known point by point. Off-centre,
  H != W, pixel 2 channels all used."""
  rng = np.random.default_rng(0)
  w = np.zeros((2, H, W, 3))
  w[1] = rng.uniform(0, 1, (H, W, 3))
  x = rng.uniform(0.5, 1.0, (1, H, W, 3)).astype(np.float32)
  contrib = (x[0] * w[1]).sum(-1)                     # [H, W]
  maps = jnp.asarray(contrib)[None]
  fractions = np.arange(H * W + 1) / (H * W)
  curve = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                               fractions=fractions, score="logit")
  order = np.argsort(-contrib.ravel(), kind="stable")
  expected = contrib.sum() - np.concatenate(
      [[0.0], np.cumsum(contrib.ravel()[order])])
  np.testing.assert_allclose(curve[0], expected, rtol=1e-5, atol=1e-5)
  ins = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                             fractions=fractions, mode="insert",
                             score="logit")
  np.testing.assert_allclose(ins[0], contrib.sum() - expected, rtol=1e-5,
                             atol=1e-5)


def test_perturbing_a_pixel_changes_every_channel():
  """PITFALLS 8: a model that only reads channel 2 must see deletion."""
  w = np.zeros((2, H, W, 3))
  w[1, :, :, 2] = 1.0
  x = jnp.ones((1, H, W, 3))
  maps = jnp.zeros((1, H, W)).at[0, 1, 4].set(1.0)
  curve = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                               fractions=[0.0, 1 / (H * W)], score="logit")
  np.testing.assert_allclose(curve[0], [H * W, H * W - 1])


def test_baseline_is_the_given_value_not_the_image_minimum():
  """PITFALLS 11: an image whose minimum is 0.5; baseline 0 removes the
  whole value, baseline 'min' semantics would remove only x - 0.5."""
  w = np.zeros((2, H, W, 3))
  w[1] = 1.0
  x = jnp.full((1, H, W, 3), 0.75).at[0, 0, 0].set(0.5)
  maps = jnp.zeros((1, H, W)).at[0, 2, 3].set(1.0)
  fr = [0.0, 1 / (H * W)]
  curve = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                               fractions=fr, score="logit")
  np.testing.assert_allclose(curve[0, 0] - curve[0, 1], 3 * 0.75, rtol=1e-6)
  half = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                              fractions=fr, score="logit", baseline=0.5)
  np.testing.assert_allclose(half[0, 0] - half[0, 1], 3 * 0.25, rtol=1e-6)


def test_scores_prob_logit_and_accuracy():
  """PITFALLS 10: the score is explicit."""
  w = np.zeros((2, H, W, 3))
  w[1] = 1.0 / (H * W * 3)                     # logit_1 = mean(x)
  x = jnp.ones((1, H, W, 3))
  maps = jnp.arange(H * W, dtype=jnp.float32).reshape(1, H, W)
  fr = [0.0, 0.5, 1.0]
  kw = dict(fractions=fr, mode="delete")
  logit = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                               score="logit", **kw)[0]
  np.testing.assert_allclose(logit, [1.0, 0.5, 0.0], atol=1e-6)
  prob = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                              score="prob", **kw)[0]
  np.testing.assert_allclose(prob, jax.nn.sigmoid(jnp.array([1.0, 0.5, 0.0])),
                             atol=1e-6)
  acc = F.perturbation_curve(_model(w), x, maps, jnp.array([1]),
                             score="accuracy", **kw)[0]
  np.testing.assert_array_equal(acc, [1.0, 1.0, 0.0])   # tie -> class 0
  with pytest.raises(ValueError, match="score must be one of"):
    F.perturbation_curve(_model(w), x, maps, jnp.array([1]), score="softmax",
                         fractions=fr)


def test_ties_are_broken_by_flat_index():
  """PITFALLS 12: a constant map deletes pixels in row-major order."""
  w = np.zeros((2, H, W, 3))
  w[1, 0, 0] = 1.0                                   # only pixel (0, 0)
  x = jnp.ones((1, H, W, 3))
  curve = F.perturbation_curve(_model(w), x, jnp.zeros((1, H, W)),
                               jnp.array([1]), fractions=[0.0, 1 / (H * W)],
                               score="logit")
  np.testing.assert_allclose(curve[0], [3.0, 0.0])


def test_pos_neg_and_insertion_deletion_rank_a_faithful_map_above_its_inverse():
  """A model deciding by one region: the map of the region gets lower POS
  and DEL, higher NEG and INS, and positive NPD and IDD; its negation the
  opposite. Per example, batch of two."""
  region = np.zeros((H, W))
  region[1:3, 3:6] = 1.0
  w = np.zeros((2, H, W, 3))
  w[1] = region[..., None] * 2.0
  b = jnp.array([0.0, -3.0])
  clf = linear_classifier(jnp.asarray(w, jnp.float32), b)
  x = jnp.ones((2, H, W, 3))
  good = jnp.asarray(np.stack([region, region]), jnp.float32)
  t = jnp.array([1, 1])
  pn_good = F.positive_negative(clf, x, good, t)
  pn_bad = F.positive_negative(clf, x, -good, t)
  assert np.all(pn_good["pos"] < pn_bad["pos"])
  assert np.all(pn_good["neg"] > pn_bad["neg"])
  assert np.all(pn_good["npd"] > 0) and np.all(pn_bad["npd"] < 0)
  np.testing.assert_allclose(pn_good["npd"], pn_good["neg"] - pn_good["pos"])
  assert pn_good["pos_curve"].shape == (2, 10)
  assert np.all(pn_good["pos_curve"][:, 0] == 1.0)   # clean image first
  idd_good = F.insertion_deletion(clf, x, good, t, steps=8)
  idd_bad = F.insertion_deletion(clf, x, -good, t, steps=8)
  assert np.all(idd_good["idd"] > 0) and np.all(idd_bad["idd"] < 0)
  assert idd_good["ins_curve"].shape == (2, 9)
  # End points: deletion starts at the clean score, insertion ends there.
  np.testing.assert_allclose(idd_good["del_curve"][:, 0],
                             idd_good["ins_curve"][:, -1], rtol=1e-6)


def test_metrics_are_jittable_and_chunking_does_not_change_them():
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(3, H, W, 3)), jnp.float32)
  clf = linear_classifier(w)
  x = jnp.asarray(rng.uniform(size=(3, H, W, 3)), jnp.float32)
  maps = jnp.asarray(rng.normal(size=(3, H, W)), jnp.float32)
  t = jnp.array([0, 2, 1])
  eager = F.insertion_deletion(clf, x, maps, t, steps=6, chunk_size=3)
  jitted = jax.jit(lambda x, m: F.insertion_deletion(
      clf, x, m, t, steps=6, chunk_size=64))(x, maps)
  for k in ("ins", "del", "idd"):
    np.testing.assert_allclose(eager[k], jitted[k], rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused():
  clf = _model(np.zeros((2, H, W, 3)))
  x = jnp.ones((1, H, W, 3))
  with pytest.raises(ValueError, match=r"maps must be \[B, H, W\]"):
    F.insertion_deletion(clf, x, jnp.zeros((1, W, H)), jnp.array([0]))
  with pytest.raises(ValueError, match="targets must be"):
    F.insertion_deletion(clf, x, jnp.zeros((1, H, W)), jnp.array([5]))
  with pytest.raises(ValueError, match="fractions"):
    F.perturbation_curve(clf, x, jnp.zeros((1, H, W)), jnp.array([0]),
                         fractions=[0.0, 1.5])


def test_sic_aic_skips_unconfident_images_and_ranks_maps():
  """A model confident only when its region is sharp. Image 0 is
  confidently classified and kept; image 1 is predicted with p < 0.8 and is
  skipped (PITFALLS 13: the count is reported). On image 0 the region's map
  scores higher SIC and AIC than its negation."""
  hh, ww = 16, 20
  rng = np.random.default_rng(2)
  region = np.zeros((hh, ww))
  region[3:8, 11:17] = 1.0
  texture = rng.uniform(0, 1, (hh, ww, 3)).astype(np.float32)
  # logit_1 = 40 * (mean |x - blurred x| in the region) - 2: sharpness.
  w = np.zeros((2, hh, ww, 3), np.float32)
  clean = jnp.asarray(texture)[None]

  def apply(x, deltas=None):
    del deltas
    from lapjax.attribution import core
    blurred = core.baseline_images(x, "blur", 2.0)
    sharp = jnp.abs(x - blurred).mean(-1)
    score = 40 * (sharp * region).sum((1, 2)) / region.sum() - 2.0
    return jnp.stack([jnp.zeros_like(score), score], -1) + 0 * w.sum(), {}

  from lapjax import Classifier
  clf = Classifier(apply=apply, layers=())
  weak = clean * 0.05 + 0.5                  # little texture: low confidence
  x = jnp.concatenate([clean, weak])
  p = jax.nn.softmax(apply(x)[0])[:, 1]
  assert p[0] > 0.8 and p[1] < 0.8
  maps = jnp.asarray(np.stack([region, region]), jnp.float32)
  good = F.sic_aic(clf, x, maps, key=jax.random.key(0), blur_sigma=3.0)
  bad = F.sic_aic(clf, x, -maps, key=jax.random.key(0), blur_sigma=3.0)
  assert good["n_skipped"] == 1 and list(good["skipped"]) == [False, True]
  assert np.isnan(good["sic"][1]) and np.isnan(good["aic"][1])
  assert good["sic"][0] > bad["sic"][0]
  assert good["aic"][0] > bad["aic"][0]


def test_webp_information_grows_with_detail():
  flat = np.full((1, 16, 16, 3), 0.5)
  noisy = np.random.default_rng(3).uniform(size=(1, 16, 16, 3))
  assert F.webp_information(noisy)[0] > F.webp_information(flat)[0]


# -- exact curves on a linear model with a saturating score (issue 15) -------

def _saturating_case():
  """``logit_1 = sum(w x) - 6``, ``logit_0 = 0``: the probability
  ``sigmoid(logit_1)`` saturates, accuracy is ``logit_1 > 0``. Distinct map
  values, so the ranking needs no tie rule."""
  rng = np.random.default_rng(5)
  w = np.zeros((2, H, W, 3), np.float32)
  w[1] = rng.uniform(0, 1, (H, W, 3))
  x = rng.uniform(0.2, 1.0, (2, H, W, 3)).astype(np.float32)
  maps = rng.normal(size=(2, H, W)).astype(np.float32)
  clf = linear_classifier(jnp.asarray(w), jnp.array([0.0, -6.0]))
  return clf, w, x, maps


def _curve(w, x, order_by, fractions, mode, score):
  """NumPy: the score of class 1 as the top ``rint(f H W)`` pixels by
  ``order_by`` are deleted (or, inserting, the only ones kept)."""
  order = np.argsort(-order_by.ravel(), kind="stable")
  out = []
  for f in fractions:
    top = np.zeros(H * W, bool)
    top[order[:int(np.rint(f * H * W))]] = True
    keep = (~top if mode == "delete" else top).reshape(H, W, 1)
    z = float((w[1] * x * keep).sum()) - 6.0
    out.append(1 / (1 + np.exp(-z)) if score == "prob" else float(z > 0))
  return np.asarray(out)


def _auc(c):
  return 100 * (c[1:] + c[:-1]).mean() / 2


def test_pos_neg_npd_are_exact_on_a_saturating_linear_model():
  clf, w, x, maps = _saturating_case()
  got = F.positive_negative(clf, x, maps, jnp.array([1, 1]))
  fr = F.POS_NEG_FRACTIONS
  for b in range(2):
    pos = _curve(w, x[b], maps[b], fr, "delete", "accuracy")
    neg = _curve(w, x[b], -maps[b], fr, "delete", "accuracy")
    assert 0 < pos.sum() < len(fr)            # the curve crosses the boundary
    np.testing.assert_array_equal(got["pos_curve"][b], pos)
    np.testing.assert_array_equal(got["neg_curve"][b], neg)
    np.testing.assert_allclose(
        [got["pos"][b], got["neg"][b], got["npd"][b]],
        [_auc(pos), _auc(neg), _auc(neg) - _auc(pos)], rtol=1e-5)


def test_insertion_deletion_idd_are_exact_on_a_saturating_linear_model():
  clf, w, x, maps = _saturating_case()
  got = F.insertion_deletion(clf, x, maps, jnp.array([1, 1]), steps=7)
  fr = np.linspace(0, 1, 8)                  # rint(f * 24): uneven steps
  for b in range(2):
    dele = _curve(w, x[b], maps[b], fr, "delete", "prob")
    ins = _curve(w, x[b], maps[b], fr, "insert", "prob")
    assert dele[0] > 0.9 and ins[0] < 0.01    # both ends saturate
    np.testing.assert_allclose(got["del_curve"][b], dele, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(got["ins_curve"][b], ins, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(
        [got["ins"][b], got["del"][b], got["idd"][b]],
        [_auc(ins), _auc(dele), _auc(ins) - _auc(dele)], rtol=1e-4,
        atol=1e-4)


def test_sic_aic_are_exact_with_a_known_information_measure():
  """SIC / AIC written out in NumPy: the start image is SciPy's Gaussian
  blur (truncated at ``ceil(3 sigma)``, mirrored edges), no random sharp
  pixels; information is the image's total variation; SIC's y is the
  normalised probability clipped to [0, 1], AIC's the top-1 hit; points
  (0, 0) and (1, 1) added, sorted by x, trapezoids. The model reads a
  checkerboard, which the blur removes."""
  from scipy import ndimage

  hh, ww, sigma = 8, 10, 1.5
  checker = np.indices((hh, ww)).sum(0) % 2 * 2.0 - 1.0
  w = np.zeros((2, hh, ww, 3), np.float32)
  w[1, 1:7, 2:9] = checker[1:7, 2:9, None]
  rng = np.random.default_rng(6)
  x = (0.5 + 0.4 * checker[None, ..., None]
       + rng.uniform(-0.1, 0.1, (2, hh, ww, 3))).astype(np.float32)
  bias = np.array([0.0, -20.0], np.float32)
  clf = linear_classifier(jnp.asarray(w), jnp.asarray(bias))
  maps = rng.normal(size=(2, hh, ww)).astype(np.float32)
  maps[0, 1:7, 2:9] += 2.0                    # image 0: a good map

  def tv(images):
    return (np.abs(np.diff(images, axis=-3)).sum((-3, -2, -1))
            + np.abs(np.diff(images, axis=-2)).sum((-3, -2, -1)))

  fr = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75)
  got = F.sic_aic(clf, x, maps, key=jax.random.key(0), thresholds=fr,
                  blur_sigma=sigma, random_fraction=0.0, information=tv)
  radius = min(int(np.ceil(3 * sigma)), hh - 1)
  start = ndimage.gaussian_filter(x.astype(np.float64), (0, sigma, sigma, 0),
                                  mode="mirror", radius=(0, radius, radius, 0))

  def probs(images):
    z = np.einsum("khwc,bhwc->bk", w, images) + bias
    return 1 / (1 + np.exp(z[:, 0] - z[:, 1])), z[:, 1] > z[:, 0]

  p_clean, _ = probs(x)
  p_start, hit_start = probs(start)
  assert (p_clean > 0.8).all() and not hit_start.any()   # nothing skipped
  for b in range(2):
    order = np.argsort(-maps[b].ravel(), kind="stable")
    imgs = []
    for f in fr:
      sharp = np.zeros(hh * ww, bool)
      sharp[order[:int(np.rint(f * hh * ww))]] = True
      imgs.append(np.where(sharp.reshape(hh, ww, 1), x[b], start[b]))
    imgs = np.stack(imgs)
    p, hit = probs(imgs)
    clip = lambda v: np.clip(v, 0, 1)
    info = tv(clip(imgs))
    i0, i1 = tv(clip(start[b])), tv(clip(x[b]))
    xs = np.concatenate([[0], clip((info - i0) / (i1 - i0)), [1]])
    order_x = np.argsort(xs, kind="stable")
    for name, ys in (("sic", clip((p - p_start[b]) / (p_clean[b]
                                                      - p_start[b]))),
                     ("aic", hit.astype(float))):
      ys = np.concatenate([[0], ys, [1]])
      expected = 100 * np.trapezoid(ys[order_x], xs[order_x])
      np.testing.assert_allclose(got[name][b], expected, rtol=1e-4,
                                 atol=1e-3)
  assert got["sic"][0] > got["sic"][1]       # the good map is better
  assert got["n_skipped"] == 0
