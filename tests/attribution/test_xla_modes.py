"""Attribution maps as users compute them: with XLA's optimisations on.

The suite's default, ``jax_disable_most_optimizations`` (tests/conftest.py),
returns NaN for vmapped VJPs through a multiply-add followed by a max pool
(docs/xla-noopt-nan.md), which is every trained conv-BatchNorm-ReLU-pool
model under a method with ``[B, C']`` targets. This module runs optimised,
as users run, and checks those maps against per-class ``jax.grad``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from tests.attribution.models import small_cnn

pytestmark = pytest.mark.xla_optimized


def test_class_set_gradients_of_a_trained_like_cnn_are_exact():
  model, v, x = small_cnn(shape=(2, 12, 20, 3))
  # A trained BatchNorm has a non-zero bias: the ReLU no longer zeroes
  # whole pooling windows, and the no-opt program returns NaN.
  v = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.05 if "bias" in jax.tree_util.keystr(path)
      else a, v)
  clf = from_flax(model, v, layers=[])
  class_set = jnp.array([[0, 2], [1, 3]])
  maps = attr.gradient(clf, x, class_set, channels=None)
  assert maps.shape == (2, 2, 12, 20, 3)
  assert bool(jnp.all(jnp.isfinite(maps)))
  # One compiled program for both classes (op by op, every operation of
  # the backward pass would compile with the optimisations on).
  grad = jax.jit(jax.grad(lambda x, cot: (model.apply(v, x) * cot).sum()))
  for j in range(2):
    expected = grad(x, jax.nn.one_hot(class_set[:, j], 4))
    np.testing.assert_allclose(maps[:, j], expected, rtol=1e-5, atol=1e-7)
