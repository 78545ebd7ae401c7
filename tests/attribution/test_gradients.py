"""Gradient methods against closed forms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from lapjax.models import create_model
from tests.attribution.models import linear_classifier, small_cnn

W = jax.random.normal(jax.random.key(0), (3, 5, 7, 2))
X = jax.random.normal(jax.random.key(1), (4, 5, 7, 2))
T = jnp.array([0, 2, 1, 2])


def test_gradient_and_input_x_gradient_on_a_linear_model():
  clf = linear_classifier(W)
  np.testing.assert_allclose(attr.gradient(clf, X, T), W[T].sum(-1),
                             rtol=1e-5)
  np.testing.assert_allclose(attr.input_x_gradient(clf, X, T),
                             (X * W[T]).sum(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attr.gradient(clf, X, T, channels=None), W[T],
                             rtol=1e-5)
  np.testing.assert_allclose(attr.gradient(clf, X, T, channels="max_abs"),
                             jnp.abs(W[T]).max(-1), rtol=1e-5)


def test_float_targets_are_output_cotangents():
  clf = linear_classifier(W)
  cot = jnp.array([[1.0, -2.0, 0.5]] * 4)
  expected = jnp.einsum("k,khwc->hwc", cot[0], W).sum(-1)
  np.testing.assert_allclose(attr.gradient(clf, X, cot),
                             jnp.broadcast_to(expected, (4, 5, 7)),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gauss_legendre"])
def test_integrated_gradients_is_exact_on_a_linear_model(method):
  clf = linear_classifier(W)
  base = 0.3
  ig = attr.integrated_gradients(clf, X, T, baseline=base, steps=3,
                                 method=method, chunk_size=2)
  np.testing.assert_allclose(ig, ((X - base) * W[T]).sum(-1), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gauss_legendre"])
def test_integrated_gradients_completeness_error_shrinks_with_steps(method):
  """On a smooth (softplus) CNN, so both rules converge with steps."""
  model, v, x = small_cnn()
  model = model.clone(act=jax.nn.softplus)
  clf = from_flax(model, v, layers=[])
  t = jnp.array([0, 1, 3])
  logits = clf.apply(x)[0]
  gap = (jnp.take_along_axis(logits, t[:, None], 1)
         - jnp.take_along_axis(clf.apply(jnp.zeros_like(x))[0], t[:, None],
                               1))[:, 0]
  errors = []
  for steps in (2, 8, 64) if method == "riemann_trapezoid" else (1, 2, 4):
    ig = attr.integrated_gradients(clf, x, t, steps=steps, method=method,
                                   chunk_size=16)
    errors.append(float(jnp.abs(ig.sum((1, 2)) - gap).max()))
  assert errors[2] < errors[1] < errors[0]
  assert errors[2] < 0.02 * float(jnp.abs(gap).max())


def test_smoothgrad_of_a_linear_model_is_its_gradient():
  clf = linear_classifier(W)
  sg = attr.smoothgrad(clf, X, T, key=jax.random.key(0), samples=7,
                       chunk_size=3)
  np.testing.assert_allclose(sg, W[T].sum(-1), rtol=1e-4, atol=1e-5)


def test_smoothgrad_does_not_depend_on_chunk_size():
  model, v, x = small_cnn()
  clf = from_flax(model, v, layers=[])
  t = jnp.array([0, 1, 3])
  a = attr.smoothgrad(clf, x, t, key=jax.random.key(4), samples=6,
                      chunk_size=4)
  b = attr.smoothgrad(clf, x, t, key=jax.random.key(4), samples=6,
                      chunk_size=6)
  c = attr.smoothgrad(clf, x, t, key=jax.random.key(5), samples=6)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(a, c)


def test_guided_relu_backward_passes_only_positive_signal():
  x = jnp.array([-1.0, -0.5, 0.5, 1.0, 2.0])
  g = jnp.array([1.0, -1.0, -1.0, 2.0, -3.0])
  _, vjp = jax.vjp(attr.guided_relu, x)
  np.testing.assert_array_equal(vjp(g)[0], [0, 0, 0, 2, 0])


def test_guided_backprop_replaces_every_relu_and_differs_from_gradient():
  model, v, x = small_cnn()
  guided = attr.guided_classifier(model, v, layers=[])
  plain = from_flax(model, v, layers=[])
  t = jnp.array([0, 1, 3])
  gbp = attr.guided_backprop(guided, x, t, channels=None)
  grad = attr.gradient(plain, x, t, channels=None)
  assert not np.allclose(gbp, grad, atol=1e-4)
  # Both are exact VJPs of the same forward pass.
  np.testing.assert_allclose(guided.apply(x)[0], plain.apply(x)[0])
  # Every activation of a ResNet (functional ones in residual adds too).
  calls = []
  resnet = create_model("resnet18", num_classes=2, small_inputs=True,
                        width=4, act=lambda y: calls.append(1) or
                        attr.guided_relu(y))
  rv = resnet.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  calls.clear()
  resnet.apply(rv, jnp.zeros((1, 8, 8, 3)))
  assert len(calls) == 17


def test_guided_backprop_refuses_plain_models():
  model, v, x = small_cnn()
  plain = from_flax(model, v, layers=[])
  with pytest.raises(ValueError, match="no guided_relu activations"):
    attr.guided_backprop(plain, x, jnp.array([0, 1, 2]))

  class Fixed(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(nn.relu(x).mean((1, 2)))

  fv = Fixed().init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="no injectable 'act'"):
    attr.guided_classifier(Fixed(), fv, layers=[])


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": 1}, "steps must be >= 2 for the trapezoid"),
    ({"chunk_size": 0}, "chunk_size must be >= 1"),
    ({"method": "simpson"}, "method must be"),
])
def test_integrated_gradients_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    attr.integrated_gradients(linear_classifier(W), X, T, **kwargs)


@pytest.mark.parametrize("targets, match", [
    (jnp.array([0, 1]), r"\[B\] or \[B, C'\] with B = 4"),
    (jnp.array([0, 1, 2, 3]), r"class indices in \[0, 3\).*\[0, 3\]"),
    (jnp.array([0, -1, 2, 1]), r"class indices in \[0, 3\)"),
    (jnp.ones((4, 2)), r"float targets are output cotangents \[B, K\]"),
])
def test_bad_targets(targets, match):
  with pytest.raises(ValueError, match=match):
    attr.gradient(linear_classifier(W), X, targets)


def test_non_finite_images_are_refused():
  with pytest.raises(ValueError, match="1 non-finite values"):
    attr.gradient(linear_classifier(W), X.at[0, 0, 0, 0].set(jnp.nan), T)
