"""Properties every attribution method must have (PITFALLS 22 and the brief).

For each method, on a small CNN with H != W inputs: a batch equals per-image
calls; an image's map ignores the other batch items; ``[B, C']`` targets equal
``C'`` single-target calls; jit equals no-jit; the same key gives identical
output.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from tests.attribution.models import small_cnn

KEY = jax.random.key(11)
METHODS = {
    "gradient": (attr.gradient, {}),
    "input_x_gradient": (attr.input_x_gradient, {}),
    "integrated_gradients": (attr.integrated_gradients,
                             {"steps": 5, "chunk_size": 2}),
    "smoothgrad": (attr.smoothgrad, {"key": KEY, "samples": 4,
                                     "chunk_size": 3}),
    "guided_backprop": (attr.guided_backprop, {}),
    "grad_cam": (attr.grad_cam, {"layer": "block2"}),
    "grad_cam_plus_plus": (attr.grad_cam_plus_plus, {"layer": "block2"}),
    "layer_cam": (attr.layer_cam, {"layer": "block1"}),
    "guided_grad_cam": (attr.guided_grad_cam, {"layer": "block2"}),
    "score_cam": (attr.score_cam, {"layer": "block2", "chunk_size": 3}),
    "occlusion": (attr.occlusion, {"window": (4, 4), "stride": (4, 4),
                                   "chunk_size": 6}),
    "rise": (attr.rise, {"key": KEY, "num_masks": 12, "cells": 3,
                         "chunk_size": 5}),
    "lafam": (attr.lafam, {"layer": "block2"}),
    "sloc": (attr.sloc, {"key": KEY, "num_masks": 6, "tune_masks": 4,
                         "steps": 10, "patch_sizes": (3, 5),
                         "chunk_size": 8}),
    "relax": (attr.relax, {"layer": "block2", "key": KEY, "num_masks": 8,
                           "cells": 3, "chunk_size": 3}),
}
LABEL_FREE = {"lafam", "relax"}
TOL = dict(rtol=2e-4, atol=2e-6)


def _assert_close(name, actual, desired):
  """SLOC fits maps to probability differences scaled by C*H*W, and Adam's
  first steps normalise the gradient, so the forward pass's round-off
  (which depends on the batch size on XLA:CPU) reaches the map amplified:
  it is compared to 0.1 % of its largest value instead."""
  if name == "sloc":
    scale = float(np.max(np.abs(desired)))
    np.testing.assert_allclose(actual, desired, rtol=0, atol=1e-3 * scale)
  else:
    np.testing.assert_allclose(actual, desired, **TOL)


@pytest.fixture(scope="module")
def setup():
  model, v, x = small_cnn(shape=(3, 12, 20, 3))
  plain = from_flax(model, v, layers=["block1", "block2"])
  guided = attr.guided_classifier(model, v, layers=["block1", "block2"])
  return plain, guided, x


def _run(name, setup, x, targets, jit=False):
  plain, guided, _ = setup
  method, kwargs = METHODS[name]
  clf = guided if "guided" in name else plain
  f = functools.partial(method, clf, **kwargs)
  return jax.jit(f)(x, targets) if jit else f(x, targets)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batch_items_are_independent_and_equal_single_calls(name, setup):
  x = setup[2]
  t = jnp.array([1, 3, 0])
  full = _run(name, setup, x, t)
  assert full.shape == (3, 12, 20)
  assert bool(jnp.all(jnp.isfinite(full)))
  single = _run(name, setup, x[1:2], t[1:2])
  _assert_close(name, full[1], single[0])
  other = x.at[0].set(-x[0]).at[2].set(x[2] * 3.0)
  _assert_close(name, _run(name, setup, other, t)[1], full[1])


@pytest.mark.parametrize("name", sorted(set(METHODS) - LABEL_FREE))
def test_class_set_targets_equal_single_target_calls(name, setup):
  x = setup[2]
  multi = jnp.array([[0, 2], [3, 1], [1, 1]])
  maps = _run(name, setup, x, multi)
  assert maps.shape == (3, 2, 12, 20)
  for j in range(2):
    _assert_close(name, maps[:, j], _run(name, setup, x, multi[:, j]))
  assert not np.allclose(maps[0, 0], maps[0, 1])   # classes really differ


@pytest.mark.parametrize("name", sorted(METHODS))
def test_jit_equals_no_jit_and_same_key_same_output(name, setup):
  x = setup[2]
  t = jnp.array([2, 0, 1])
  eager = _run(name, setup, x, t)
  _assert_close(name, _run(name, setup, x, t, jit=True), eager)
  np.testing.assert_array_equal(_run(name, setup, x, t), eager)


@pytest.mark.parametrize("name", ["smoothgrad", "rise", "relax", "sloc"])
def test_a_different_key_gives_a_different_map(name, setup):
  plain, guided, x = setup
  method, kwargs = METHODS[name]
  t = jnp.array([2, 0, 1])
  a = method(plain, x, t, **kwargs)
  b = method(plain, x, t, **{**kwargs, "key": jax.random.key(99)})
  assert not np.allclose(a, b)
