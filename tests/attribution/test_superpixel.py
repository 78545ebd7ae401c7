"""Superpixel methods against closed forms, exact Shapley values and Captum.

The Captum fixture (tools/fixtures/make_superpixel.py) holds a tanh MLP,
two 6 x 8 images with 5 and 4 hand-made segments, baseline images, and
Captum 0.9's attributions with the coalitions, outputs and weights its
surrogates were fitted to.
"""

import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import Classifier
from lapjax.attribution import checks, core
from lapjax.attribution import superpixel as sp
from lapjax.attribution.perturbation import occlusion
from tests.attribution.models import linear_classifier

FIXTURE = np.load(pathlib.Path(__file__).parents[1] / "fixtures"
                  / "superpixel" / "captum.npz")
SEGMENTS = FIXTURE["segments"]                         # [2, 6, 8], 5 and 4
X = jnp.asarray(FIXTURE["x"])
BASE = jnp.asarray(FIXTURE["baseline"])
T = jnp.asarray(FIXTURE["targets"])
W_LINEAR = jax.random.normal(jax.random.key(0), (4, 6, 8, 3))


def mlp_forward(x):
  h = np.tanh(np.asarray(x).reshape(len(x), -1) @ FIXTURE["w1"]
              + FIXTURE["b1"])
  return h @ FIXTURE["w2"] + FIXTURE["b2"]


def mlp() -> Classifier:
  """The fixture's MLP: logits of NHWC-flattened images."""
  def apply(x, deltas=None):
    del deltas
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ FIXTURE["w1"] + FIXTURE["b1"])
    return h @ FIXTURE["w2"] + FIXTURE["b2"], {}
  return Classifier(apply=apply, layers=())


def per_segment(maps, segments, b):
  """The value of each segment of image ``b`` (checking it is constant)."""
  m = np.asarray(maps[b])
  values = []
  for j in range(segments[b].max() + 1):
    on = m[segments[b] == j]
    np.testing.assert_array_equal(on, on[0])
    values.append(on[0])
  return np.array(values)


def exact_shapley(x, base, segments, target, forward=mlp_forward):
  """Shapley values of image ``x`` by enumerating every subset."""
  n = segments.max() + 1

  def v(subset):
    keep = np.isin(segments, list(subset))[..., None]
    return forward(np.where(keep, x, base)[None])[0, target]

  phi = np.zeros(n)
  for j in range(n):
    others = [i for i in range(n) if i != j]
    for size in range(n):
      weight = (math.factorial(size) * math.factorial(n - size - 1)
                / math.factorial(n))
      for s in itertools.combinations(others, size):
        phi[j] += weight * (v(s + (j,)) - v(s))
  return phi


def assert_close(got, want, rtol=1e-4):
  """Relative to the largest reference value."""
  want = np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=rtol * np.abs(want).max())


# --- Closed forms ---------------------------------------------------------


def test_feature_ablation_with_one_pixel_segments_is_1x1_occlusion():
  pixels = np.broadcast_to(np.arange(48).reshape(6, 8), (2, 6, 8))
  got = sp.feature_ablation(mlp(), X, T, segments=pixels, baseline=0.3,
                            chunk_size=16)
  want = occlusion(mlp(), X, T, window=(1, 1), stride=(1, 1), fill=0.3,
                   chunk_size=16)
  assert_close(got, want, 1e-5)


@pytest.mark.parametrize("method, kwargs", [
    (sp.feature_ablation, {}),
    (sp.shapley_sampling, {"key": jax.random.key(1), "samples": 2}),
    (sp.kernel_shap, {"key": jax.random.key(2), "samples": 24}),
    (sp.lime, {"key": jax.random.key(3), "samples": 24, "alpha": 0.0}),
])
def test_additive_model_gets_each_segments_own_contribution(method, kwargs):
  """On a linear model every method gives ``sum_{p in j} (x - b) . w``:
  marginal contributions do not depend on the coalition, and a linear
  surrogate fits the model exactly (LIME recovers its coefficients)."""
  got = method(linear_classifier(W_LINEAR), X, T, segments=SEGMENTS,
               baseline=BASE, **kwargs)
  contrib = np.asarray(((X - BASE) * W_LINEAR[T]).sum(-1))
  for b in range(2):
    want = [contrib[b][SEGMENTS[b] == j].sum()
            for j in range(SEGMENTS[b].max() + 1)]
    assert_close(per_segment(got, SEGMENTS, b), want)


def test_kernel_shap_with_all_coalitions_is_the_exact_shapley_values():
  got = sp.kernel_shap(mlp(), X, T, segments=SEGMENTS, baseline=BASE,
                       all_coalitions=True)
  for b in range(2):
    want = exact_shapley(np.asarray(X[b]), np.asarray(BASE[b]), SEGMENTS[b],
                         int(T[b]))
    assert_close(per_segment(got, SEGMENTS, b), want)


def test_shapley_values_are_efficient():
  """Every permutation's contributions sum to ``v(1) - v(0)``."""
  got = sp.shapley_sampling(mlp(), X, T, segments=SEGMENTS, baseline=BASE,
                            key=jax.random.key(4), samples=3)
  logits = mlp_forward(X) - mlp_forward(BASE)
  for b in range(2):
    total = per_segment(got, SEGMENTS, b).sum()
    np.testing.assert_allclose(total, logits[b, T[b]], rtol=1e-5)


# --- Captum ---------------------------------------------------------------


def test_feature_ablation_matches_captum():
  got = sp.feature_ablation(mlp(), X, T, segments=SEGMENTS, baseline=BASE)
  for b in range(2):
    assert_close(per_segment(got, SEGMENTS, b),
                 FIXTURE[f"feature_ablation/{b}"])


def test_exact_shapley_values_match_captum_shapley_values():
  got = sp.kernel_shap(mlp(), X, T, segments=SEGMENTS, baseline=BASE,
                       all_coalitions=True)
  for b in range(2):
    assert_close(per_segment(got, SEGMENTS, b),
                 FIXTURE[f"shapley_exact/{b}"])


@pytest.mark.parametrize("b", [0, 1])
def test_shapley_sampling_matches_captum_on_its_permutations(b):
  t = core.make_targets(T[b:b + 1], 1, 4)
  got = sp.shapley_from_permutations(
      mlp(), X[b:b + 1], BASE[b:b + 1], t.cotangents,
      jnp.asarray(SEGMENTS[b:b + 1]), jnp.asarray(FIXTURE[f"svs_perms/{b}"]),
      chunk_size=7)
  assert_close(got[0, 0], FIXTURE[f"svs/{b}"])


def captum_data(name, b):
  return (FIXTURE[f"{name}_z/{b}"].astype(bool), FIXTURE[f"{name}_y/{b}"],
          FIXTURE[f"{name}_w/{b}"])


def perturbed(z, b):
  """Image ``b`` with the segments ``z [n, S]`` leaves out at baseline:
  ``[n, 1, H, W, C]``."""
  keep = z[:, SEGMENTS[b]][..., None]
  return np.where(keep, FIXTURE["x"][b], FIXTURE["baseline"][b])[:, None]


def scores_of(z, b):
  """lapjax's ``v(z)`` of image ``b``'s coalitions ``z [n, S]``."""
  t = core.make_targets(T[b:b + 1], 1, 4)
  return sp.coalition_scores(mlp(), X[b:b + 1], BASE[b:b + 1], t.cotangents,
                             jnp.asarray(SEGMENTS[b:b + 1]), jnp.asarray(z),
                             chunk_size=8)


@pytest.mark.parametrize("b", [0, 1])
def test_kernel_shap_matches_captum_on_its_coalitions(b):
  z, y, w = captum_data("kernel_shap", b)
  values = scores_of(z, b)
  assert_close(values[:, 0, 0], y, 1e-5)
  # Captum's first two samples are the full and the empty coalition, with
  # weight 1e6 where lapjax has exact constraints; the others weigh 1.
  assert z[0].all() and not z[1].any() and (w[2:] == 1).all()
  present = jnp.ones((1, z.shape[1]), bool)
  got = sp.kernel_shap_solve(jnp.asarray(z[2:, None]),
                             jnp.ones((len(z) - 2, 1)), values[2:],
                             values[0], values[1], present)
  assert_close(got[0, 0], FIXTURE[f"kernel_shap/{b}"])


@pytest.mark.parametrize("b", [0, 1])
def test_lime_ridge_matches_captum_on_its_coalitions(b):
  z, y, w = captum_data("lime_ridge", b)
  weights = sp.cosine_similarity_weights(X[b:b + 1], perturbed(z, b), 1.0)
  np.testing.assert_allclose(weights[:, 0], w, rtol=1e-5)
  values = scores_of(z, b)
  assert_close(values[:, 0, 0], y, 1e-5)
  got = sp.lime_solve(jnp.asarray(z[:, None]), weights, values,
                      jnp.ones((1, z.shape[1]), bool), alpha=1.0)
  assert_close(got[0, 0], FIXTURE[f"lime_ridge/{b}"])


def weighted_lasso(z, y, w, alpha, sweeps=5000):
  """scikit-learn's weighted Lasso with intercept by coordinate descent:
  ``min (1 / (2 sum w)) sum w (y - c - z beta)^2 + alpha |beta|_1``."""
  z, y, w = (np.asarray(a, np.float64) for a in (z, y, w))
  w = w / w.sum()
  zc = z - w @ z
  yc = y - w @ y
  beta = np.zeros(z.shape[1])
  curvature = w @ zc ** 2
  for _ in range(sweeps):
    for j in range(z.shape[1]):
      residual = yc - zc @ beta + zc[:, j] * beta[j]
      rho = w @ (zc[:, j] * residual)
      beta[j] = np.sign(rho) * max(abs(rho) - alpha, 0) / curvature[j]
  return beta


@pytest.mark.parametrize("b", [0, 1])
def test_captum_default_lime_is_a_lasso_where_lapjax_fits_a_ridge(b):
  """Captum's default surrogate is ``Lasso(alpha=0.01)`` of the same
  weighted data (lapjax's coalitions, scores and weights give Captum's
  numbers through a Lasso); lapjax's ridge (``alpha=1``, the lime
  package's) differs from it by more than 1 % (docs/comparators.md)."""
  z, y, w = captum_data("lime_lasso", b)
  weights = sp.cosine_similarity_weights(X[b:b + 1], perturbed(z, b), 1.0)
  values = scores_of(z, b)
  lasso = weighted_lasso(z, values[:, 0, 0], weights[:, 0], 0.01)
  captum = FIXTURE[f"lime_lasso/{b}"]
  assert_close(lasso, captum)
  ridge = sp.lime_solve(jnp.asarray(z[:, None]), weights, values,
                        jnp.ones((1, z.shape[1]), bool), alpha=1.0)[0, 0]
  assert np.abs(np.asarray(ridge) - captum).max() > 1e-2 * np.abs(
      captum).max()


# --- Properties -----------------------------------------------------------


METHODS = {
    "feature_ablation": (sp.feature_ablation, {}),
    "shapley_sampling": (sp.shapley_sampling,
                         {"key": jax.random.key(5), "samples": 2}),
    "kernel_shap": (sp.kernel_shap, {"key": jax.random.key(6),
                                     "samples": 12}),
    "lime": (sp.lime, {"key": jax.random.key(7), "samples": 12}),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batch_single_other_items_multi_class_jit_and_key(name):
  method, kwargs = METHODS[name]
  clf = mlp()
  run = lambda x, t, s: method(clf, x, t, segments=s, num_segments=5,
                               baseline=0.2, chunk_size=6, **kwargs)
  batch = run(X, T, SEGMENTS)
  assert batch.shape == (2, 6, 8)
  # Image 1 alone (its 4 segments padded to 9 players), jitted with traced
  # segments, another chunk size: the same numbers as in the batch.
  single = jax.jit(lambda x, s: method(
      clf, x, T[1:], segments=s, num_segments=9, baseline=0.2,
      chunk_size=16, **kwargs))(X[1:], jnp.asarray(SEGMENTS[1:]))
  np.testing.assert_allclose(single[0], batch[1], rtol=1e-5, atol=1e-6)
  # Another image 0, with one segment only: image 1 does not change.
  other = run(X.at[0].set(0.7 - X[0]), T, SEGMENTS.copy() * [[[0]], [[1]]])
  np.testing.assert_allclose(other[1], batch[1], rtol=1e-5, atol=1e-6)
  assert np.isfinite(other).all()
  if name != "lime":             # one player: phi = v(1) - v(0)
    gap = mlp_forward(0.7 - X[:1]) - mlp_forward(jnp.full_like(X[:1], 0.2))
    np.testing.assert_allclose(other[0], gap[0, T[0]], rtol=1e-5)
  # [B, C'] targets: one map per class, equal to the [B] maps.
  classes = jnp.stack([T, (T + 1) % 4], axis=1)
  multi = run(X, classes, SEGMENTS)
  assert multi.shape == (2, 2, 6, 8)
  np.testing.assert_allclose(multi[:, 0], batch, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(multi[:, 1], run(X, classes[:, 1], SEGMENTS),
                             rtol=1e-5, atol=1e-6)
  # The same key gives the same maps; another key other maps.
  np.testing.assert_array_equal(run(X, T, SEGMENTS), batch)
  if "key" in kwargs:
    other_key = method(clf, X, T, segments=SEGMENTS, num_segments=5,
                       baseline=0.2, chunk_size=6,
                       **{**kwargs, "key": jax.random.key(99)})
    assert not np.allclose(other_key, batch)


def test_blur_baseline_and_probability_scores():
  got = sp.feature_ablation(mlp(), X, T, segments=SEGMENTS, baseline="blur",
                            blur_sigma=2.0, score="prob")
  blurred = np.asarray(core.baseline_images(X, "blur", 2.0))
  probs = np.asarray(jax.nn.softmax(mlp_forward(X)))
  for j in range(4):
    ablated = np.where((SEGMENTS == j)[..., None], blurred, np.asarray(X))
    drop = probs - np.asarray(jax.nn.softmax(mlp_forward(ablated)))
    for b in range(2):
      np.testing.assert_allclose(per_segment(got, SEGMENTS, b)[j],
                                 drop[b, T[b]], rtol=1e-4, atol=1e-7)


# --- SLIC -----------------------------------------------------------------


def test_slic_segments_are_consecutive_ids_of_each_image():
  rng = np.random.default_rng(0)
  images = np.zeros((2, 24, 32, 3), np.float32)
  images[0, :, 16:] = 1.0                          # two flat halves
  images[1] = rng.uniform(size=(24, 32, 3))
  normalised = (images - 0.45) / 0.22              # normalisation: same
  s = sp.slic_segments(images, n_segments=8)
  np.testing.assert_array_equal(sp.slic_segments(normalised, n_segments=8),
                                s)
  assert s.shape == (2, 24, 32) and s.dtype == np.int32
  for b in range(2):
    np.testing.assert_array_equal(np.unique(s[b]), np.arange(s[b].max() + 1))
  # No segment straddles the colour edge of image 0.
  for j in range(s[0].max() + 1):
    on = images[0][s[0] == j, 0]
    assert on.min() == on.max()
  # The default segments are these.
  clf = linear_classifier(jnp.ones((4, 24, 32, 3)))
  np.testing.assert_array_equal(
      sp.feature_ablation(clf, images, jnp.array([0, 1])),
      sp.feature_ablation(clf, images, jnp.array([0, 1]),
                          segments=sp.slic_segments(images)))


# --- Bad input ------------------------------------------------------------


@pytest.mark.parametrize("segments, kwargs, match", [
    (SEGMENTS[:, :5], {}, r"segments must be \[B, H, W\] = \(2, 6, 8\)"),
    (SEGMENTS[0], {}, r"segments must be \[B, H, W\]"),
    (SEGMENTS.astype(np.float32), {}, "segments must be integer"),
    (np.where(SEGMENTS == 2, 1, SEGMENTS), {},
     r"segments of image 0 have empty ids \[2\]"),
    (SEGMENTS - 1, {}, "segments must be ids >= 0"),
    (SEGMENTS, {"num_segments": 4}, "segments have 5 ids in one image but "
     "num_segments is 4"),
    (SEGMENTS, {"num_segments": 0}, "num_segments must be >= 1"),
])
def test_bad_segments_name_the_argument(segments, kwargs, match):
  with pytest.raises(ValueError, match=match):
    sp.feature_ablation(mlp(), X, T, segments=segments, **kwargs)


@pytest.mark.parametrize("method, kwargs, match", [
    (sp.shapley_sampling, {"key": jax.random.key(0), "samples": 0},
     "samples must be >= 1"),
    (sp.kernel_shap, {"key": jax.random.key(0), "samples": -2},
     "samples must be >= 1"),
    (sp.lime, {"key": jax.random.key(0), "samples": 0},
     "samples must be >= 1"),
    (sp.kernel_shap, {"samples": 4}, "key must be a jax.random.key"),
    (sp.kernel_shap, {"all_coalitions": True, "num_segments": 21},
     "at most 20 allowed"),
    (sp.lime, {"key": jax.random.key(0), "alpha": -1.0}, "alpha must be"),
    (sp.lime, {"key": jax.random.key(0), "kernel_width": 0.0},
     "kernel_width must be > 0"),
    (sp.feature_ablation, {"score": "softmax"}, "score must be 'logit'"),
    (sp.feature_ablation, {"baseline": "black"}, "baseline must be"),
])
def test_bad_options_name_the_argument(method, kwargs, match):
  with pytest.raises(ValueError, match=match):
    method(mlp(), X, T, segments=SEGMENTS, **kwargs)


def test_traced_segments_need_num_segments_and_are_checked_under_jit():
  with pytest.raises(ValueError, match="num_segments must be given"):
    jax.jit(lambda s: sp.feature_ablation(mlp(), X, T, segments=s))(
        jnp.asarray(SEGMENTS))
  with pytest.raises(ValueError, match="segments=None under jit"):
    jax.jit(lambda x: sp.feature_ablation(mlp(), x, T))(X)
  run = checks.jit_checked(lambda s: sp.feature_ablation(
      mlp(), X, T, segments=s, num_segments=5))
  with pytest.raises(ValueError, match="segments have 2 empty ids"):
    run(jnp.asarray(np.where(SEGMENTS == 2, 1, SEGMENTS)))
  with pytest.raises(ValueError, match=r"got values in \[0, 5\]"):
    run(jnp.asarray(SEGMENTS + (SEGMENTS == 4)))


def test_slic_under_jit_equals_slic_on_the_host():
  """segments=None under jit runs slic_segments as a host callback."""
  host = sp.feature_ablation(mlp(), X, T, num_segments=48)
  traced = checks.jit_checked(lambda x: sp.feature_ablation(
      mlp(), x, T, num_segments=48))(X)
  np.testing.assert_allclose(traced, host, rtol=1e-6, atol=1e-6)
  assert len(np.unique(np.asarray(host[0]))) > 1
