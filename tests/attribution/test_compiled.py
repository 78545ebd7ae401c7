"""Eager calls of the methods run one cached, jitted program
(``attribution.compiled``) with the same values and the same input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import Classifier, from_flax
from lapjax import attribution as attr
from tests.attribution.models import small_cnn


@pytest.fixture(scope="module")
def cnn():
  model, v, x = small_cnn()
  return from_flax(model, v, layers=["block1", "block2"]), x


def test_a_repeated_eager_call_is_not_traced_again(cnn):
  clf, x = cnn
  traces = []

  def apply(x, deltas=None):
    traces.append(x.shape)
    return clf.apply(x, deltas)

  counting = Classifier(apply=apply, layers=clf.layers)
  t = jnp.array([0, 1, 3])
  first = attr.integrated_gradients(counting, x, t, steps=4)
  after_first = len(traces)
  second = attr.integrated_gradients(counting, x + 0.5, t, steps=4)
  assert after_first > 0 and len(traces) == after_first
  assert not np.allclose(first, second)
  # New static options compile a new program.
  attr.integrated_gradients(counting, x, t, steps=6)
  assert len(traces) > after_first


@pytest.mark.parametrize("method,kw", [
    ("integrated_gradients", dict(steps=4, baseline=0.2)),
    ("grad_cam", dict(layer="block2")),
    ("rise", dict(key=jax.random.key(3), num_masks=8, cells=3)),
    ("occlusion", dict(window=(4, 4), stride=(4, 4))),
    ("lafam", dict(layer="block1")),
])
def test_eager_equals_op_by_op_and_jit(cnn, method, kw):
  clf, x = cnn
  fn = getattr(attr, method)
  t = jnp.array([2, 0, 1])
  eager = fn(clf, x, t, **kw)
  op_by_op = fn.__wrapped__(clf, x, t, **kw)
  jitted = jax.jit(lambda x, t: fn(clf, x, t, **kw))(x, t)
  np.testing.assert_allclose(eager, op_by_op, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)


def test_array_options_are_arguments_not_constants(cnn):
  clf, x = cnn
  t = jnp.array([2, 0, 1])
  a = attr.integrated_gradients(clf, x, t, steps=3, baseline=jnp.zeros_like(x))
  b = attr.integrated_gradients(clf, x, t, steps=3, baseline=jnp.ones_like(x))
  np.testing.assert_allclose(
      b, attr.integrated_gradients.__wrapped__(clf, x, t, steps=3,
                                               baseline=jnp.ones_like(x)),
      rtol=1e-5, atol=1e-6)
  assert not np.allclose(a, b)


def test_an_unhashable_option_runs_eagerly(cnn):
  clf, x = cnn
  t = jnp.array([2, 0, 1])
  np.testing.assert_allclose(
      attr.occlusion(clf, x, t, window=[4, 4], stride=[4, 4]),
      attr.occlusion(clf, x, t, window=(4, 4), stride=(4, 4)), rtol=1e-5,
      atol=1e-6)


def test_an_array_where_a_number_is_needed_runs_eagerly(cnn):
  clf, x = cnn
  t = jnp.array([2, 0, 1])
  np.testing.assert_allclose(
      attr.integrated_gradients(clf, x, t, steps=jnp.int32(4)),
      attr.integrated_gradients(clf, x, t, steps=4), rtol=1e-5, atol=1e-6)


def test_eager_calls_still_check_their_inputs(cnn):
  clf, x = cnn
  with pytest.raises(ValueError, match="non-finite"):
    attr.gradient(clf, x.at[0, 1, 2, 0].set(jnp.nan), jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match=r"class indices in \[0, 4\); got "
                                       r"values in \[0, 7\]"):
    attr.grad_cam(clf, x, jnp.array([0, 7, 1]), layer="block2")
  with pytest.raises(ValueError, match="unknown layer .block9."):
    attr.grad_cam(clf, x, jnp.array([0, 1, 1]), layer="block9")


def test_inside_transformations_the_method_is_traced_inline(cnn):
  clf, x = cnn
  t = jnp.array([2, 0, 1])
  per_image = jax.vmap(lambda xi, ti: attr.gradient(clf, xi[None],
                                                    ti[None])[0])(x, t)
  np.testing.assert_allclose(per_image, attr.gradient(clf, x, t), rtol=1e-5,
                             atol=1e-6)
