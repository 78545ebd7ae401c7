"""Saliency precision and annotation coverage (paper 001) on hand-made
maps, H != W and off-centre boxes."""

import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.metrics import saliency as S


def _map():
  """4 x 6 map: values 1..24 in row-major order (no ties)."""
  return (jnp.arange(24.0).reshape(1, 4, 6) + 1.0) / 24.0


def test_top_saliency_precision_counts_the_top_set_in_the_mask():
  h = _map()
  mask = jnp.zeros((1, 4, 6)).at[0, 3, :3].set(1.0)   # 3 of the top 6 cells
  # Top 25 % = the 6 largest values = the last row.
  np.testing.assert_allclose(
      S.top_saliency_precision(h, mask, fraction=0.25), [0.5])
  np.testing.assert_allclose(
      S.top_saliency_precision(h, jnp.zeros_like(mask).at[0, 0].set(1.0),
                               fraction=0.25), [0.0])


def test_all_saliency_precision_is_the_mass_fraction():
  h = _map()
  mask = jnp.zeros((1, 4, 6)).at[0, 3, :3].set(1.0)
  expected = (19 + 20 + 21) / sum(range(1, 25))
  np.testing.assert_allclose(S.all_saliency_precision(h, mask), [expected],
                             rtol=1e-6)


def test_empty_masks_and_massless_maps_are_nan():
  h = _map()
  empty = jnp.zeros((1, 4, 6))
  assert np.isnan(S.top_saliency_precision(h, empty)[0])
  assert np.isnan(S.all_saliency_precision(h, empty)[0])
  assert np.isnan(S.all_saliency_precision(jnp.zeros((1, 4, 6)),
                                           empty.at[0, 0, 0].set(1.0))[0])


def test_annotation_coverage_with_tau():
  """Boxes in a 16 x 24 image, heatmap 4 x 6 (4 px per cell). Box A covers
  cells rows 3, cols 0-1 (both in the top 25 %); box B covers rows 0-1,
  cols 4-5 (none in the top set); box C is invalid."""
  h = _map()
  boxes = jnp.array([[[12.0, 0.0, 16.0, 8.0], [0.0, 16.0, 8.0, 24.0],
                      [0.0, 0.0, 4.0, 4.0]]])
  valid = jnp.array([[True, True, False]])
  cov = S.per_box_coverage(h, boxes, valid, (16, 24), fraction=0.25)
  np.testing.assert_allclose(cov[0, :2], [1.0, 0.0])
  assert np.isnan(cov[0, 2])
  np.testing.assert_allclose(
      S.annotation_coverage(h, boxes, valid, (16, 24), fraction=0.25), [0.5])
  # Half of box A's cells in the top set still covers it at tau = 0.5 ...
  boxes_a = boxes.at[0, 0].set(jnp.array([8.0, 0.0, 16.0, 8.0]))
  np.testing.assert_allclose(S.per_box_coverage(
      h, boxes_a, valid, (16, 24), fraction=0.25)[0, 0], 0.5)
  assert float(S.annotation_coverage(h, boxes_a, valid, (16, 24),
                                     fraction=0.25, tau=0.5)[0]) == 0.5
  # ... but not at tau = 0.6.
  assert float(S.annotation_coverage(h, boxes_a, valid, (16, 24),
                                     fraction=0.25, tau=0.6)[0]) == 0.0
  assert np.isnan(S.annotation_coverage(h, boxes, jnp.zeros((1, 3), bool),
                                        (16, 24))[0])


def test_fraction_outside_unit_interval_is_refused():
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    S.top_saliency_precision(_map(), jnp.ones((1, 4, 6)), fraction=0.0)
