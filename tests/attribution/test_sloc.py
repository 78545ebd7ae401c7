"""SLOC: the fitting step against an independent NumPy reference, the grid
(summed-area table) path against the dense path, masks, the method on models
with known answers, and bad input. Batch, key, jit and multi-target
properties are in test_properties.py."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import Classifier, metrics
from lapjax import attribution as attr
from lapjax.attribution import grid_masks as gm
from tests.attribution import sloc_reference
from tests.attribution.models import linear_classifier

# The module; ``attr.sloc`` is the method.
S = importlib.import_module("lapjax.attribution.sloc")

SIZE = (12, 16)                       # H != W


def _rel_linf(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
               / np.max(np.abs(np.asarray(b))))


@pytest.fixture(scope="module")
def problem():
  """Grid masks at two patch sizes, responses of a known map plus 10 %
  noise, on SLOC's scale (values of C*H*W times a probability): over 501
  steps at learning rate 0.1 the map is still converging."""
  key = jax.random.key(0)
  masks = S.sample_masks(key, SIZE, (3, 5), (0.4, 0.6), 40)
  dense = np.asarray(gm.to_dense(masks, SIZE))
  truth = np.zeros(SIZE)
  truth[3:7, 9:14] = 100.0
  rng = np.random.default_rng(0)
  responses = (np.einsum("nhw,hw->n", dense, truth)
               * (1 + 0.1 * rng.standard_normal(len(dense)))).astype(
                   np.float32)
  init = S.initial_map(jax.random.key(1), SIZE, truth.sum())
  return masks, dense, responses, init, truth


@pytest.mark.parametrize("decay", [None, (45, 0.9)])
def test_fit_matches_numpy_reference(problem, decay):
  masks, dense, responses, init, _ = problem
  ours = S.sloc_fit(masks, responses, init, lr_decay=decay)
  ref = sloc_reference.fit(dense, responses, np.asarray(init), decay=decay)
  assert _rel_linf(ours, ref) <= 1e-4


def test_grid_and_dense_paths_agree(problem):
  masks, dense, responses, init, _ = problem
  a = jax.random.normal(jax.random.key(2), SIZE)
  np.testing.assert_allclose(gm.masked_sums(a, masks),
                             gm.masked_sums(a, dense), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), (len(dense),))
  g_grid = jax.grad(lambda a: gm.masked_sums(a, masks) @ w)(a)
  g_dense = jax.grad(lambda a: gm.masked_sums(a, dense) @ w)(a)
  np.testing.assert_allclose(g_grid, g_dense, rtol=1e-5, atol=1e-5)
  assert _rel_linf(S.sloc_fit(masks, responses, init),
                   S.sloc_fit(dense, responses, init)) <= 1e-4


def test_fit_recovers_the_region_that_carries_the_response(problem):
  masks, _, responses, init, truth = problem
  a = S.sloc_fit(masks, responses, init)
  assert float(metrics.roc_auc(a[None], jnp.asarray(truth > 0)[None])[0]) > 0.95


def test_fit_snapshots_are_the_maps_at_those_steps(problem):
  masks, _, responses, init, _ = problem
  final, snaps = S.sloc_fit(masks, responses, init, steps=30,
                            snapshots=(10, 30))
  np.testing.assert_array_equal(snaps[1], final)
  np.testing.assert_array_equal(
      snaps[0], S.sloc_fit(masks, responses, init, steps=10))
  assert S.monitor_steps(501, 15, 0)[:2] == (15, 30)
  assert S.monitor_steps(501, 15, 0)[-1] == 501
  assert S.monitor_steps(100, 15, 40) == (45, 60, 75, 90, 100)


def test_grid_masks_dense_form_and_sizes():
  cells = jnp.array([[[True, False], [False, True]]])
  masks = gm.GridMasks(cells, jnp.array([[0, 1, 3]]), jnp.array([[0, 2, 4]]))
  expected = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
  np.testing.assert_array_equal(masks.to_dense((3, 4))[0], expected)
  assert float(masks.sizes()[0]) == 6
  a = jnp.arange(12.0).reshape(3, 4)
  assert float(gm.masked_sums(a, masks)[0]) == float((a * expected).sum())


def test_sampled_masks_cover_the_image_with_random_phase():
  key = jax.random.key(4)
  masks = gm.sample_grid_masks(key, (20, 28), 6, 0.5, 300)
  dense = np.asarray(masks.to_dense((20, 28)))
  assert dense.reshape(300, -1).sum(1).min() > 0
  assert abs(dense.mean() - 0.5) < 0.05
  first_edges = np.asarray(masks.row_edges[:, 1])
  assert len(np.unique(first_edges)) == 6           # every phase in [0, 6)
  again = gm.sample_grid_masks(key, (20, 28), 6, 0.5, 300)
  np.testing.assert_array_equal(again.to_dense((20, 28)), dense)


def test_empty_masks_are_redrawn():
  masks = gm.sample_grid_masks(jax.random.key(5), (8, 8), 8, 0.02, 50)
  assert float(masks.sizes().min()) > 0


def _region_model(region):
  """Two classes; ``logit_1 = 0.3 * (channel 0 summed over region) - 3``,
  so class 1's probability rises from 0.05 to 0.95 as the region of an
  all-ones image is revealed."""
  w = jnp.zeros((2, *SIZE, 3)).at[1, :, :, 0].set(0.3 * region)
  return linear_classifier(w, jnp.array([0.0, -3.0]))


REGION = np.zeros(SIZE, np.float32)
REGION[2:6, 10:15] = 1.0


def test_sloc_localises_the_evidence_of_a_model():
  clf = _region_model(REGION)
  x = jnp.ones((1, *SIZE, 3))
  m = S.sloc(clf, x, jnp.array([1]), key=jax.random.key(6), num_masks=200,
             tune_masks=20, patch_sizes=(2, 4))
  assert float(metrics.roc_auc(m, jnp.asarray(REGION > 0)[None])[0]) > 0.95
  # The map's total approaches the response S = (p(x) - p(b)) * C * H * W.
  total = (0.9526 - 0.0474) * 3 * SIZE[0] * SIZE[1]
  assert abs(float(m.sum()) - total) < 0.2 * total


def test_sloc_m_returns_the_best_monitored_map():
  clf = _region_model(REGION)
  x = jax.random.uniform(jax.random.key(7), (2, *SIZE, 3))
  kw = dict(key=jax.random.key(8), num_masks=30, tune_masks=6,
            patch_sizes=(2, 4), steps=20)
  best = S.sloc_m(clf, x, jnp.array([1, 1]), monitor_every=10, **kw)
  t = attr.core.make_targets(jnp.array([1, 1]), 2, 2)
  problem = S._make_problem(x, t, 0.0, 5.0, "prob")
  history = []
  for steps in (10, 20):
    history.append(S.sloc(clf, x, jnp.array([1, 1]), **{**kw,
                                                          "steps": steps}))
  history = jnp.stack(history, 1)
  idd = S.quantile_idd(clf, problem, history, chunk_size=64)
  expected = history[jnp.arange(2), jnp.argmax(idd, 1)]
  np.testing.assert_allclose(best, expected, rtol=1e-5, atol=1e-6)


def test_constant_model_gives_a_finite_zero_map():
  clf = linear_classifier(jnp.zeros((3, *SIZE, 3)))
  m = S.sloc(clf, jnp.ones((2, *SIZE, 3)), jnp.array([0, 2]),
             key=jax.random.key(9), num_masks=10, tune_masks=4, steps=20)
  np.testing.assert_array_equal(m, 0.0)


def test_calibrate_p_picks_a_candidate_per_patch_size():
  clf = _region_model(REGION)
  x = jax.random.uniform(jax.random.key(10), (3, *SIZE, 3))
  p = S.calibrate_p(clf, x, jnp.array([1, 1, 1]), key=jax.random.key(11),
                    patch_sizes=(2, 4), tune_masks=8)
  assert len(p) == 2 and all(v in S.P_CANDIDATES for v in p)


# -- bad input -----------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
  clf = _region_model(np.ones(SIZE, np.float32))
  return clf, jnp.ones((1, *SIZE, 3)), jnp.array([1])


@pytest.mark.parametrize("p", [0.0, 1.0, 1.5, -0.1])
def test_p_outside_unit_interval_is_refused(small, p):
  clf, x, t = small
  with pytest.raises(ValueError, match=r"p .*\(0, 1\)"):
    S.sloc(clf, x, t, key=jax.random.key(0), p=p)


def test_patch_larger_than_image_is_refused(small):
  clf, x, t = small
  with pytest.raises(ValueError, match="patch_sizes must be in"):
    S.sloc(clf, x, t, key=jax.random.key(0), patch_sizes=(4, 13))


def test_bad_masks_are_refused(small, problem):
  clf, x, t = small
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"masks must be \[N, H, W\]"):
    S.sloc(clf, x, t, key=key, masks=jnp.ones((4, 12, 15)))
  _, dense, responses, init, _ = problem
  with pytest.raises(ValueError, match="binary"):
    S.sloc_fit(dense * 0.5, responses, init)
  with pytest.raises(ValueError, match="dtype"):
    S.sloc_fit(dense.astype(np.complex64), responses, init)
  with pytest.raises(ValueError, match=r"responses must be \[N\]"):
    S.sloc_fit(dense, responses[:-1], init)


def test_empty_masks_are_refused_or_nan_under_jit(problem):
  _, dense, responses, init, _ = problem
  empty = np.zeros_like(dense)
  with pytest.raises(ValueError, match="no pixel on"):
    S.sloc_fit(empty, responses, init, steps=3)
  out = jax.jit(lambda m: S.sloc_fit(m, responses, init, steps=3))(empty)
  assert bool(jnp.all(jnp.isnan(out)))


def test_non_finite_responses_are_refused(problem):
  masks, _, responses, init, _ = problem
  bad = responses.copy()
  bad[3] = np.nan
  with pytest.raises(ValueError, match="NaN or inf"):
    S.sloc_fit(masks, bad, init)


def test_a_model_with_non_finite_outputs_is_refused():
  def apply(x, deltas=None):
    del deltas
    logits = jnp.stack([x.mean((1, 2, 3)), jnp.log(x.min((1, 2, 3)))], -1)
    return logits, {}
  clf = Classifier(apply=apply, layers=())
  x = jnp.ones((1, *SIZE, 3))          # masked inputs have zeros: log 0
  with pytest.raises(ValueError, match="not finite"):
    S.sloc(clf, x, jnp.array([0]), key=jax.random.key(0), num_masks=4,
           tune_masks=3, steps=3, response="logit")


def test_user_masks_take_the_dense_path(small):
  clf, x, t = small
  masks = jnp.zeros((6, *SIZE)).at[:, :6].set(1.0).at[3:, :, :8].set(1.0)
  m = S.sloc(clf, x, t, key=jax.random.key(0), masks=masks, steps=20)
  assert m.shape == (1, *SIZE) and bool(jnp.all(jnp.isfinite(m)))
