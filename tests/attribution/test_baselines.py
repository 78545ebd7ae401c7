"""Baselines of the perturbation and path methods: a number, an array, or
``'blur'`` (``core.baseline_images``), the same in every method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from tests.attribution.models import linear_classifier, small_cnn

W = jax.random.normal(jax.random.key(0), (3, 6, 9, 2))
X = jax.random.uniform(jax.random.key(1), (2, 6, 9, 2))
T = jnp.array([1, 2])
SIGMA = 1.5


def _blurred(x):
  return attr.core.baseline_images(x, "blur", SIGMA)


def test_baseline_images():
  x = jax.random.uniform(jax.random.key(12), (1, 12, 16, 3)) + 0.5
  np.testing.assert_array_equal(attr.core.baseline_images(x, 0.0), 0 * x)
  blurred = attr.core.baseline_images(x, "blur", 2.0)
  assert blurred.shape == x.shape and float(blurred.std()) < float(x.std())
  # Blurring keeps each channel's level (a normalised kernel).
  np.testing.assert_allclose(blurred.mean((1, 2)), x.mean((1, 2)), rtol=0.05)


def test_integrated_gradients_with_a_blurred_baseline_is_exact_when_linear():
  ig = attr.integrated_gradients(linear_classifier(W), X, T,
                                 baseline="blur", blur_sigma=SIGMA, steps=3)
  np.testing.assert_allclose(ig, ((X - _blurred(X)) * W[T]).sum(-1),
                             rtol=1e-4, atol=1e-5)


def test_occlusion_with_a_blurred_fill_is_the_blur_difference_times_w():
  got = attr.occlusion(linear_classifier(W), X, T, window=(1, 1),
                       stride=(1, 1), fill="blur", blur_sigma=SIGMA,
                       chunk_size=7)
  np.testing.assert_allclose(got, ((X - _blurred(X)) * W[T]).sum(-1),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion",
                                    "rise", "score_cam"])
def test_blur_equals_the_blurred_images_passed_as_an_array(method):
  model, v, x = small_cnn()
  clf = from_flax(model, v, layers=["block2"])
  t = jnp.array([0, 1, 3])
  name = "fill" if method == "occlusion" else "baseline"
  kw = {"integrated_gradients": dict(steps=4),
        "occlusion": dict(window=(4, 4), stride=(4, 4)),
        "rise": dict(key=jax.random.key(5), num_masks=16, cells=3),
        "score_cam": dict(layer="block2")}[method]
  fn = getattr(attr, method)
  blur = fn(clf, x, t, **{name: "blur", "blur_sigma": SIGMA}, **kw)
  array = fn(clf, x, t, **{name: _blurred(x)}, **kw)
  zero = fn(clf, x, t, **{name: 0.0}, **kw)
  np.testing.assert_allclose(blur, array, rtol=1e-5, atol=1e-6)
  assert not np.allclose(blur, zero, atol=1e-4)


@pytest.mark.parametrize("method,name", [("integrated_gradients", "baseline"),
                                         ("occlusion", "fill"),
                                         ("rise", "baseline")])
def test_bad_baselines_name_the_argument(method, name):
  fn = getattr(attr, method)
  kw = {"rise": dict(key=jax.random.key(0), num_masks=4),
        "occlusion": dict(window=(2, 2))}.get(method, {})
  clf = linear_classifier(W)
  with pytest.raises(ValueError, match=f"{name} must be a number, an array "
                                       "or 'blur'; got 'black'"):
    fn(clf, X, T, **{name: "black"}, **kw)
  with pytest.raises(ValueError, match=f"{name} of shape \\(4,\\) does not "
                                       "broadcast"):
    fn(clf, X, T, **{name: jnp.zeros(4)}, **kw)
  with pytest.raises(ValueError, match="blur_sigma must be > 0; got 0"):
    fn(clf, X, T, **{name: "blur", "blur_sigma": 0.0}, **kw)
