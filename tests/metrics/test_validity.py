"""Invalid (non-finite) maps, undefined cases (empty / full masks, constant
maps) and the worst-case scoring (issue 15, items 10-12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import metrics
from lapjax.metrics import faithfulness as F
from lapjax.metrics import saliency as S
from tests.attribution.models import linear_classifier

H, W = 5, 7
RANKING = (metrics.pointing_game, metrics.relevance_rank_accuracy,
           metrics.top_k_intersection)
ALL = RANKING + (metrics.relevance_mass_accuracy, metrics.roc_auc,
                 metrics.region_attribution)


def _mask():
  m = np.zeros((1, H, W), bool)
  m[0, 1:3, 4:6] = True
  return m


def _peaked(value=np.nan, at=(0, 0)):
  """A map high on the mask, one pixel set to ``value``."""
  m = np.zeros((1, H, W), np.float32)
  m[0, 1:3, 4:6] = 5.0
  m[0, at[0], at[1]] = value
  return m


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_map_scores_nan_on_every_localisation_metric(bad):
  """Item 10: before, a NaN map was a pointing-game hit under ties='all'
  (no pixel equals NaN, so 'all tied pixels on target' held vacuously) and
  got finite rank / ROC / top-k scores."""
  maps, mask = _peaked(bad), _mask()
  for f in ALL:
    assert np.isnan(f(maps, mask)[0]), f.__name__
  for ties in ("all", "fraction", "any"):
    assert np.isnan(metrics.pointing_game(maps, mask, ties=ties)[0])
  assert np.isnan(metrics.sparseness(maps)[0])
  with pytest.raises(ValueError, match=r"maps \[0\] hold NaN"):
    metrics.learned_threshold(maps, mask)
  # The same map with a finite value there is a clean hit everywhere.
  fine = _peaked(0.0)
  for f in RANKING + (metrics.relevance_mass_accuracy,):
    kw = {"k": 4} if f is metrics.top_k_intersection else {}
    assert float(f(fine, mask, **kw)[0]) == 1.0, f.__name__


def test_full_masks_are_undefined_not_perfect():
  """Item 11: an all-true mask used to score 1.0 whatever the map."""
  full = np.ones((1, H, W), bool)
  maps = jax.random.normal(jax.random.key(0), (1, H, W))
  for f in ALL:
    assert np.isnan(f(maps, full)[0]), f.__name__
  assert np.isfinite(metrics.roc_auc(maps, _mask())[0])


def test_validity_codes_precedence_and_names():
  maps = np.zeros((5, H, W), np.float32)
  maps[:, 2, 3] = 1.0
  maps[1, 0, 0] = np.nan
  maps[4] = 0.0
  masks = np.repeat(_mask(), 5, 0)
  masks[2] = False
  masks[3] = True
  codes = metrics.validity(maps, masks)
  assert codes.dtype == jnp.int32
  np.testing.assert_array_equal(
      codes, [metrics.VALID, metrics.NONFINITE_MAP, metrics.EMPTY_MASK,
              metrics.FULL_MASK, metrics.CONSTANT_MAP])
  # A non-finite map is invalid even with an empty mask (precedence).
  both = maps[1:2].copy()
  assert int(metrics.validity(both, np.zeros((1, H, W), bool))[0]) \
      == metrics.NONFINITE_MAP
  assert [metrics.VALIDITY_NAMES[c] for c in np.asarray(codes)] == [
      "valid", "nonfinite_map", "empty_mask", "full_mask", "constant_map"]
  # Map-only metrics: no mask codes.
  np.testing.assert_array_equal(metrics.validity(maps), [0, 1, 0, 0, 4])
  jitted = jax.jit(metrics.validity)(maps, masks)
  np.testing.assert_array_equal(jitted, codes)
  with pytest.raises(ValueError, match=r"\[B, H, W\]"):
    metrics.validity(maps[0])


def test_nan_summary_separates_invalid_from_undefined_and_worst_case():
  """Item 12: undefined maps scored as misses (worst case), mask-side NaN
  left out in both means. Pointing game on six images: two hits, one miss,
  an all-zero map, a NaN map and an empty mask."""
  maps = np.zeros((6, H, W), np.float32)
  masks = np.repeat(_mask(), 6, 0)
  maps[0, 1, 4] = maps[1, 2, 5] = 1.0       # hits
  maps[2, 4, 0] = 1.0                       # miss
  maps[4, 1, 4] = np.nan                    # invalid (was a hit, ties='all')
  maps[5, 1, 4] = 1.0
  masks[5] = False                          # empty mask
  v = metrics.pointing_game(maps, masks, ties="all")
  codes = metrics.validity(maps, masks)
  np.testing.assert_array_equal(np.isnan(v), [0, 0, 0, 1, 1, 1])
  s = metrics.nan_summary(v, codes)
  assert s["mean"] == pytest.approx(2 / 3) and s["n"] == 3
  assert (s["nan"], s["invalid"], s["undefined"]) == (3, 1, 2)
  assert s["worst_mean"] == pytest.approx(2 / 5)     # 2 hits of 5 scorable
  np.testing.assert_array_equal(metrics.worst_case(v, codes),
                                [1, 1, 0, 0, 0, np.nan])
  np.testing.assert_array_equal(
      metrics.worst_case(v, codes, worst=-1.0)[:5], [1, 1, 0, -1, -1])
  # Without codes the summary keeps its old keys.
  assert set(metrics.nan_summary(v)) == {"mean", "std", "n", "nan"}
  with pytest.raises(ValueError, match="same length"):
    metrics.worst_case(v, codes[:2])


def test_relevance_mass_with_no_positive_mass_is_map_side_undefined():
  """A non-constant all-negative map: NaN mass, code VALID, so the worst
  case scores it as a miss."""
  maps = -np.arange(H * W, dtype=np.float32).reshape(1, H, W) - 1
  v = metrics.relevance_mass_accuracy(maps, _mask())
  codes = metrics.validity(maps, _mask())
  assert np.isnan(v[0]) and int(codes[0]) == metrics.VALID
  assert metrics.worst_case(v, codes)[0] == 0.0


def test_faithfulness_of_a_non_finite_map_is_nan():
  """Item 10: before, the NaN map's arbitrary pixel order gave finite
  POS/NEG/INS/DEL curves."""
  rng = np.random.default_rng(0)
  clf = linear_classifier(jnp.asarray(rng.normal(size=(2, H, W, 3)),
                                      jnp.float32))
  x = jnp.asarray(rng.uniform(size=(2, H, W, 3)), jnp.float32)
  maps = jnp.asarray(rng.normal(size=(2, H, W)), jnp.float32)
  maps = maps.at[1, 3, 3].set(jnp.nan)
  t = jnp.array([1, 1])
  pn = F.positive_negative(clf, x, maps, t)
  idd = jax.jit(lambda m: F.insertion_deletion(clf, x, m, t, steps=4))(maps)
  for out in (pn, idd):
    for k, v in out.items():
      v = np.asarray(v)
      assert np.isfinite(v[0]).all() and np.isnan(v[1]).all(), k
  srg = F.srg(clf, x, maps, t)
  assert np.isfinite(srg["srg"][0]) and np.isnan(srg["srg"][1])
  keep = F.keep_top_accuracy(clf, x, maps, t)
  assert np.isfinite(keep[0]).all() and np.isnan(keep[1]).all()


def test_sic_aic_flags_invalid_maps_apart_from_skipped_images():
  """A model reading a checkerboard in a region (the blurred start image is
  not its class): image 1 is scored, image 0, the same with an infinite map
  value, is invalid, not skipped."""
  hh, ww = 8, 10
  checker = np.indices((hh, ww)).sum(0) % 2 * 2.0 - 1.0
  region = np.zeros((hh, ww))
  region[2:6, 2:8] = 1.0
  w = np.zeros((2, hh, ww, 3), np.float32)
  w[1] = (checker * region)[..., None]
  clf = linear_classifier(jnp.asarray(w), jnp.array([0.0, -10.0]))
  noise = np.random.default_rng(0).uniform(-0.1, 0.1, (1, hh, ww, 3))
  x = jnp.asarray(0.5 + 0.4 * checker[None, ..., None] + noise,
                  jnp.float32).repeat(2, 0)
  maps = jnp.asarray(region, jnp.float32)[None].repeat(2, 0)
  maps = maps.at[0, 0, 0].set(jnp.inf)
  out = F.sic_aic(clf, x, maps, jnp.array([1, 1]), key=jax.random.key(0),
                  blur_sigma=2.0)
  assert list(out["invalid"]) == [True, False] and out["n_invalid"] == 1
  assert list(out["skipped"]) == [False, False] and out["n_skipped"] == 0
  assert np.isnan(out["sic"][0]) and np.isnan(out["aic"][0])
  assert np.isfinite(out["sic"][1]) and np.isfinite(out["aic"][1])


def test_saliency_metrics_check_shapes_dtypes_and_values():
  """Item 13: a 0/255 mask used to give precision 255 / 1 > 1."""
  h = (jnp.arange(24.0).reshape(1, 4, 6) + 1) / 24
  mask01 = np.zeros((1, 4, 6), np.float32)
  mask01[0, 3, :3] = 1
  expected = float(S.all_saliency_precision(h, mask01.astype(bool))[0])
  assert expected == pytest.approx((19 + 20 + 21) / 300)
  for dtype in (np.float32, np.int32, np.uint8):    # 0/1 numbers are fine
    assert float(S.all_saliency_precision(h, mask01.astype(dtype))[0]) \
        == pytest.approx(expected)
  for f in (S.all_saliency_precision, S.top_saliency_precision):
    with pytest.raises(ValueError, match="0/1 numbers"):
      f(h, (mask01 * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"both be \[B, h, w\]"):
      f(h, mask01[:, :, :5])
    with pytest.raises(ValueError, match=r"float \[B, h, w\]"):
      f(h[0], mask01[0])
    with pytest.raises(ValueError, match="non-negative"):
      f(h - 0.5, mask01)
    with pytest.raises(ValueError, match="bool or 0/1"):
      f(h, mask01.astype(np.complex64))
    assert np.isnan(f(h.at[0, 0, 0].set(jnp.nan), mask01)[0])
  # Under jit the value check cannot run: a 0/255 mask reads as 0/1.
  jitted = jax.jit(S.all_saliency_precision)(h, mask01 * 255)
  assert float(jitted[0]) == pytest.approx(expected)
  boxes = jnp.array([[[12.0, 0.0, 16.0, 8.0]]])
  with pytest.raises(ValueError, match=r"boxes must be \[B, N, 4\]"):
    S.annotation_coverage(h, boxes[0], jnp.array([True]), (16, 24))
  assert np.isnan(S.annotation_coverage(h.at[0, 0, 0].set(jnp.inf), boxes,
                                        jnp.array([[True]]), (16, 24))[0])
