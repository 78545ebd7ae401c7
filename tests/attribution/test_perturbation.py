"""Occlusion and RISE against closed forms; RELAX basics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from tests.attribution.models import linear_classifier, small_cnn

W = jax.random.normal(jax.random.key(0), (3, 6, 9, 2))
X = jax.random.normal(jax.random.key(1), (2, 6, 9, 2))
T = jnp.array([1, 2])


def test_occlusion_one_pixel_zero_fill_is_x_times_w():
  got = attr.occlusion(linear_classifier(W), X, T, window=(1, 1),
                       stride=(1, 1), chunk_size=7)
  np.testing.assert_allclose(got, (X * W[T]).sum(-1), rtol=1e-4, atol=1e-5)


def test_occlusion_coverage_normalisation_matches_a_loop():
  window, stride = (3, 4), (2, 3)
  got = attr.occlusion(linear_classifier(W), X, T, window=window,
                       stride=stride, fill=0.5, chunk_size=4)
  contrib = np.asarray(((X - 0.5) * W[T]).sum(-1))   # drop per pixel
  total = np.zeros_like(contrib)
  cover = np.zeros(contrib.shape[1:])
  ys = sorted(set(range(0, 6 - 3 + 1, 2)) | {3})
  xs = sorted(set(range(0, 9 - 4 + 1, 3)) | {5})
  for y in ys:
    for x in xs:
      drop = contrib[:, y:y + 3, x:x + 4].sum((1, 2))
      total[:, y:y + 3, x:x + 4] += drop[:, None, None]
      cover[y:y + 3, x:x + 4] += 1
  np.testing.assert_allclose(got, total / cover, rtol=1e-4, atol=1e-5)


def test_rise_recovers_the_region_a_model_sums():
  region = np.zeros((16, 16), bool)
  region[3:8, 9:14] = True
  w = jnp.zeros((2, 16, 16, 1)).at[0].set(jnp.asarray(region)[..., None])
  x = jnp.ones((1, 16, 16, 1))
  sal = attr.rise(linear_classifier(w), x, jnp.array([0]),
                  key=jax.random.key(0), num_masks=1000, cells=4,
                  score="logit", chunk_size=100)[0]
  top = np.asarray(attr.postprocess.binarize_top_k(sal, region.mean()))
  assert (top & region).sum() / region.sum() > 0.8
  # The map is p^2 |R| plus the mask covariance with R: inside is higher.
  assert float(sal[region].mean()) > float(sal[~region].mean())


def test_rise_normalisations():
  clf = linear_classifier(W)
  kw = dict(key=jax.random.key(2), num_masks=30, cells=3, p=0.4,
            chunk_size=8, score="logit")
  paper = attr.rise(clf, X, T, normalization="paper", **kw)
  masks_sum = attr.rise(clf, X, T, normalization="mask_sum", **kw)
  assert not np.allclose(paper, masks_sum)
  with pytest.raises(ValueError, match=r"p must be in \(0, 1\)"):
    attr.rise(clf, X, T, key=jax.random.key(0), p=1.0)


def test_relax_is_highest_where_masking_changes_the_embedding_least():
  model, v, x = small_cnn(shape=(2, 12, 20, 3))
  clf = from_flax(model, v, layers=["global_pool"])
  sal = attr.relax(clf, x, layer="global_pool", key=jax.random.key(0),
                   num_masks=64, cells=3, chunk_size=16)
  assert sal.shape == (2, 12, 20)
  assert bool(jnp.all(jnp.isfinite(sal)))
  assert float(sal.max()) <= 1.0 + 1e-5      # an average of cosines


@pytest.mark.parametrize("kwargs, match", [
    ({"window": (0, 1)}, "window must be in"),
    ({"window": (7, 1)}, "window must be in"),
    ({"window": (2, 2), "stride": (1, 0)}, "stride must be in"),
    ({"window": (2, 2), "chunk_size": -1}, "chunk_size must be >= 1"),
    ({"window": (2, 2), "score": "softmax"}, "score must be 'logit' or"),
])
def test_occlusion_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    attr.occlusion(linear_classifier(W), X, T, **kwargs)
