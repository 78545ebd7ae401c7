"""SRG, keep-top-k accuracy and the LAP paper's binarisations."""

import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import metrics
from lapjax.attribution import postprocess
from lapjax.classifier import Classifier


def _region_model():
  """Class 1 iff the mean of the top-left 2x2 pixels exceeds 0.5."""
  def apply(x, deltas=None):
    s = x[:, :2, :2, :].mean((1, 2, 3))
    return jnp.stack([0.5 - s, s - 0.5], -1) * 10, {}
  return Classifier(apply, ())


def test_srg_and_keep_top_on_a_region_model():
  x = jnp.ones((1, 4, 4, 1))
  good = jnp.zeros((1, 4, 4)).at[:, :2, :2].set(1.0)       # the region
  t = jnp.array([1])
  r = metrics.srg(_region_model(), x, good, t, retention=(0.25, 0.5, 1.0))
  # LIF keeps the region at every retention: accuracy 1; MIF removes the
  # region (the 4 top pixels) until 12/16 are kept, then keeps part of it.
  np.testing.assert_array_equal(r["lif_curve"], [[1, 1, 1]])
  np.testing.assert_array_equal(r["mif_curve"], [[0, 0, 1]])
  np.testing.assert_allclose(r["srg"], [0.25 * 1 + 0.5 * 0.5], rtol=1e-6)
  bad = 1 - good
  assert float(metrics.srg(_region_model(), x, bad, t,
                           retention=(0.25, 0.5, 1.0))["srg"][0]) < 0
  keep = metrics.keep_top_accuracy(_region_model(), x, good, t,
                                   fractions=(0.25, 0.5))
  np.testing.assert_array_equal(keep, [[1, 1]])
  np.testing.assert_array_equal(metrics.keep_top_accuracy(
      _region_model(), x, bad, t, fractions=(0.25, 0.5)), [[0, 0]])


def test_srg_refuses_bad_retention():
  with pytest.raises(ValueError, match="retention"):
    metrics.srg(_region_model(), jnp.ones((1, 4, 4, 1)), jnp.ones((1, 4, 4)),
                jnp.array([1]), retention=(0.5, 0.4))


def test_binarize_top_count_per_image():
  maps = jnp.asarray(np.arange(8.0).reshape(2, 2, 2))
  out = postprocess.binarize_top_count(maps, jnp.array([1, 3]))
  np.testing.assert_array_equal(out[0], [[False, False], [False, True]])
  np.testing.assert_array_equal(out[1], [[False, True], [True, True]])


def test_learned_threshold_closed_form():
  # Max-normalised values: mask pixels 1.0 and 0.8, background 0.2 (x6):
  # balanced weighted least squares puts the boundary half-way between the
  # class means (0.9 and 0.2) when alpha = 0.
  maps = np.array([[[1.0, 0.8, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]]])
  masks = maps > 0.5
  thr = metrics.learned_threshold(maps, masks, alpha=0.0)
  np.testing.assert_allclose(thr, 0.55, rtol=1e-6)
  assert metrics.learned_threshold(maps, masks, alpha=1.0) > 0.55
  b = metrics.binarize_learned(jnp.asarray(maps) * 3, thr)
  np.testing.assert_array_equal(np.asarray(b), masks)
  with pytest.raises(ValueError, match="does not separate"):
    metrics.learned_threshold(1 - maps, masks)
  with pytest.raises(ValueError, match="needs mask and background"):
    metrics.learned_threshold(maps, np.zeros_like(masks))
