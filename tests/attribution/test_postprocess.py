"""Post-processing: eps-safe, per map, deterministic ties."""

import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.attribution import postprocess as pp


def test_normalisations_of_constant_and_zero_maps_are_zero_not_nan():
  maps = jnp.stack([jnp.full((3, 4), 2.5), jnp.zeros((3, 4))])
  for f in (pp.normalize_minmax, pp.normalize_max_abs):
    out = f(maps)
    assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_array_equal(pp.normalize_minmax(maps), 0)
  np.testing.assert_allclose(pp.normalize_max_abs(maps)[0], 1.0)
  np.testing.assert_array_equal(pp.normalize_max_abs(maps)[1], 0)


def test_normalize_max_abs_keeps_sign_and_is_per_map():
  maps = jnp.array([[[-4.0, 2.0]], [[1.0, 0.5]]])
  np.testing.assert_allclose(pp.normalize_max_abs(maps),
                             [[[-1.0, 0.5]], [[1.0, 0.5]]])


def test_top_k_binarisation_counts_exactly_and_breaks_ties_stably():
  m = jnp.array([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]])
  np.testing.assert_array_equal(pp.binarize_top_k(m, 2 / 6),
                                [[False, True, True], [False] * 3])
  np.testing.assert_array_equal(pp.binarize_top_k(jnp.zeros((2, 2)), 0.5),
                                [[True, True], [False, False]])
  with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
    pp.binarize_top_k(m, 0.0)


def test_mean_std_and_threshold():
  m = jnp.array([[0.0, 0.0, 0.0, 4.0]])
  np.testing.assert_array_equal(pp.binarize_mean_std(m), [[0, 0, 0, 1]])
  np.testing.assert_array_equal(pp.binarize_threshold(m, 0.0), [[0, 0, 0, 1]])


def test_gaussian_blur_keeps_constants_and_mass_away_from_edges():
  const = jnp.full((2, 9, 13), 3.0)
  np.testing.assert_allclose(pp.gaussian_blur(const, sigma=2.0,
                                              kernel_size=5), 3.0, rtol=1e-6)
  spike = jnp.zeros((21, 23)).at[10, 11].set(1.0)
  out = pp.gaussian_blur(spike, sigma=1.0, kernel_size=7)
  assert float(out.sum()) == pytest.approx(1.0, rel=1e-5)
  assert float(out[10, 11]) == float(out.max())
  np.testing.assert_allclose(out, out[::-1, ::-1], atol=1e-7)   # symmetric
  with pytest.raises(ValueError, match="kernel_size must be odd"):
    pp.gaussian_blur(spike, kernel_size=4)


def test_clip_percentile_and_no_mutation():
  m = jnp.arange(100.0).reshape(1, 10, 10)
  out = pp.clip_percentile(m, 90)
  assert float(out.max()) == pytest.approx(89.1)
  assert float(m.max()) == 99.0


@pytest.mark.parametrize("name, kwargs", [
    ("resize", {"size": (6, 10)}), ("relu", {}), ("absolute", {}),
    ("normalize_minmax", {}), ("normalize_max_abs", {}),
    ("clip_percentile", {"q": 90}), ("gaussian_blur", {"kernel_size": 3}),
    ("pixel_ranks", {}), ("binarize_top_k", {"fraction": 0.25}),
    ("binarize_mean_std", {}), ("binarize_threshold", {"threshold": 0.0}),
])
def test_no_post_processing_mutates_a_numpy_input(name, kwargs):
  """A mutable NumPy array in, unchanged after (PITFALLS 17: Quantus added
  its epsilon in place on a reshaped view); the output is a new array."""
  maps = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32)
  maps[0, 0, 0] = -3.0
  before = maps.copy()
  out = getattr(pp, name)(maps, **kwargs)
  np.testing.assert_array_equal(maps, before)
  assert not np.shares_memory(np.asarray(out), maps)
