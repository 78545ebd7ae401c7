"""The standalone LAP predictor of the ImageNet setting (paper 000, D.5.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.metrics import lap_predictor as lp

FIT = {"hidden": 32, "steps": 300}


def _xor(n, seed):
  """2 DC-size features, class = XOR of "feature above its median": no
  linear rule separates the classes, a 2-layer network does."""
  f = np.random.default_rng(seed).uniform(size=(n, 2)).astype(np.float32)
  f *= np.array([30.0, 200.0], np.float32)       # features of unlike scales
  y = ((f[:, 0] > 15) ^ (f[:, 1] > 100)).astype(np.int32)
  return f, y


@pytest.fixture(scope="module")
def xor_fit():
  f, y = _xor(400, 0)
  return lp.fit_standalone_predictor(f, y, num_classes=2,
                                     key=jax.random.key(0), **FIT)


def test_dc_size_features_sum_each_dc_map():
  maps = np.zeros((2, 3, 4, 2), np.float32)
  maps[0, :, :, 0] = 0.5                   # 12 pixels of 0.5
  maps[1, 1, 2, 1] = 0.9
  np.testing.assert_allclose(lp.dc_size_features(maps),
                             [[6.0, 0.0], [0.0, 0.9]], rtol=1e-6)
  with pytest.raises(ValueError, match=r"\[B, H, W, M\]"):
    lp.dc_size_features(np.zeros((2, 3, 4)))


def test_recovers_a_nonlinear_separable_rule(xor_fit):
  predictor, losses = xor_fit
  assert losses.shape == (FIT["steps"],)
  assert float(losses[-1]) < 0.1 * float(losses[0])
  f, y = _xor(400, 1)                          # held-out images
  acc = lp.top_k_accuracy(lp.standalone_logits(predictor, f), y, k=1)
  assert float(acc.mean()) >= 0.95             # chance: 0.5


def test_same_key_same_predictor(xor_fit):
  f, y = _xor(400, 0)
  again, _ = lp.fit_standalone_predictor(f, y, num_classes=2,
                                         key=jax.random.key(0), **FIT)
  jax.tree.map(np.testing.assert_array_equal, again, xor_fit[0])
  other, _ = lp.fit_standalone_predictor(f, y, num_classes=2,
                                         key=jax.random.key(1), **FIT)
  assert not np.array_equal(other.hidden_kernel, again.hidden_kernel)
  # The standardisation is the training set's, untouched by training.
  np.testing.assert_allclose(again.feature_mean, f.mean(0), rtol=1e-5)
  np.testing.assert_allclose(again.feature_scale, f.std(0), rtol=1e-5)


def test_top_k_accuracy_closed_form():
  logits = jnp.array([[3.0, 2.0, 1.0, 0.0],
                      [0.0, 1.0, 1.0, 0.0],       # tie at the top
                      [0.0, 0.0, 0.0, 5.0]])
  t = jnp.array([1, 2, 0])
  np.testing.assert_array_equal(lp.top_k_accuracy(logits, t, k=1),
                                [0, 0, 0])       # tie -> class 1 first
  np.testing.assert_array_equal(lp.top_k_accuracy(logits, t, k=2),
                                [1, 1, 1])       # tie -> class 0 before 2
  with pytest.raises(ValueError, match="k must be"):
    lp.top_k_accuracy(logits, t, k=5)


def test_standalone_evaluation_predictivity_and_compatibility():
  rng = np.random.default_rng(0)
  train = rng.uniform(size=(200, 4)).astype(np.float32) * 50
  test = rng.uniform(size=(200, 4)).astype(np.float32) * 50
  labels = test.argmax(-1)                       # the DC with most area
  model = np.where(np.arange(200) < 100, labels, (labels + 1) % 4)
  r = lp.standalone_evaluation(train, train.argmax(-1), test, labels,
                               model, num_classes=4,
                               key=jax.random.key(0), ks=(1, 3, 5), **FIT)
  assert set(r) == {"predictivity_top1", "compatibility_top1",
                    "predictivity_top3", "compatibility_top3", "final_loss"}
  assert r["predictivity_top1"] >= 0.9
  # The same fit (same key) scored by hand: predictivity against the
  # labels, compatibility against the model, which agrees with the labels
  # on the first half of the images only.
  predictor, _ = lp.fit_standalone_predictor(
      train, train.argmax(-1), num_classes=4, key=jax.random.key(0), **FIT)
  top1 = np.asarray(lp.standalone_logits(predictor, test)).argmax(-1)
  assert r["predictivity_top1"] == pytest.approx(np.mean(top1 == labels))
  assert r["compatibility_top1"] == pytest.approx(np.mean(top1 == model))
  assert r["compatibility_top1"] < r["predictivity_top1"]


def test_bad_inputs_are_refused():
  f, y = _xor(8, 0)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
    lp.fit_standalone_predictor(f, y + 1, num_classes=2,
                                key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"\[N, M\]"):
    lp.fit_standalone_predictor(f[:, 0], y, num_classes=2,
                                key=jax.random.key(0))
  with pytest.raises(ValueError, match="at least 2"):
    lp.fit_standalone_predictor(f[:1], y[:1], num_classes=2,
                                key=jax.random.key(0))
