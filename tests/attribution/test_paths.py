"""Guided IG against PAIR saliency and closed forms; DIX against closed
forms; both against the standard contract's properties."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import Classifier, from_flax
from lapjax.attribution.paths import dix, guided_ig
from tests.attribution.models import Identity, linear_classifier, small_cnn

FIXTURE = (pathlib.Path(__file__).resolve().parents[1] / "fixtures"
           / "paths" / "guided_ig.npz")
W = jax.random.normal(jax.random.key(0), (3, 5, 7, 2))
X = jax.random.normal(jax.random.key(1), (4, 5, 7, 2))
T = jnp.array([0, 2, 1, 2])


@pytest.fixture(scope="module")
def pair():
  return dict(np.load(FIXTURE))


def mlp_classifier(f) -> Classifier:
  """The fixture's ``W2 tanh(W1 x + b1) + b2`` (NHWC-flattened ``x``)."""
  def apply(x, deltas=None):
    del deltas
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ f["mlp/w1"] + f["mlp/b1"])
    return h @ f["mlp/w2"] + f["mlp/b2"], {}
  return Classifier(apply=apply, layers=())


def tanh_classifier(v) -> Classifier:
  """``f_k(x) = sum_i v[k, i] tanh(x_i)``."""
  def apply(x, deltas=None):
    del deltas
    return jnp.tanh(x.reshape(x.shape[0], -1)) @ v.T, {}
  return Classifier(apply=apply, layers=())


def _options(f, name):
  return dict(steps=int(f[f"{name}/steps"]),
              fraction=float(f[f"{name}/fraction"]),
              max_dist=float(f[f"{name}/max_dist"]))


def _assert_close_to(actual, reference, rtol=1e-4):
  """Within ``rtol`` of the reference's largest magnitude, elementwise."""
  np.testing.assert_allclose(actual, reference, rtol=rtol,
                             atol=rtol * np.abs(reference).max())


# --- Guided IG ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp_default", "mlp_unbounded",
                                  "mlp_straight", "mlp_array_baseline"])
def test_guided_ig_matches_pair_saliency(pair, name):
  baseline = (0.0 if name in ("mlp_default", "mlp_unbounded")
              else pair["mlp/baseline"])
  got = guided_ig(mlp_classifier(pair), pair["mlp/input"],
                  pair["mlp/targets"], baseline=baseline, channels=None,
                  **_options(pair, name))
  _assert_close_to(got, pair[f"{name}/attr"])


def test_guided_ig_moves_tied_features_together_as_pair_does(pair):
  """Tied ``|gradient|`` at the quantile: every tied feature is selected
  (a strict k-smallest selection differs from PAIR by 6e-3 of the largest
  value on this fixture)."""
  got = guided_ig(tanh_classifier(pair["ties/v"]), pair["ties/input"],
                  pair["ties/targets"], baseline=pair["ties/baseline"],
                  channels=None, **_options(pair, "ties"))
  _assert_close_to(got, pair["ties/attr"])


def test_guided_ig_defaults_are_pairs(pair):
  got = guided_ig(mlp_classifier(pair), pair["mlp/input"],
                  pair["mlp/targets"], channels=None)
  _assert_close_to(got, pair["mlp_default/attr"])


@pytest.mark.parametrize("max_dist", [0.0, 0.02, 1.0])
def test_guided_ig_of_a_linear_model_is_integrated_gradients(max_dist):
  """Constant gradient: every path from x' to x gives (x - x') * w."""
  clf = linear_classifier(W)
  got = guided_ig(clf, X, T, baseline=0.3, steps=10, fraction=0.1,
                  max_dist=max_dist, chunk_size=3)
  np.testing.assert_allclose(got, ((X - 0.3) * W[T]).sum(-1), rtol=1e-4,
                             atol=1e-5)


def test_guided_ig_with_max_dist_zero_is_left_riemann_ig(pair):
  """The straight path, one gradient per step at its start."""
  clf = mlp_classifier(pair)
  x, t = jnp.asarray(pair["mlp/input"]), pair["mlp/targets"]
  base = jnp.asarray(pair["mlp/baseline"])
  steps = 12
  score = lambda z: jnp.take_along_axis(  # noqa: E731
      clf.apply(z)[0], jnp.asarray(t)[:, None], 1).sum()
  points = [base + s / steps * (x - base) for s in range(steps)]
  mean_grad = sum(jax.grad(score)(p) for p in points) / steps
  got = guided_ig(clf, x, t, baseline=base, steps=steps, max_dist=0.0,
                  channels=None)
  _assert_close_to(got, (x - base) * mean_grad)


def test_guided_ig_completeness():
  """Straight path (max_dist=0): a left Riemann sum, error O(1 / steps).
  Guided paths move a few features far within one step, each with the
  gradient at the step's start (PAIR's scheme), so their error levels off
  (7.7 % of the gap here at 64 and at 256 steps with max_dist=0.02,
  0.4 % and 0.1 % on the straight path)."""
  model, v, x = small_cnn()
  clf = from_flax(model.clone(act=jax.nn.softplus), v, layers=[])
  t = jnp.array([0, 1, 3])
  pick = lambda z: jnp.take_along_axis(  # noqa: E731
      clf.apply(z)[0], t[:, None], 1)[:, 0]
  gap = pick(x) - pick(jnp.zeros_like(x))

  def error(**options):
    return float(jnp.abs(guided_ig(clf, x, t, **options).sum((1, 2))
                         - gap).max())

  straight = [error(steps=s, max_dist=0.0) for s in (8, 32)]
  assert straight[1] < straight[0] / 3
  assert straight[1] < 0.04 * float(jnp.abs(gap).max())
  assert error(steps=32) < 0.1 * float(jnp.abs(gap).max())


def test_guided_ig_ends_where_float32_rounding_leaves_a_distance():
  """Large inputs: ``x' + (x - x') * 1`` is not ``x`` in float32, so the
  last step's L1 distance stays far above PAIR's 1e-9 and no feature is
  left to move; PAIR's loop would never end, ours ends the step."""
  x = np.asarray(jax.random.uniform(jax.random.key(3), (4, 5, 7, 2),
                                    minval=-900, maxval=-100))
  base = np.full(x.shape, 37.3, np.float32)
  assert np.any(base + (x - base) * np.float32(1) != x)
  got = guided_ig(linear_classifier(W), x, T, baseline=base, steps=5)
  np.testing.assert_allclose(got, ((x - base) * W[T]).sum(-1), rtol=1e-4,
                             atol=1e-4 * np.abs(x * W[T]).sum(-1).max())


def test_guided_ig_contract_properties():
  model, v, x = small_cnn(shape=(3, 6, 10, 3))      # H != W
  clf = from_flax(model, v, layers=[])
  t = jnp.array([0, 1, 3])
  options = dict(steps=6, fraction=0.2, max_dist=0.1, baseline=0.1)
  full = guided_ig(clf, x, t, **options)
  assert full.shape == (3, 6, 10)
  np.testing.assert_array_equal(full, guided_ig(clf, x, t, **options))
  # Batch vs single; other items do not matter.
  single = guided_ig(clf, x[1:2], t[1:2], **options)
  np.testing.assert_allclose(full[1:2], single, rtol=1e-5, atol=1e-6)
  other = x.at[0].set(-x[0]).at[2].set(x[2] * 3)
  np.testing.assert_allclose(guided_ig(clf, other, t, **options)[1],
                             full[1], rtol=1e-5, atol=1e-6)
  # Chunked gradients, jit.
  np.testing.assert_allclose(guided_ig(clf, x, t, chunk_size=2, **options),
                             full, rtol=1e-5, atol=1e-6)
  jitted = jax.jit(lambda x, t: guided_ig(clf, x, t, **options))(x, t)
  np.testing.assert_allclose(jitted, full, rtol=1e-5, atol=1e-6)
  # [B, C'] targets: one path per class, each equal to its [B] column.
  multi = guided_ig(clf, x, jnp.stack([t, (t + 2) % 4], 1), **options)
  assert multi.shape == (3, 2, 6, 10)
  np.testing.assert_allclose(multi[:, 0], full, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      multi[:, 1], guided_ig(clf, x, (t + 2) % 4, **options), rtol=1e-5,
      atol=1e-6)


def test_guided_ig_of_the_baseline_itself_is_zero():
  model, v, x = small_cnn()
  clf = from_flax(model, v, layers=[])
  got = guided_ig(clf, x, jnp.array([0, 1, 2]), baseline=x, steps=3)
  np.testing.assert_array_equal(got, np.zeros(x.shape[:3]))


@pytest.mark.parametrize("options, message", [
    (dict(steps=0), "steps must be >= 1"),
    (dict(fraction=0.0), r"fraction must be in \(0, 1\]"),
    (dict(fraction=1.5), r"fraction must be in \(0, 1\]"),
    (dict(max_dist=-0.1), r"max_dist must be in \[0, 1\]"),
    (dict(max_dist=1.5), r"max_dist must be in \[0, 1\]"),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
    (dict(baseline="black"), "baseline must be a number"),
])
def test_guided_ig_bad_options(options, message):
  with pytest.raises(ValueError, match=message):
    guided_ig(linear_classifier(W), X, T, **options)


# --- DIX ---------------------------------------------------------------------

class AffineTap(nn.Module):
  """conv with bias ('features', affine in x) -> optional ReLU -> GAP ->
  dense: the logits are linear in the tapped activations."""
  relu: bool = False

  @nn.compact
  def __call__(self, x):
    a = Identity(name="features")(nn.Conv(4, (3, 3), name="conv")(x))
    a = nn.relu(a) if self.relu else a
    return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))


class ReluTap(nn.Module):
  """conv -> ReLU -> 'features' -> GAP -> dense (activations not affine)."""

  @nn.compact
  def __call__(self, x):
    a = Identity(name="features")(nn.relu(nn.Conv(4, (3, 3), name="conv")(x)))
    return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))


def _tap_model(module, shape=(2, 6, 10, 3)):
  x = jax.random.uniform(jax.random.key(5), shape)
  v = module.init(jax.random.key(6), x)
  return module, v, from_flax(module, v, layers=["features"]), x


def _features(module, v, x):
  return module.apply(v, x, capture_intermediates=lambda m, _: m.name ==
                      "features")[1]["intermediates"]["features"][
                          "__call__"][0]


@pytest.mark.parametrize("steps", [2, 7])
def test_dix_closed_form_on_activations_affine_in_x(steps):
  """d logit_k / d A = W[:, k] / (h w) and A(x_a) affine in a: the
  trapezoid rule is exact, DIX = sum_c W[c, k] (A(x) + A(x'))_c / 2 / hw."""
  module, v, clf, x = _tap_model(AffineTap())
  t = jnp.array([2, 0])
  base = 0.2
  a_x = _features(module, v, x)
  a_b = _features(module, v, jnp.full_like(x, base))
  w = v["params"]["head"]["kernel"][:, t].T           # [B, c]
  hw = a_x.shape[1] * a_x.shape[2]
  expected = jnp.einsum("bhwc,bc->bhw", (a_x + a_b) / 2, w) / hw
  got = dix(clf, x, t, layer="features", baseline=base, steps=steps,
            resize=False, chunk_size=3)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("integrand_relu", [False, True])
def test_dix_trapezoid_of_activations_times_constant_gradients(
    integrand_relu):
  """ReLU activations: DIX is the trapezoid sum over the path of
  A(x_a) * W / hw (forward passes only), rectified when asked."""
  module, v, clf, x = _tap_model(ReluTap())
  t = jnp.array([1, 2])
  steps = 5
  w = v["params"]["head"]["kernel"][:, t].T
  alphas = np.linspace(0, 1, steps)
  weights = np.full(steps, 1 / (steps - 1))
  weights[[0, -1]] /= 2
  expected = 0
  for alpha, weight in zip(alphas, weights):
    a = _features(module, v, alpha * x)
    product = a * w[:, None, None, :] / (a.shape[1] * a.shape[2])
    product = jax.nn.relu(product) if integrand_relu else product
    expected = expected + weight * product.sum(-1)
  got = dix(clf, x, t, layer="features", steps=steps, resize=False,
            integrand_relu=integrand_relu)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  if not integrand_relu:
    assert float(got.min()) < 0            # signed: no hidden ReLU


def test_dix_contract_properties():
  model, v, x = small_cnn(shape=(3, 12, 20, 3))     # H != W
  clf = from_flax(model, v, layers=["block2"])
  t = jnp.array([0, 1, 3])
  options = dict(layer="block2", steps=4)
  full = dix(clf, x, t, **options)
  assert full.shape == (3, 12, 20)
  np.testing.assert_array_equal(full, dix(clf, x, t, **options))
  native = dix(clf, x, t, resize=False, **options)
  assert native.shape == (3, 6, 10)
  single = dix(clf, x[2:], t[2:], **options)
  np.testing.assert_allclose(full[2:], single, rtol=1e-5, atol=1e-6)
  other = x.at[0].set(x[1]).at[1].set(-x[0])
  np.testing.assert_allclose(dix(clf, other, t, **options)[2], full[2],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dix(clf, x, t, chunk_size=3, **options), full,
                             rtol=1e-5, atol=1e-6)
  jitted = jax.jit(lambda x, t: dix(clf, x, t, **options))(x, t)
  np.testing.assert_allclose(jitted, full, rtol=1e-5, atol=1e-6)
  multi = dix(clf, x, jnp.stack([t, (t + 1) % 4], 1), **options)
  assert multi.shape == (3, 2, 12, 20)
  np.testing.assert_allclose(multi[:, 0], full, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(multi[:, 1], dix(clf, x, (t + 1) % 4,
                                              **options),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    (dict(layer="features", steps=0), "steps must be >= 1"),
    (dict(layer="features", steps=1), "steps must be >= 2"),
    (dict(layer="features", chunk_size=0), "chunk_size must be >= 1"),
    (dict(layer="nope"), "unknown layer 'nope'"),
    (dict(layer="global_pool"), "must be a spatial feature map"),
])
def test_dix_bad_options(options, message):
  module, v, _, x = _tap_model(AffineTap())
  model, sv, sx = small_cnn()
  clf = (from_flax(model, sv, layers=["global_pool"])
         if options["layer"] == "global_pool"
         else from_flax(module, v, layers=["features"]))
  with pytest.raises(ValueError, match=message):
    dix(clf, sx if options["layer"] == "global_pool" else x,
        jnp.array([0, 1, 2]) if options["layer"] == "global_pool"
        else jnp.array([0, 1]), **options)
