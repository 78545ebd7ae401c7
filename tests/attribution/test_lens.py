"""Attribution Lens: hand-computed refinement, class sets, one forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from lapjax.attribution import postprocess
from tests.attribution.models import linear_classifier, small_cnn


def _softmax(v, axis):
  e = np.exp(v - v.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def test_paper_form_by_hand():
  maps = np.array([[[[0.2, -1.0]], [[0.1, 2.0]], [[0.0, 0.5]]]],
                  np.float32)                               # [1, 3, 1, 2]
  soft = np.mean([_softmax(maps * s, 1) for s in (1, 5, 100)], 0)
  expected = maps * soft * (soft > 1 / 3)
  got = attr.lens_refine(jnp.asarray(maps))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  # Pixel 0: class 0 dominates (kept), class 2 is below chance (zeroed).
  assert got[0, 0, 0, 0] > 0 and got[0, 2, 0, 0] == 0


def test_released_form_by_hand():
  maps = np.array([[[[0.2, -1.0]], [[0.1, 2.0]]]], np.float32)
  soft = _softmax(np.abs(maps) * 10, 1)
  expected = maps * soft * (soft - 0.5 > 0.01)
  np.testing.assert_allclose(attr.lens_refine(jnp.asarray(maps),
                                              form="released"),
                             expected, rtol=1e-5, atol=1e-7)


def test_raw_maps_and_per_class_normalised_maps_give_different_lenses():
  """PITFALLS 18: normalising each class's map destroys the comparison."""
  maps = jnp.array([[[[0.0, 1.0, 2.0]], [[0.0, 10.0, 20.0]]]])
  raw = attr.lens_refine(maps)
  normalised = attr.lens_refine(postprocess.normalize_minmax(maps))
  # Raw: class 1 dominates every non-zero pixel; normalised: a tie.
  assert float(raw[0, 0].sum()) == 0.0
  assert not np.allclose(raw, normalised)


def test_lens_uses_one_method_call_with_class_set_targets():
  model, v, x = small_cnn()
  clf = from_flax(model, v, layers=["block2"])
  class_set = jnp.array([[0, 1, 2, 3]] * 3)
  got = attr.attribution_lens(attr.grad_cam, clf, x, class_set,
                              layer="block2")
  maps = attr.grad_cam(clf, x, class_set, layer="block2")
  np.testing.assert_allclose(got, attr.lens_refine(maps), rtol=1e-6)
  target = jnp.array([2, 0, 3])
  one = attr.attribution_lens(attr.grad_cam, clf, x, class_set,
                              target=target, layer="block2")
  np.testing.assert_allclose(one, got[jnp.arange(3), target], rtol=1e-6)


def test_channel_wise_lens_sums_refined_channels():
  w = jax.random.normal(jax.random.key(0), (3, 4, 5, 2))
  x = jax.random.normal(jax.random.key(1), (2, 4, 5, 2))
  clf = linear_classifier(w)
  cs = jnp.array([[0, 1], [2, 1]])
  got = attr.attribution_lens(attr.input_x_gradient, clf, x, cs,
                              form="released", channel_wise=True)
  per_channel = attr.input_x_gradient(clf, x, cs, channels=None)
  expected = attr.lens_refine(jnp.moveaxis(per_channel, -1, 2),
                              form="released").sum(2)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_class_set_builders():
  logits = jnp.array([[0.1, 3.0, -2.0, 1.0], [5.0, 5.0, 0.0, -1.0]])
  np.testing.assert_array_equal(attr.top_k_classes(logits, 2), [[1, 3],
                                                                 [0, 1]])
  np.testing.assert_array_equal(
      attr.top_k_classes(logits, 2, include_lowest=True), [[1, 3, 2],
                                                           [0, 1, 3]])
  np.testing.assert_array_equal(attr.best_vs_worst(logits), [[1, 2], [0, 3]])


def test_target_outside_its_class_set_is_refused():
  model, v, x = small_cnn()
  clf = from_flax(model, v, layers=["block2"])
  with pytest.raises(ValueError, match=r"images \[1\] have targets \[3\] "
                     r"outside \[\[0, 1\]\]"):
    attr.attribution_lens(attr.grad_cam, clf, x, jnp.array([[0, 1]] * 3),
                          target=jnp.array([0, 3, 1]), layer="block2")
  with pytest.raises(ValueError, match="at least 2 classes"):
    attr.lens_refine(jnp.zeros((1, 1, 4, 4)))
