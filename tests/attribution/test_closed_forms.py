"""Attribution methods against independent computations (issue 15, item
14): RELAX's and RISE's formulas written out in NumPy, guided Grad-CAM by
hand on a one-convolution model, the blur baseline against SciPy, and
SLOC_m's quantile score and SLOC_xp's calibration rule recomputed."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from lapjax import Classifier
from lapjax import attribution as attr
from lapjax.attribution import grid_masks as gm
from tests.attribution.models import linear_classifier

S = importlib.import_module("lapjax.attribution.sloc")
P = importlib.import_module("lapjax.attribution.perturbation")

H, W, C = 6, 8, 2                                   # H != W
RNG = np.random.default_rng(0)
WEIGHTS = RNG.normal(size=(3, H, W, C)).astype(np.float32)
X = RNG.uniform(0.2, 1.0, size=(2, H, W, C)).astype(np.float32)


def _logits(x):
  return np.einsum("khwc,bhwc->bk", WEIGHTS, x)


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_relax_is_the_cosine_weighted_mask_average():
  """REFERENCE-NOTES (LaFAM): ``sum s m / (sum m + 1e-10)``, ``s`` the
  cosine of masked and clean embeddings, masks ``cells x cells``
  Bernoulli(p) grids nearest-upsampled (here by whole factors, so the
  upsampling is a ``np.repeat``); mask ``i`` from ``fold_in(key, i)``."""
  proj = RNG.normal(size=(H * W * C, 5)).astype(np.float32)

  def apply(x, deltas=None):
    del deltas
    emb = x.reshape(x.shape[0], -1) @ proj
    return jnp.zeros((x.shape[0], 3)), {"emb": emb}

  clf = Classifier(apply=apply, layers=("emb",))
  key, n, cells, p = jax.random.key(3), 24, 2, 0.4
  got = attr.relax(clf, X, layer="emb", key=key, num_masks=n, cells=cells,
                   p=p, chunk_size=5)
  grids = np.stack([np.asarray(jax.random.bernoulli(
      jax.random.fold_in(key, i), p, (cells, cells))) for i in range(n)])
  masks = grids.repeat(H // cells, 1).repeat(W // cells, 2).astype(np.float64)
  clean = X.reshape(2, -1) @ proj
  expected = np.zeros((2, H, W))
  for b in range(2):
    emb = (X[b][None] * masks[..., None]).reshape(n, -1) @ proj
    s = emb @ clean[b] / (np.linalg.norm(emb, axis=1)
                          * np.linalg.norm(clean[b]) + 1e-12)
    expected[b] = (np.einsum("n,nhw->hw", s, masks)
                   / (masks.sum(0) + 1e-10))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalization", ["paper", "mask_sum"])
def test_rise_value_on_a_linear_model(normalization):
  """``S = sum_i f(x M_i) M_i / (N p)`` (paper) or ``/ sum_i M_i``, with
  ``f`` the target's logit of a linear model, evaluated in NumPy on the
  library's masks (their generation is tested through their mean below)."""
  key, n, cells, p = jax.random.key(4), 20, 3, 0.3
  t = np.array([1, 2])
  got = attr.rise(linear_classifier(jnp.asarray(WEIGHTS)), X, t, key=key,
                  num_masks=n, cells=cells, p=p, score="logit",
                  normalization=normalization, chunk_size=7)
  masks = np.stack([np.asarray(P._rise_mask(jax.random.fold_in(key, i),
                                            (H, W), cells, p))
                    for i in range(n)]).astype(np.float64)
  expected = np.zeros((2, H, W))
  for b in range(2):
    f = _logits(X[b][None] * masks[..., None])[:, t[b]]       # [N]
    total = np.einsum("n,nhw->hw", f, masks)
    expected[b] = total / (n * p if normalization == "paper"
                           else np.maximum(masks.sum(0), 1e-10))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_rise_masks_keep_a_fraction_p_and_are_not_inverted():
  """PITFALLS 21 (dianna #515 inverted the masks): the mean mask value is
  about p, not 1 - p, and each mask lies in [0, 1]."""
  ms = jax.vmap(lambda i: P._rise_mask(jax.random.fold_in(
      jax.random.key(0), i), (14, 18), 4, 0.2))(jnp.arange(400))
  assert 0.0 <= float(ms.min()) and float(ms.max()) <= 1.0
  assert abs(float(ms.mean()) - 0.2) < 0.03


class _OneConv(nn.Module):
  """conv -> act -> 'features' -> global mean -> dense, ``act`` injectable."""
  act: object = nn.relu

  @nn.compact
  def __call__(self, x):
    a = self.act(nn.Conv(4, (3, 3), name="conv")(x))
    a = _Tap(name="features")(a)
    return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))


class _Tap(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


def test_guided_grad_cam_by_hand():
  """On ``logit_t = mean_hw ReLU(conv(x)) . w_t``: guided backprop's input
  gradient is the transposed convolution of ``ReLU(w_t / HW) * 1[z > 0]``,
  written as a NumPy loop; Grad-CAM at 'features' is ``ReLU(sum_k (w_tk /
  HW) A_k)``; guided Grad-CAM is their product (channels summed)."""
  model = _OneConv()
  x = jnp.asarray(RNG.normal(size=(2, 5, 7, 3)), jnp.float32)
  v = model.init(jax.random.key(0), x)
  t = np.array([0, 2])
  guided = attr.guided_classifier(model, v, layers=["features"])
  got = attr.guided_grad_cam(guided, x, t, layer="features")

  kernel = np.asarray(v["params"]["conv"]["kernel"], np.float64)  # 3,3,3,4
  bias = np.asarray(v["params"]["conv"]["bias"], np.float64)
  head = np.asarray(v["params"]["head"]["kernel"], np.float64)     # 4, 3
  xs = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  hh, ww = 5, 7
  z = np.zeros((2, hh, ww, 4))
  for i in range(3):
    for j in range(3):
      z += np.einsum("bhwc,ck->bhwk", xs[:, i:i + hh, j:j + ww], kernel[i, j])
  z += bias
  a = np.maximum(z, 0)
  dlogit_da = head[:, t].T / (hh * ww)                             # [B, 4]
  g_z = np.maximum(dlogit_da, 0)[:, None, None, :] * (z > 0)
  dx = np.zeros_like(xs)
  for i in range(3):
    for j in range(3):
      dx[:, i:i + hh, j:j + ww] += np.einsum("bhwk,ck->bhwc", g_z,
                                             kernel[i, j])
  gbp = dx[:, 1:-1, 1:-1].sum(-1)
  cam = np.maximum(np.einsum("bk,bhwk->bhw", dlogit_da, a), 0)
  assert (head < 0).any() and (z < 0).any()     # guided differs from plain
  np.testing.assert_allclose(got, gbp * cam, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 4.0])
def test_blur_baseline_matches_scipy(sigma):
  """``'blur'``: each channel blurred by a Gaussian truncated at ``ceil(3
  sigma)`` (at most the image side minus 1), mirrored at the edges
  (``jnp.pad`` 'reflect' is SciPy's 'mirror')."""
  x = RNG.uniform(size=(2, 9, 13, 3)).astype(np.float32)
  got = attr.core.baseline_images(jnp.asarray(x), "blur", sigma)
  radius = min(int(np.ceil(3 * sigma)), 8)
  expected = ndimage.gaussian_filter(
      x.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="mirror",
      radius=(0, radius, radius, 0))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _problem(x, targets, classes):
  t = attr.core.make_targets(jnp.asarray(targets), x.shape[0], classes)
  return S._make_problem(jnp.asarray(x), t, 0.0, 5.0, "prob")


def test_quantile_idd_against_numpy():
  """SLOC_m's score (REFERENCE-NOTES, SLOC 8): at the quantiles 0, 0.1,
  ..., 1 of the map, insertion keeps ``a > q``, deletion keeps ``a < q``,
  the rest is the baseline (0); the class probability; AUC = mean of the
  10 trapezoids; insertion minus deletion."""
  clf = linear_classifier(jnp.asarray(WEIGHTS))
  t = np.array([1, 0])
  maps = RNG.normal(size=(2, 3, H, W)).astype(np.float32)
  maps[1, 2] = np.round(maps[1, 2])                 # ties at the quantiles
  got = S.quantile_idd(clf, _problem(X, t, 3), jnp.asarray(maps),
                       chunk_size=16)
  expected = np.zeros((2, 3))
  for b in range(2):
    for s in range(3):
      a = maps[b, s].astype(np.float64)
      qs = np.quantile(a, np.linspace(0, 1, 11))
      curves = []
      for keep in (a[None] > qs[:, None, None], a[None] < qs[:, None, None]):
        curves.append(_softmax(_logits(X[b][None] * keep[..., None]))[:, t[b]])
      ins, dele = ((c[1:] + c[:-1]).mean() / 2 for c in curves)
      expected[b, s] = ins - dele
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_calibrate_p_rule_against_numpy():
  """SLOC_xp's rule: per patch size, the candidate whose responses have the
  largest mean (over images) standard deviation (ddof 1), ties to the
  earliest. Responses recomputed in NumPy from the documented masks
  (``sample_grid_masks`` with ``fold_in(fold_in(key, c), k)``); a constant
  model ties every candidate, so the first wins."""
  weights = 0.1 * WEIGHTS                  # probabilities far from 0 and 1
  clf = linear_classifier(jnp.asarray(weights))
  x = np.concatenate([X, X[:1] * 0.5])
  t = np.array([1, 2, 0])
  key, patches, n = jax.random.key(5), (2, 3), 6
  cands = (0.2, 0.5, 0.8)
  kw = dict(key=key, patch_sizes=patches, candidates=cands, tune_masks=n,
            chunk_size=8)
  got = S.calibrate_p(clf, x, t, **kw)
  masks = jax.jit(lambda k, p, s: gm.sample_grid_masks(
      k, (H, W), s, p, n).to_dense((H, W)), static_argnums=2)
  expected = []
  for k, s in enumerate(patches):
    spread = np.zeros(len(cands))
    for c, p in enumerate(cands):
      m = np.asarray(masks(jax.random.fold_in(jax.random.fold_in(key, c), k),
                           p, s))
      std = [np.std(_softmax(np.einsum("khwc,nhwc->nk", weights,
                                       x[b] * m[..., None]))[:, t[b]],
                    ddof=1) for b in range(3)]
      spread[c] = np.mean(std)
    expected.append(cands[int(np.argmax(spread))])
  assert expected != [cands[0]] * 2      # the case tells the rule apart
  assert got == tuple(expected)
  flat = S.calibrate_p(linear_classifier(jnp.zeros_like(WEIGHTS)), x, t, **kw)
  assert flat == (cands[0], cands[0])
