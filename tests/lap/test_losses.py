"""LAP losses against hand computations (Eq. 4-5, 8, 9)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import lap
from lapjax.lap import losses

BIN = lap.binary()


def _maps(values):                        # [B, n] -> [B, 1, n, 1]
  return jnp.asarray(values, jnp.float32)[:, None, :, None]


def test_weak_loss_matches_hand_computation():
  # Image 0 positive, images 1-2 negative; 10 elements; K_min = 1,
  # K_max = ceil(0.5 * 10) = 5, K_iar = ceil(0.2 * 10) = 2.
  rng = np.random.default_rng(0)
  p = rng.uniform(0.05, 0.95, (3, 10))
  ref = rng.uniform(size=(3, 10))
  loss, parts = lap.lap_supervision_loss(
      _maps(p), jnp.array([1, 0, 0]), BIN, reference=_maps(ref),
      gamma_min=0.1, gamma_max=0.5, gamma_iar=0.2)
  top = np.argsort(-ref[0])[:1]
  bottom = np.argsort(ref[0])[:5]
  min_ar = -2 * np.log(p[0, top]).mean()
  max_ar = -np.log(1 - p[0, bottom]).mean()
  iar = np.mean([-np.log(1 - np.sort(p[i])[-2:]).mean() for i in (1, 2)])
  np.testing.assert_allclose(parts["min_ar"], min_ar, rtol=1e-5)
  np.testing.assert_allclose(parts["max_ar"], max_ar, rtol=1e-5)
  np.testing.assert_allclose(parts["iar"], iar, rtol=1e-5)
  np.testing.assert_allclose(loss, min_ar + max_ar + iar, rtol=1e-5)


def test_per_dc_normalisation_and_absent_dc_terms():
  # 3 DCs one-vs-others over 4 classes (BGO 0). A batch with classes 1, 1,
  # 0: DC0 has n+ = 2, n- = 1; DC1 and DC2 have n+ = 0 (no MinAR), n- = 3.
  s = lap.one_vs_others(4, bgo=0)
  rng = np.random.default_rng(1)
  p = rng.uniform(0.1, 0.9, (3, 2, 2, 3))
  _, parts = lap.lap_supervision_loss(jnp.asarray(p, jnp.float32),
                                      jnp.array([1, 1, 0]), s,
                                      gamma_min=1.0, gamma_max=None,
                                      gamma_iar=1.0)
  flat = p.reshape(3, 4, 3)
  min_ar = -2 * np.log(flat[:2, :, 0]).mean()             # mean over 2 images
  iar = (-np.log(1 - flat[2, :, 0]).mean()                 # DC0: image 2
         + sum(-np.log(1 - flat[:, :, m]).mean() for m in (1, 2)))
  np.testing.assert_allclose(parts["min_ar"], min_ar, rtol=1e-5)
  np.testing.assert_allclose(parts["iar"], iar, rtol=1e-5)


def test_ranking_follows_the_reference_not_the_map():
  p = np.array([[0.9, 0.1, 0.5, 0.5]])
  ref = np.array([[0.0, 1.0, 0.0, 0.0]])
  _, parts = lap.lap_supervision_loss(_maps(p), jnp.array([1]), BIN,
                                      reference=_maps(ref), gamma_min=0.25,
                                      gamma_max=None)
  np.testing.assert_allclose(parts["min_ar"], -2 * np.log(0.1), rtol=1e-5)


def test_counts_use_ceil_without_float_noise():
  assert losses.count(0.7, 10) == 7
  assert losses.count(0.1, 64) == 7
  assert losses.count(1e-9, 4096) == 1


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_no_nan_or_inf_when_maps_are_exactly_0_or_1(value):
  s = lap.one_vs_others(3, bgo=0)
  labels = jnp.array([0, 1, 2, 1])
  masks = jnp.zeros((4, 8, 8), bool).at[1:, 2:5, 2:5].set(True)

  def total(m):
    maps = jnp.full((4, 4, 4, 2), value) * m
    deep = jnp.full((4, 2, 2, 2), value) * m
    notes = losses.annotation_maps(masks, labels, s, (4, 4))
    return (lap.lap_supervision_loss(maps, labels, s)[0]
            + lap.discriminative_loss(maps, labels, s)
            + lap.expert_loss(maps, labels, s, notes, gamma_iar=0.2)[0]
            + lap.concordance_loss([maps, deep]))

  value_, grad = jax.value_and_grad(total)(1.0)
  assert np.isfinite(value_) and np.isfinite(grad)
  maps = jnp.full((4, 4, 4, 2), value)
  g = jax.grad(lambda m: lap.lap_supervision_loss(m, labels, s)[0]
               + lap.concordance_loss([m, m[:, ::2, ::2]]))(maps)
  assert np.all(np.isfinite(g))


def test_expert_loss_matches_hand_computation():
  p = np.array([[0.8, 0.3, 0.6, 0.2], [0.4, 0.7, 0.1, 0.5]])
  notes = np.array([[True, False, True, False], [False] * 4])
  _, parts = lap.expert_loss(_maps(p), jnp.array([1, 0]), BIN,
                             jnp.asarray(notes)[:, None, :, None],
                             gamma_iar=0.5)
  np.testing.assert_allclose(parts["min_ar"],
                             -2 * np.log([0.8, 0.6]).mean(), rtol=1e-5)
  np.testing.assert_allclose(parts["max_ar"],
                             -np.log(1 - np.array([0.3, 0.2])).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(parts["iar"],
                             -np.log(1 - np.array([0.7, 0.5])).mean(),
                             rtol=1e-5)


def test_annotation_maps_mark_overlapping_cells_of_present_dcs():
  masks = np.zeros((2, 4, 6), bool)
  masks[:, 0, 5] = True
  notes = losses.annotation_maps(jnp.asarray(masks), jnp.array([1, 0]), BIN,
                                 (2, 3))
  assert notes.shape == (2, 2, 3, 1)
  assert notes[0, 0, 2, 0] and notes[0].sum() == 1
  assert not notes[1].any()                                 # negative image


def test_concordance_matches_equation_9():
  rng = np.random.default_rng(2)
  p = rng.uniform(0.1, 0.9, (2, 4, 4, 1))
  q = rng.uniform(0.1, 0.9, (2, 4, 4, 1))
  js = 0.5 * ((p - q) * np.log(p / q)
              + (q - p) * np.log((1 - p) / (1 - q))).mean((1, 2)).sum(-1)
  np.testing.assert_allclose(
      lap.concordance_loss([jnp.asarray(p), jnp.asarray(q)]), js.mean(),
      rtol=1e-5)
  assert float(lap.concordance_loss([jnp.asarray(p), jnp.asarray(p)])) == 0


def test_reference_maps_sum_all_laps_at_each_grid():
  a = jnp.ones((1, 4, 4, 1)) * 0.2
  b = jnp.ones((1, 2, 2, 1)) * 0.5
  refs = lap.reference_maps([a, b], [a, b])
  np.testing.assert_allclose(refs[0], 1.4, rtol=1e-6)
  np.testing.assert_allclose(refs[1], 1.4, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"gamma_min": 0.0}, "gamma_min must be in \\(0, 1\\]"),
    ({"gamma_min": 1.5}, "gamma_min must be in \\(0, 1\\]"),
    ({"gamma_iar": -0.1}, "gamma_iar must be in"),
    ({"gamma_max": 1.0}, "selects zero elements"),
])
def test_bad_ratios_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lap.lap_supervision_loss(jnp.full((2, 4, 4, 1), 0.5), jnp.array([0, 1]),
                             BIN, **kwargs)


def test_bad_labels_and_shapes_are_refused():
  maps = jnp.full((2, 4, 4, 1), 0.5)
  with pytest.raises(ValueError, match="labels must be classes"):
    lap.lap_supervision_loss(maps, jnp.array([0, 2]), BIN)
  with pytest.raises(ValueError, match="M = 1 DCs"):
    lap.lap_supervision_loss(jnp.full((2, 4, 4, 3), 0.5), jnp.array([0, 1]),
                             BIN)


def test_objective_sums_weighted_terms():
  rng = np.random.default_rng(3)
  maps = [jnp.asarray(rng.uniform(0.1, 0.9, (4, 4, 4, 1)), jnp.float32),
          jnp.asarray(rng.uniform(0.1, 0.9, (4, 2, 2, 1)), jnp.float32)]
  labels = jnp.array([0, 1, 1, 0])
  obj = lap.LAPObjective(((-1, 1),), weights=(10.0,),
                         concordance_weight=2.0)
  total, parts = obj(maps, None, labels)
  refs = lap.reference_maps(maps)
  expected = sum(10 * lap.lap_supervision_loss(m, labels, BIN,
                                               reference=r)[0]
                 for m, r in zip(maps, refs))
  expected += 2 * lap.concordance_loss(maps)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert math.isclose(float(parts["lap"]), float(total), rel_tol=1e-6)


def test_top_k_selection_matches_a_sort_including_gradients():
  rng = np.random.default_rng(5)
  values = jnp.asarray(rng.normal(size=(3, 2, 97)), jnp.float32)
  ranking = jnp.asarray(rng.uniform(size=(3, 2, 97)), jnp.float32)
  for k in (1, 10, 48, 96):
    idx = np.argsort(-np.asarray(ranking), axis=-1)[..., :k]
    ref = np.take_along_axis(np.asarray(values), idx, -1).mean(-1)
    np.testing.assert_allclose(losses._mean_of_top(values, ranking, k), ref,
                               rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda v, k=k: losses._mean_of_top(v, ranking, k).sum())(
        values)
    expected = np.zeros(values.shape)
    np.put_along_axis(expected, idx, 1.0 / k, -1)
    np.testing.assert_allclose(g, expected, atol=1e-6)


def test_top_k_ties_at_the_boundary_share_the_places():
  values = jnp.array([[4.0, 1.0, 2.0, 3.0]])
  ranking = jnp.array([[1.0, 0.5, 0.5, 0.5]])
  # top 2: element 0, then one place shared by the three tied elements.
  np.testing.assert_allclose(losses._mean_of_top(values, ranking, 2),
                             [(4.0 + (1 + 2 + 3) / 3) / 2], rtol=1e-6)
