"""The explanation-aware loss (paper 001): in-loss Grad-CAM against
lapjax's Grad-CAM, the loss's closed-form values, gradients of each
differentiable reading, samples without boxes, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import Classifier, from_flax
from lapjax import attribution as attr
from lapjax import explain_loss as E
from tests.attribution.models import small_cnn


@pytest.fixture(scope="module")
def setup():
  model, v, x = small_cnn(shape=(3, 12, 20, 3), num_classes=2)
  return model, v, x


def _clf(model, v):
  return from_flax(model, v, layers=["block2"])


@pytest.mark.parametrize("kind", E.SCORES)
def test_in_loss_heatmap_equals_lapjax_grad_cam(setup, kind):
  """Grad-CAM of a score s(z) is Grad-CAM with the output cotangent
  ds/dz, which lapjax's grad_cam takes as a [B, K] float target."""
  model, v, x = setup
  clf = _clf(model, v)
  h, logits = E.grad_cam_heatmap(clf, x, "block2", kind)
  cot = jax.grad(lambda z: E.explanation_score(z, kind).sum())(logits)
  ref = attr.grad_cam(clf, x, cot, layer="block2", resize=False)
  np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-6)
  assert h.shape == (3, 6, 10)         # block2 of 12 x 20: H != W


def test_scores_have_their_formulas():
  z = jnp.array([[1.0, 3.0], [2.0, -1.0]])
  p = jax.nn.softmax(z)
  expect = {
      "logit_diff": z[:, 1] - z[:, 0], "logit_abs": jnp.abs(z[:, 1] - z[:, 0]),
      "logit_sqr": (z[:, 1] - z[:, 0]) ** 2, "logit": z[:, 1],
      "prob_diff": p[:, 1] - p[:, 0], "prob_abs": jnp.abs(p[:, 1] - p[:, 0]),
      "prob_sqr": (p[:, 1] - p[:, 0]) ** 2}
  for kind, value in expect.items():
    np.testing.assert_allclose(E.explanation_score(z, kind), value, rtol=1e-6)
  s = jax.nn.sigmoid(z)          # one sigmoid per output (BCE-trained)
  np.testing.assert_allclose(
      E.explanation_score(z, "prob_sqr", probabilities="sigmoid"),
      (s[:, 1] - s[:, 0]) ** 2, rtol=1e-6)


@pytest.mark.parametrize("kind", ["diff", "abs", "sqr"])
def test_logit_and_softmax_probability_scores_give_one_normalised_map(
    setup, kind):
  """With two softmax outputs p1 - p0 = tanh((z1 - z0) / 2): Grad-CAM of
  the probability score is the logit score's scaled per sample, which
  min-max normalisation removes. Sigmoid outputs weight the two logits'
  gradients by sigmoid'(z1) and sigmoid'(z0), which differ once the
  logits are apart (here scaled up by 4)."""
  model, v, x = setup
  base = _clf(model, v)

  def apply(x, deltas=None):
    logits, feats = base.apply(x, deltas)
    return 4.0 * logits, feats

  clf = Classifier(apply, base.layers)

  def normalised(score, probabilities="softmax"):
    return E.normalize_minmax(E.grad_cam_heatmap(
        clf, x, "block2", score, probabilities=probabilities)[0])

  logit = normalised(f"logit_{kind}")
  np.testing.assert_allclose(normalised(f"prob_{kind}"), logit, atol=1e-4)
  sigmoid = normalised(f"prob_{kind}", "sigmoid")
  assert float(jnp.abs(sigmoid - logit).max()) > 0.05     # 500x the tie


@pytest.mark.parametrize("reading", E.READINGS)
def test_loss_is_zero_inside_and_one_outside_the_mask(reading):
  h = jnp.zeros((2, 4, 6)).at[:, 1:3, 3:6].set(jnp.arange(6.0).reshape(2, 3)
                                                + 1.0)
  inside = jnp.zeros((2, 4, 6)).at[:, 1:3, 3:6].set(1.0)
  has_box = jnp.array([True, True])
  # Top 25 % = the 6 non-zero cells, all inside the mask.
  kw = dict(fraction=0.25, reading=reading, temperature=1e-3)
  assert float(E.explanation_loss(h, inside, has_box, **kw)) == (
      pytest.approx(0.0, abs=1e-3))
  assert float(E.explanation_loss(h, 1.0 - inside, has_box, **kw)) == (
      pytest.approx(1.0, abs=1e-3))


def test_samples_without_boxes_do_not_contribute():
  h = jax.random.uniform(jax.random.key(0), (3, 4, 6))
  mask = jnp.zeros((3, 4, 6)).at[0, :2].set(1.0)
  only_first = E.explanation_loss(h[:1], mask[:1], jnp.array([True]))
  both = E.explanation_loss(h, mask, jnp.array([True, False, False]))
  np.testing.assert_allclose(both, only_first, rtol=1e-6)
  assert float(E.explanation_loss(h, mask, jnp.zeros(3, bool))) == 0.0


@pytest.mark.parametrize("reading", E.READINGS)
def test_parameter_gradients_are_finite_and_non_zero(setup, reading):
  """Second-order: the outer grad differentiates the inner Grad-CAM."""
  model, v, x = setup
  mask = jnp.zeros((3, 6, 10)).at[:, :, :4].set(1.0)

  def loss(params):
    clf = _clf(model, {**v, "params": params})
    h, _ = E.grad_cam_heatmap(clf, x, "block2", "logit_sqr")
    return E.explanation_loss(h, mask, jnp.array([True, True, False]),
                              reading=reading)

  grads = jax.grad(loss)(v["params"])
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
  again = jax.jit(jax.grad(loss))(v["params"])
  scale = max(float(jnp.abs(g).max()) for g in leaves)
  for a, b in zip(leaves, jax.tree.leaves(again)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)


def test_box_mask_scales_boxes_to_the_heatmap():
  boxes = jnp.array([[[0.0, 0.0, 8.0, 8.0], [8.0, 24.0, 16.0, 32.0]]])
  valid = jnp.array([[True, True]])
  m = E.box_mask(boxes, valid, (4, 8), (16, 32))     # 4 px per cell
  expected = np.zeros((4, 8))
  expected[:2, :2] = 1
  expected[2:, 6:] = 1
  np.testing.assert_array_equal(m[0], expected)
  none = E.box_mask(boxes, jnp.array([[False, False]]), (4, 8), (16, 32))
  assert float(none.sum()) == 0


def test_bad_input_is_refused(setup):
  model, v, x = setup
  with pytest.raises(ValueError, match="unknown layer 'block9'"):
    E.grad_cam_heatmap(_clf(model, v), x, "block9", "logit")
  with pytest.raises(ValueError, match="explanation score must be one of"):
    E.explanation_score(jnp.zeros((1, 2)), "logits")
  with pytest.raises(ValueError, match="probabilities must be one of"):
    E.explanation_score(jnp.zeros((1, 2)), "prob_sqr", probabilities="exp")
  valid = jnp.array([[True]])
  with pytest.raises(ValueError, match="y0 <= y1"):
    E.box_mask(jnp.array([[[5.0, 0.0, 2.0, 4.0]]]), valid, (4, 4), (8, 8))
  with pytest.raises(ValueError, match="must lie inside the image"):
    E.box_mask(jnp.array([[[0.0, 0.0, 9.0, 4.0]]]), valid, (4, 4), (8, 8))
  for bad in (0.0, 1.5, -0.2):
    with pytest.raises(ValueError, match=r"top_k .* \(0, 1\]"):
      E.top_k_mask(jnp.ones((1, 2, 2)), bad)
  with pytest.raises(ValueError, match="reading must be one of"):
    E.top_k_mask(jnp.ones((1, 2, 2)), 0.5, reading="hard")
