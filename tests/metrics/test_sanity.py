"""Cascading randomisation: order, keys, BN handling, similarities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax.metrics import sanity
from tests.attribution.models import small_cnn


def test_similarities_by_hand():
  a = jnp.array([[[1.0, 2.0, 3.0, 4.0]]])
  np.testing.assert_allclose(sanity.pearson(a, 2 * a + 1), [1.0], rtol=1e-6)
  np.testing.assert_allclose(sanity.pearson(a, -a), [-1.0], rtol=1e-6)
  # Monotone but not linear: Spearman 1, Pearson < 1.
  b = a**3
  np.testing.assert_allclose(sanity.spearman(a, b), [1.0], rtol=1e-6)
  assert float(sanity.pearson(a, b)[0]) < 0.99
  m = jax.random.uniform(jax.random.key(0), (2, 12, 16))
  np.testing.assert_allclose(sanity.ssim(m, m), [1.0, 1.0], rtol=1e-5)
  assert float(sanity.ssim(m, 1 - m)[0]) < 0
  assert np.isnan(sanity.pearson(jnp.ones((1, 2, 2)), a.reshape(1, 2, 2))[0])


def test_pearson_of_tiny_maps_does_not_underflow():
  """Gradients of 1e-12: their squared norms' product is below float32's
  normal range, and jitted XLA:CPU flushes it to zero."""
  a = jax.random.normal(jax.random.key(1), (2, 12, 16))
  b = a + jax.random.normal(jax.random.key(2), (2, 12, 16))
  expected = sanity.pearson(a, b)
  tiny = jax.jit(sanity.pearson)(1e-12 * a, 1e-12 * b)
  np.testing.assert_allclose(tiny, expected, rtol=1e-5)
  assert 0.3 < float(expected.min()) < 0.95


def test_cascade_order_keys_and_decorrelation():
  model, v, x = small_cnn()
  t = jnp.array([1, 0, 3])
  order = sanity.default_layer_order(model, v, x.shape[1:])
  assert order == ["head", "block2", "block1"]
  out = sanity.cascading_randomization(
      model, v, x, t, attr.gradient, key=jax.random.key(0))
  assert out["layers"] == order
  s = np.asarray(out["similarity"]["spearman"])
  assert s.shape == (4, 3)
  np.testing.assert_allclose(s[0], 1.0, rtol=1e-6)     # trained vs itself
  assert s[-1].mean() < 0.9 * s[0].mean()               # decorrelates
  again = sanity.cascading_randomization(
      model, v, x, t, attr.gradient, key=jax.random.key(0))
  np.testing.assert_array_equal(again["similarity"]["pearson"],
                                out["similarity"]["pearson"])
  assert out["config"]["batch_stats"] == "keep"


def test_batch_stats_reset_changes_the_randomised_model():
  model, v, x = small_cnn()
  # Trained-looking statistics, so that a reset is visible.
  v = {"params": v["params"], "batch_stats": jax.tree.map(
      lambda s: s * 3.0 + 0.5, v["batch_stats"])}
  t = jnp.array([1, 0, 3])
  kw = dict(key=jax.random.key(1), layers=["block2"],
            classifier_layers=["block2"], layer="block2")
  keep = sanity.cascading_randomization(model, v, x, t, attr.grad_cam, **kw)
  reset = sanity.cascading_randomization(model, v, x, t, attr.grad_cam,
                                         batch_stats="reset", **kw)
  assert not np.allclose(keep["similarity"]["pearson"][1],
                         reset["similarity"]["pearson"][1])


def test_bad_options():
  model, v, x = small_cnn()
  t = jnp.array([1, 0, 3])
  with pytest.raises(ValueError, match=r"layers \['pool1'\] have no "
                     "parameters"):
    sanity.cascading_randomization(model, v, x, t, attr.gradient,
                                   key=jax.random.key(0), layers=["pool1"])
  with pytest.raises(ValueError, match="unknown similarities"):
    sanity.cascading_randomization(model, v, x, t, attr.gradient,
                                   key=jax.random.key(0),
                                   similarities=["kendall"])
