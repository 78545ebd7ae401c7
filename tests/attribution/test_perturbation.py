"""Occlusion and RISE against closed forms; RELAX basics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from lapjax.attribution import perturbation
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


def _occlusion_by_window(model, v, x, targets, window, stride, fill, score):
  """Occlusion one window at a time, straight from its definition."""
  h, w = x.shape[1:3]
  (wh, ww), (sh, sw) = window, stride

  apply = jax.jit(model.apply)

  def scores(images):
    logits = apply(v, images)
    if score == "prob":
      logits = jax.nn.softmax(logits)
    return np.asarray(logits)[np.arange(len(targets)), targets]

  base = scores(x)
  total = np.zeros(x.shape[:3])
  cover = np.zeros((h, w))
  for y in sorted(set(range(0, h - wh + 1, sh)) | {h - wh}):
    for xx in sorted(set(range(0, w - ww + 1, sw)) | {w - ww}):
      occluded = x.at[:, y:y + wh, xx:xx + ww].set(fill)
      drop = base - scores(occluded)
      total[:, y:y + wh, xx:xx + ww] += drop[:, None, None]
      cover[y:y + wh, xx:xx + ww] += 1
  return total / cover


# 20 windows (4 rows x 5 columns) on 12 x 20 images, batch 2: chunk_size 16
# runs passes of 7, 7 and 6 windows, 6 runs six passes of 3 and one of 2, 40
# one pass of 20, 1 one window per pass (a batch larger than chunk_size).
@pytest.mark.parametrize("chunk_size, score", [
    (16, "logit"), (6, "prob"), (40, "logit"), (1, "logit")])
def test_occlusion_matches_a_window_by_window_loop_on_a_cnn(chunk_size,
                                                            score):
  model, v, x = small_cnn(shape=(2, 12, 20, 3))
  t = np.array([1, 3])
  kw = dict(window=(5, 6), stride=(3, 4), fill=0.3, score=score)
  got = attr.occlusion(from_flax(model, v, layers=()), x, jnp.asarray(t),
                       chunk_size=chunk_size, **kw)
  want = _occlusion_by_window(model, v, x, t, **kw)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _counting_classifier(model, v, seen):
  """``from_flax(model, v)`` that appends each evaluated batch's size to
  ``seen`` when it runs (inside ``lax.scan`` too)."""
  clf = from_flax(model, v, layers=())

  def apply(xs, deltas=None):
    jax.debug.callback(lambda n: seen.append(int(n)), xs.shape[0])
    return clf.apply(xs, deltas)
  return clf._replace(apply=apply)


WINDOWS, BATCH = 20, 2          # occlusion window (5, 6), stride (3, 4)


def _occlusion_pass_sizes(chunk_size: int) -> list[int]:
  """The batch sizes of the forward passes one occlusion call runs on a
  ``[2, 12, 20, 3]`` batch (20 windows)."""
  model, v, x = small_cnn(shape=(BATCH, 12, 20, 3))
  seen = []
  clf = _counting_classifier(model, v, seen)
  for _ in range(2):          # the first call also runs the input checks
    seen.clear()
    attr.occlusion(clf, x, jnp.array([1, 3]), window=(5, 6), stride=(3, 4),
                   chunk_size=chunk_size)
    jax.effects_barrier()
  return seen


@pytest.mark.parametrize("chunk_size", [16, 6, 5])
def test_occlusion_passes_are_full_but_for_less_than_one_window_each(
    chunk_size):
  windows, b = WINDOWS, BATCH
  passes = _occlusion_pass_sizes(chunk_size)
  passes.remove(b)                        # the unoccluded batch
  assert max(passes) <= chunk_size
  # As few passes as chunk_size allows, padded by less than a window each.
  assert len(passes) == math.ceil(windows / (chunk_size // b))
  assert windows * b <= sum(passes) < (windows + len(passes)) * b


def test_even_passes_run_every_item_once_in_the_fewest_passes():
  for n in range(1, 60):
    for per_pass in range(1, 20):
      groups = perturbation._even_passes(n, per_pass)
      sizes = [size for passes, size in groups for _ in range(passes)]
      assert sum(sizes) == n                      # no padding
      assert len(sizes) == math.ceil(n / per_pass)
      assert max(sizes) <= per_pass
      assert max(sizes) - min(sizes) <= 1
      assert len(groups) <= 2                     # two pass shapes at most


def test_occlusion_runs_exactly_the_images_it_needs():
  windows, b = WINDOWS, BATCH
  seen = _occlusion_pass_sizes(14)
  # At most 7 windows per pass: passes of 7, 7 and 6, and the unoccluded
  # batch; no padded window (full passes of 7 would run 21 windows).
  assert sorted(seen) == [b, 6 * b, 7 * b, 7 * b]
  assert sum(seen) == (windows + 1) * b


def test_occlusion_is_the_same_jitted_and_not_jitted():
  model, v, x = small_cnn(shape=(2, 12, 20, 3))
  clf, t = from_flax(model, v, layers=()), jnp.array([1, 3])
  # 3 windows, 2 per pass: 2 passes, the second padded.
  kw = dict(window=(12, 8), stride=(12, 6), fill=0.3, chunk_size=4)
  eager = attr.occlusion(clf, x, t, **kw)
  jitted = jax.jit(lambda x: attr.occlusion(clf, x, t, **kw))(x)
  with jax.disable_jit():
    plain = attr.occlusion(clf, x, t, **kw)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(plain, eager, rtol=1e-5, atol=1e-7)


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
