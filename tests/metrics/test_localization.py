"""Localisation and complexity metrics on hand-computed cases (PITFALLS)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import metrics
from lapjax.attribution import postprocess
from lapjax.data import boxes

H, W = 40, 64   # H != W everywhere (PITFALLS 4)


def _box_mask(y0, x0, y1, x1):
  return boxes.boxes_to_mask(np.array([[[y0, x0, y1, x1]]], np.float32),
                             np.array([[True]]), H, W)


def test_pointing_game_tolerance_and_off_centre_box():
  """PITFALLS 3-4: maximum 10 px right of an off-centre box."""
  mask = _box_mask(5, 40, 15, 50)             # rows 5..14, columns 40..49
  m = np.zeros((1, H, W), np.float32)
  m[0, 10, 59] = 1.0                          # 10 px right of column 49
  assert metrics.pointing_game(m, mask, tolerance=0)[0] == 0
  assert metrics.pointing_game(m, mask, tolerance=15)[0] == 1
  assert metrics.pointing_game(m, mask, tolerance=9.5)[0] == 0
  # Transposed coordinates would put the maximum far away: a miss.
  m2 = np.zeros((1, H, W), np.float32)
  m2[0, 12, 45] = 1.0
  assert metrics.pointing_game(m2, mask)[0] == 1


def test_pointing_game_constant_maps_and_ties_do_not_hit():
  """PITFALLS 1: a constant map has no maximum; ties need all inside."""
  mask = _box_mask(0, 0, 20, 32)
  assert np.isnan(metrics.pointing_game(np.zeros((1, H, W)), mask)[0])
  tied = np.zeros((1, H, W), np.float32)
  tied[0, 2, 2] = tied[0, 30, 60] = 5.0       # one inside, one outside
  assert metrics.pointing_game(tied, mask, ties="all")[0] == 0
  assert metrics.pointing_game(tied, mask)[0] == 0.5     # expected hit
  assert metrics.pointing_game(tied, mask, ties="any")[0] == 1
  tied[0, 30, 60] = 0.0
  tied[0, 3, 3] = 5.0                         # both inside
  for ties in ("all", "fraction", "any"):
    assert metrics.pointing_game(tied, mask, ties=ties)[0] == 1
  # A near-constant map (one pixel lower) scores its chance level, not a hit.
  near_const = np.ones((1, H, W), np.float32)
  near_const[0, 39, 63] = 0.0
  got = float(metrics.pointing_game(near_const, mask)[0])
  assert got == pytest.approx(mask.sum() / (H * W - 1))
  with pytest.raises(ValueError, match="ties must be"):
    metrics.pointing_game(tied, mask, ties="random")


def test_empty_masks_are_nan_and_counted():
  """PITFALLS 2."""
  m = jax.random.normal(jax.random.key(0), (3, H, W))
  masks = np.zeros((3, H, W), bool)
  masks[0, :10, :10] = True
  for f in (metrics.pointing_game, metrics.relevance_mass_accuracy,
            metrics.relevance_rank_accuracy, metrics.top_k_intersection,
            metrics.roc_auc, metrics.region_attribution):
    v = np.asarray(f(m, masks))
    assert np.isfinite(v[0]) and np.isnan(v[1:]).all(), f.__name__
  s = metrics.nan_summary([0.5, np.nan, 1.0])
  assert s == {"mean": 0.75, "std": 0.25, "n": 2, "nan": 1}


def test_relevance_rank_accuracy_stable_ties_and_constant_maps():
  """PITFALLS 5."""
  mask = np.zeros((1, 2, 3), bool)
  mask[0, 0, 2] = mask[0, 1, 0] = True        # |mask| = 2
  m = np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
  # Ties among the top: the two lowest flat indices (0, 1) win, stably.
  assert metrics.relevance_rank_accuracy(m, mask)[0] == 0.0
  m2 = np.array([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
  assert metrics.relevance_rank_accuracy(m2, mask)[0] == 1.0
  assert np.isnan(metrics.relevance_rank_accuracy(np.ones((1, 2, 3)),
                                                  mask)[0])


def test_negative_relevance_outside_does_not_raise_scores():
  """PITFALLS 6: sign handling is explicit."""
  mask = _box_mask(0, 0, 10, 10)
  m = np.zeros((1, H, W), np.float32)
  m[0, :10, :10] = 1.0
  m[0, 20:, 40:] = 0.5
  base = float(metrics.relevance_mass_accuracy(m, mask)[0])
  assert base == pytest.approx(100 / (100 + 0.5 * 20 * 24))
  neg = m.copy()
  neg[0, 20:, 40:] = -5.0
  assert float(metrics.relevance_mass_accuracy(neg, mask)[0]) == 1.0
  assert float(metrics.relevance_mass_accuracy(neg, mask)[0]) <= 1.0
  # 'abs' ranks strong negatives as relevant (asked for explicitly).
  assert float(metrics.relevance_mass_accuracy(neg, mask, sign="abs")[0]) \
      == pytest.approx(100 / (100 + 5 * 20 * 24))
  # 'all' is the literal formula: negatives outside inflate it.
  assert float(metrics.relevance_mass_accuracy(
      np.where(neg < 0, -0.1, neg), mask, sign="all")[0]) > 1.0


def test_iou_and_f1_under_each_binarisation():
  """PITFALLS 7: a hand-made map, three thresholding modes."""
  m = np.zeros((1, 4, 5), np.float32)
  m[0, 0, :2] = [4.0, 3.0]
  m[0, 1, 0] = 2.0
  m[0, 3, 4] = 1.0
  mask = np.zeros((1, 4, 5), bool)
  mask[0, 0, :3] = True                        # 3 pixels
  top = postprocess.binarize_top_k(jnp.asarray(m), 3 / 20)  # 4, 3, 2
  assert float(metrics.iou(top, mask)[0]) == pytest.approx(2 / 4)
  assert float(metrics.f1(top, mask)[0]) == pytest.approx(4 / 6)
  ms = postprocess.binarize_mean_std(jnp.asarray(m))   # mean .5, std 1.12
  assert np.asarray(ms).sum() == 3
  thr = postprocess.binarize_threshold(jnp.asarray(m), 2.5)   # 4, 3
  assert float(metrics.iou(thr, mask)[0]) == pytest.approx(2 / 3)
  assert float(metrics.f1(thr, mask)[0]) == pytest.approx(4 / 5)
  assert np.isnan(metrics.iou(np.zeros((1, 2, 2), bool),
                              np.zeros((1, 2, 2), bool))[0])
  assert np.isnan(metrics.f1(np.ones((1, 2, 2), bool),
                             np.zeros((1, 2, 2), bool))[0])
  with pytest.raises(ValueError, match="bool maps"):
    metrics.iou(m, mask)


def test_roc_auc_by_hand_with_ties():
  m = np.array([[[0.1, 0.4, 0.35, 0.8]]])
  mask = np.array([[[False, True, False, True]]])
  assert float(metrics.roc_auc(m, mask)[0]) == 1.0
  m2 = np.array([[[1.0, 1.0, 0.0, 0.0]]])
  mask2 = np.array([[[True, False, True, False]]])
  assert float(metrics.roc_auc(m2, mask2)[0]) == 0.5
  m3 = np.array([[[3.0, 1.0, 2.0, 0.0, 2.0]]])
  mask3 = np.array([[[True, False, True, False, False]]])
  # positives {3, 2}, negatives {1, 0, 2}: 3 beats all (3), 2 beats 1 and 0
  # and ties 2 (2.5): 5.5 / 6.
  assert float(metrics.roc_auc(m3, mask3)[0]) == pytest.approx(5.5 / 6)


def test_top_k_intersection_and_region_attribution():
  mask = _box_mask(0, 0, 10, 10)
  m = np.zeros((1, H, W), np.float32)
  m[0, :5, :10] = 2.0                          # 50 pixels inside
  m[0, 30:, 50:] = 1.0                         # 140 pixels outside
  assert float(metrics.top_k_intersection(m, mask, k=100)[0]) == 0.5
  assert float(metrics.region_attribution(m, mask, blur_sigma=None)[0]) \
      == pytest.approx(100 / 240)
  # The blur of a constant map is constant: RA is the region's area share.
  assert float(metrics.region_attribution(np.ones((1, H, W)), mask)[0]) \
      == pytest.approx(100 / (H * W), rel=1e-5)


def test_gini_sparseness():
  """PITFALLS 17."""
  n = 4 * 5
  one_hot = np.zeros((1, 4, 5), np.float32)
  one_hot[0, 2, 3] = 7.0
  maps = np.concatenate([one_hot, np.full((1, 4, 5), 2.0),
                         np.zeros((1, 4, 5))])
  before = maps.copy()
  g = np.asarray(metrics.sparseness(maps))
  assert g[0] == pytest.approx(1 - 1 / n)
  assert g[1] == pytest.approx(0.0, abs=1e-7)
  assert np.isnan(g[2])
  np.testing.assert_array_equal(maps, before)        # no mutation
  assert float(metrics.sparseness(-one_hot)[0]) == pytest.approx(1 - 1 / n)
  assert np.isnan(metrics.sparseness(-one_hot, sign="positive")[0])


def test_shape_errors():
  with pytest.raises(ValueError, match=r"both be \[B, H, W\]"):
    metrics.pointing_game(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool))
  with pytest.raises(ValueError, match="masks must be bool"):
    metrics.roc_auc(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))


@functools.partial(jax.jit, static_argnames=("k", "sparseness_sign"))
def _shared_and_separate(maps, masks, k, sparseness_sign="abs"):
  """``ranking_metrics`` and the four separate functions."""
  shared = metrics.localization.ranking_metrics(
      maps, masks, k=k, sparseness_sign=sparseness_sign)
  separate = {
      "relevance_rank": metrics.relevance_rank_accuracy(maps, masks),
      "top_k_intersection": metrics.top_k_intersection(maps, masks, k=k),
      "roc_auc": metrics.roc_auc(maps, masks),
      "sparseness": metrics.sparseness(maps, sign=sparseness_sign)}
  return shared, separate

def _hand_made_ranking_cases():
  """Maps [10, 4, 6] with ties, a constant, a NaN, an inf and an all-zero
  map; masks with an empty, a full and a one-pixel mask."""
  maps = np.zeros((10, 4, 6), np.float32)
  maps[0] = np.arange(24).reshape(4, 6) % 5          # runs of 5 tied values
  maps[1] = 3.0                                      # constant
  maps[2] = np.arange(24).reshape(4, 6)
  maps[2, 1, 1] = np.nan                             # invalid
  maps[3] = np.arange(24).reshape(4, 6)
  maps[3, 0, 0] = np.inf                             # invalid
  # maps[4] stays all-zero: constant and no mass.
  maps[5, :2, :3] = 1.0                              # one block, ties
  maps[6] = np.linspace(-1.0, 1.0, 24).reshape(4, 6)
  maps[7] = np.array([[0, 1, 1, 2, 2, 2]] * 4, np.float32)
  maps[7, ::2, 0] = -0.0                             # ties with +0.0
  maps[8] = np.arange(24).reshape(4, 6)[::-1]
  maps[9] = np.array([[1, 0, 0, 0, 0, 1]] * 4, np.float32)
  masks = np.zeros((10, 4, 6), bool)
  masks[:, 1:3, 2:5] = True                          # partial, off-centre
  masks[5] = False                                   # empty
  masks[8] = True                                    # full
  masks[9] = False
  masks[9, 3, 5] = True                              # one pixel
  return maps, masks


@pytest.mark.parametrize("k", [1, 1000])
def test_ranking_metrics_equal_the_separate_functions(k):
  """One shared sort gives each sort-based metric's own value, NaN for
  NaN (ties, constant, non-finite maps, empty and full masks)."""
  maps, masks = _hand_made_ranking_cases()
  shared, separate = jax.device_get(_shared_and_separate(maps, masks, k))
  for name, want in separate.items():
    np.testing.assert_allclose(shared[name], want, atol=1e-6, rtol=0,
                               err_msg=name)
  # The NaN cases are the documented ones, not an artefact of sharing.
  assert np.isnan(shared["roc_auc"][[2, 3, 5, 8]]).all()
  assert np.isnan(shared["relevance_rank"][[1, 2, 3, 4, 5, 8]]).all()
  assert np.isnan(shared["sparseness"][[2, 3, 4]]).all()
  # One mask pixel at 1: above 16 zeros, tied with 7 other ones.
  assert float(shared["roc_auc"][9]) == pytest.approx((16 + 7 / 2) / 23)


@pytest.mark.parametrize("sign", ["abs", "positive"])
def test_ranking_metrics_sparseness_of_signed_and_non_negative_maps(sign):
  """Negative values take the second sort of ``|map|`` ('abs'); a batch
  without them reads ``|map|`` off the shared sort: both equal
  ``sparseness``."""
  rng = np.random.default_rng(0)
  signed = rng.integers(-3, 4, (10, 4, 6)).astype(np.float32)
  _, masks = _hand_made_ranking_cases()
  for maps in (signed, np.abs(signed), -np.abs(signed)):
    shared, separate = jax.device_get(
        _shared_and_separate(maps, masks, 9, sign))
    for name, want in separate.items():
      np.testing.assert_allclose(shared[name], want, atol=1e-6, rtol=0,
                                 err_msg=f"{name}, sign={sign}")
  with pytest.raises(ValueError, match="sparseness_sign"):
    metrics.localization.ranking_metrics(signed, masks, sparseness_sign="all")
