"""CAM methods against closed forms and independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax
from tests.attribution.models import linear_head, small_cnn

T = jnp.array([2, 0])


def _cam_parts():
  model, v, clf, x = linear_head()
  acts = clf.apply(x)[1]["features"]                   # [B, h, w, 5]
  w = v["params"]["head"]["kernel"]                    # [5, K]
  return clf, x, acts, w


def test_grad_cam_equals_cam_over_hw_on_a_linear_head():
  clf, x, acts, w = _cam_parts()
  h, wd = acts.shape[1:3]
  cam = jnp.einsum("bhwc,cb->bhw", acts, w[:, T])
  got = attr.grad_cam(clf, x, T, layer="features", resize=False)
  np.testing.assert_allclose(got, jax.nn.relu(cam) / (h * wd), rtol=1e-5,
                             atol=1e-7)
  assert got.shape == (2, 6, 10)   # 'SAME' conv keeps H != W


def test_grad_cam_resizes_to_the_input_by_name():
  model, v, clf, x = linear_head(shape=(2, 8, 12, 3))
  got = attr.grad_cam(clf, x, T, layer="features", resize_method="nearest")
  assert got.shape == (2, 8, 12)
  with pytest.raises(ValueError, match="resize method must be one of"):
    attr.grad_cam(small_cnn_clf(), jnp.ones((1, 12, 20, 3)), jnp.array([0]),
                  layer="block2", resize_method="area")


def small_cnn_clf():
  model, v, _ = small_cnn()
  return from_flax(model, v, layers=["block1", "block2"])


def test_grad_cam_plus_plus_matches_exact_derivatives_of_exp_score():
  """alpha from the 2nd and 3rd derivatives of Y = exp(S), computed exactly.

  The closed form uses g = dS/dA; the exact weights use dY/dA = Y g, so the
  exact map is exp(S) times ours.
  """
  clf, x, acts, _ = _cam_parts()
  x, acts = x[:1], acts[:1]
  target = 2

  def y_of(a):
    logits, _ = clf.apply(x, {"features": a - acts})
    return jnp.exp(logits[0, target])

  a = acts
  d1 = jax.grad(y_of)(a)
  n = a.size
  hess = jax.hessian(lambda v: y_of(v.reshape(a.shape)))(a.reshape(-1))
  d2 = jnp.diag(hess).reshape(a.shape)
  third = jax.jacfwd(jax.hessian(lambda v: y_of(v.reshape(a.shape))))(
      a.reshape(-1))
  d3 = third[jnp.arange(n), jnp.arange(n), jnp.arange(n)].reshape(a.shape)
  s = a.sum(axis=(1, 2), keepdims=True)
  alpha = jnp.where(d2 != 0, d2 / (2 * d2 + s * d3), 0.0)
  weights = (alpha * jax.nn.relu(d1)).sum(axis=(1, 2))
  exact = jax.nn.relu(jnp.einsum("bc,bhwc->bhw", weights, a))
  ours = attr.grad_cam_plus_plus(clf, x, jnp.array([target]),
                                 layer="features", resize=False)
  scale = y_of(a)
  np.testing.assert_allclose(ours * scale, exact, rtol=1e-4, atol=1e-6)
  assert float(exact.max()) > 0


def test_layer_cam_closed_form_on_a_linear_head():
  clf, x, acts, w = _cam_parts()
  h, wd = acts.shape[1:3]
  g = jnp.broadcast_to(w[:, T].T[:, None, None, :] / (h * wd), acts.shape)
  expected = jax.nn.relu((jax.nn.relu(g) * acts).sum(-1))
  got = attr.layer_cam(clf, x, T, layer="features", resize=False)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_lafam_is_the_normalised_channel_mean_upsampled_nearest():
  model, v, _ = small_cnn(shape=(2, 12, 20, 3))
  clf = from_flax(model, v, layers=["block2"])
  x = jax.random.normal(jax.random.key(0), (2, 12, 20, 3))
  mean = np.asarray(clf.apply(x)[1]["block2"]).mean(-1)       # [2, 6, 10]
  lo = mean.min((1, 2), keepdims=True)
  hi = mean.max((1, 2), keepdims=True)
  norm = (mean - lo) / (hi - lo + 1e-8)
  expected = norm.repeat(2, axis=1).repeat(2, axis=2)         # exact 2x
  got = attr.lafam(clf, x, layer="block2")
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert attr.lafam(clf, x, jnp.array([[0, 1, 2]] * 2),
                    layer="block2").shape == (2, 3, 12, 20)


def test_score_cam_matches_a_channel_by_channel_loop():
  model, v, x = small_cnn()
  clf = from_flax(model, v, layers=["block2"])
  t = jnp.array([1, 0, 3])
  got = attr.score_cam(clf, x, t, layer="block2", chunk_size=3,
                       resize=False)
  acts = np.asarray(clf.apply(x)[1]["block2"])
  weights = np.zeros((3, acts.shape[-1]))
  for k in range(acts.shape[-1]):
    up = np.asarray(jax.image.resize(acts[..., k], (3, 12, 20), "bilinear"))
    lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    m = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)
    probs = np.asarray(jax.nn.softmax(clf.apply(x * m[..., None])[0]))
    weights[:, k] = probs[np.arange(3), t]
  expected = np.maximum(np.einsum("bk,bhwk->bhw", weights, acts), 0)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_guided_grad_cam_is_the_product():
  model, v, x = small_cnn()
  guided = attr.guided_classifier(model, v, layers=["block2"])
  t = jnp.array([1, 0, 3])
  got = attr.guided_grad_cam(guided, x, t, layer="block2")
  expected = (attr.guided_backprop(guided, x, t)
              * attr.grad_cam(guided, x, t, layer="block2"))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_unknown_layer_lists_tapped_layers():
  clf = small_cnn_clf()
  with pytest.raises(ValueError, match=r"unknown layer 'block9'.*\['block1', "
                     r"'block2'\]"):
    attr.grad_cam(clf, jnp.ones((1, 12, 20, 3)), jnp.array([0]),
                  layer="block9")
