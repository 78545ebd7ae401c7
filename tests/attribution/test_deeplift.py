"""DeepLIFT (rescale rule) and DeepLiftShap.

References: closed forms on one ReLU unit and on a linear model,
summation-to-delta, and Captum's ``DeepLift`` / ``DeepLiftShap`` on two
small torch networks (fixtures made by tools/fixtures/make_deeplift.py; no
torch here).
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import from_flax
from lapjax.attribution import relevance as rel
from lapjax.attribution.core import baseline_images
from lapjax.attribution.deeplift import deeplift, deeplift_shap
from lapjax.models import SmallCNN
from lapjax.models.layers import Pool, batch_norm, symmetric_padding
from tests.attribution.test_relevance import (
  TorchResNet,
  _conv,
  _norm,
  resnet_variables,
  torch_state,
)

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "relevance"
PAD1 = symmetric_padding(1)


# --- Closed forms -----------------------------------------------------------

class TwoUnits(nn.Module):
  """``logits = [relu(w . x), -relu(w . x) + max over 2x2 of x_0]``."""
  act: object = nn.relu

  @nn.compact
  def __call__(self, x):
    z = nn.Dense(1, use_bias=False, name="w")(x.reshape(x.shape[0], -1))
    pooled = Pool(2, 2, "max", name="pool")(x[..., :1])[:, 0, 0]
    return jnp.concatenate([self.act(z), -self.act(z) + pooled], axis=-1)


def _two_units(kernel):
  model = TwoUnits()
  v = {"params": {"w": {"kernel": jnp.asarray(kernel)}}}
  return model, rel.relevance_classifier(model, v)


def test_rescale_rule_by_hand():
  """One ReLU unit: the attribution of ``x_i`` is ``w_i (x_i - x0_i)``
  times ``(relu(z) - relu(z0)) / (z - z0)``, not the gradient's 0 or 1."""
  kernel = np.array([[1.0], [-2.0], [0.5], [1.5]], np.float32)
  _, c = _two_units(kernel)
  x = jnp.array([[[[0.2], [0.1]], [[0.3], [0.4]]]])    # z = 0.75
  x0 = jnp.array([[[[-0.5], [0.4]], [[-0.2], [-0.3]]]])  # z0 = -1.85
  z, z0 = 0.75, -1.85
  expected = kernel[:, 0] * (x - x0).reshape(-1) * (z - 0) / (z - z0)
  ours = deeplift(c, x, jnp.array([0]), baseline=x0)
  np.testing.assert_allclose(ours.reshape(-1), expected, rtol=1e-5)
  # The gradient would give w (x - x0): the unit is on at x.
  assert not np.allclose(expected, kernel[:, 0] * (x - x0).reshape(-1))


def test_max_pool_rule_routes_delta_to_the_winner():
  """``Delta max`` goes to x's winner when ``max(x) >= max(x0)``, else to
  x0's winner, divided there by ``x - x0`` (Captum's rule)."""
  _, c = _two_units(np.zeros((4, 1), np.float32))
  x = jnp.array([[[[0.2], [0.9]], [[0.3], [0.4]]]])
  cot = jnp.array([[0.0, 1.0]])
  # max(x) = 0.9 >= max(x0) = 0.5: all of 0.4 at x's winner (0, 1).
  x0 = jnp.array([[[[0.5], [0.1]], [[0.0], [0.2]]]])
  ours = deeplift(c, x, cot, baseline=x0)[0]
  np.testing.assert_allclose(ours, [[0.0, 0.4], [0.0, 0.0]], atol=1e-6)
  # max(x0) = 1.2 > 0.9: -0.3 at x0's winner (1, 0).
  x0 = jnp.array([[[[0.5], [0.1]], [[1.2], [0.2]]]])
  ours = deeplift(c, x, cot, baseline=x0)[0]
  np.testing.assert_allclose(ours, [[0.0, 0.0], [-0.3, 0.0]], atol=1e-6)


class Linear(nn.Module):
  act: object = nn.relu

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


def test_linear_model_is_delta_times_weights():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 2))
  model = Linear()
  v = model.init(jax.random.key(1), x)
  c = rel.relevance_classifier(model, v)
  w = v["params"]["fc"]["kernel"].reshape(3, 4, 2, 3)
  ours = deeplift(c, x, jnp.array([2, 0]), baseline=0.5, channels=None)
  expected = (x - 0.5) * jnp.stack([w[..., 2], w[..., 0]])
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)


# --- Against Captum ---------------------------------------------------------

class CaptumCNN(nn.Module):
  """The fixture's conv-BN-ReLU-conv1x1-maxpool-conv-BN-ReLU-avgpool-linear,
  with an injectable act and Pool modules (what DeepLIFT's rules attach
  to)."""
  act: object = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train)
    x = nn.Conv(4, (3, 3), padding=PAD1, name="conv1")(x)
    x = nn.Conv(5, (1, 1), name="mix")(self.act(norm(name="bn1")(x)))
    x = Pool(2, 2, "max", name="pool1")(x)
    x = nn.Conv(6, (3, 3), padding=PAD1, name="conv2")(x)
    x = Pool(2, 2, "avg", name="pool2")(self.act(norm(name="bn2")(x)))
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch order
    return nn.Dense(3, name="fc")(x)


def _load(name):
  data = np.load(FIXTURES / f"deeplift_{name}.npz")
  s = torch_state(data)
  if name != "cnn":
    return TorchResNet(), resnet_variables(s), data
  params = {"conv1": {"kernel": _conv(s["0.weight"]), "bias": s["0.bias"]},
            "mix": {"kernel": _conv(s["3.weight"]), "bias": s["3.bias"]},
            "conv2": {"kernel": _conv(s["5.weight"]), "bias": s["5.bias"]},
            "fc": {"kernel": s["10.weight"].T, "bias": s["10.bias"]}}
  stats = {}
  params["bn1"], stats["bn1"] = _norm(s, "1")
  params["bn2"], stats["bn2"] = _norm(s, "6")
  return CaptumCNN(), {"params": params, "batch_stats": stats}, data


def _close(ours, ref):
  scale = np.abs(ref).max()
  assert scale > 0
  np.testing.assert_allclose(np.asarray(ours) / scale, ref / scale,
                             atol=1e-4)


@pytest.mark.parametrize("net", ["cnn", "resnet"])
@pytest.mark.parametrize("which", ["zero", "baseline"])
def test_deeplift_equals_captum(net, which):
  model, v, data = _load(net)
  x = data["input"]
  np.testing.assert_allclose(model.apply(v, x), data["logits"], rtol=1e-5,
                             atol=1e-5)
  c = rel.relevance_classifier(model, v)
  baseline = 0.0 if which == "zero" else data["baseline"]
  ours = deeplift(c, x, data["targets"], baseline=baseline, channels=None)
  _close(ours, data[f"deeplift_{which}"])


@pytest.mark.parametrize("net", ["cnn", "resnet"])
def test_deeplift_shap_equals_captum(net):
  model, v, data = _load(net)
  c = rel.relevance_classifier(model, v)
  ours = deeplift_shap(c, data["input"], data["targets"],
                       baselines=data["shap_baselines"], chunk_size=4,
                       channels=None)
  _close(ours, data["deeplift_shap"])


# --- Summation-to-delta and the contract ------------------------------------

@pytest.fixture(scope="module")
def cnn():
  model = SmallCNN(4, widths=(4, 8))
  x = jax.random.uniform(jax.random.key(7), (3, 12, 20, 3))
  v = model.init(jax.random.key(3), x)
  return rel.relevance_classifier(model, v), x


def _target_logits(c, x, targets):
  return c.apply(x)[0][jnp.arange(x.shape[0]), targets]


@pytest.mark.parametrize("baseline", [0.7, "blur", "images"])
def test_summation_to_delta(cnn, baseline):
  """sum A = f(x) - f(x0) (Captum's convergence delta is zero) for
  numbers, images and 'blur' baselines, through ReLUs and max pools."""
  c, x = cnn
  if baseline == "images":
    baseline = jax.random.uniform(jax.random.key(5), x.shape)
  targets = jnp.array([0, 3, 1])
  maps = deeplift(c, x, targets, baseline=baseline, blur_sigma=2.0)
  x0 = baseline_images(x, baseline, 2.0)
  delta = _target_logits(c, x, targets) - _target_logits(c, x0, targets)
  np.testing.assert_allclose(maps.sum((1, 2)), delta, rtol=1e-4,
                             atol=1e-6)
  if isinstance(baseline, jax.Array):
    # The plain gradient times (x - x0) does not sum to it.
    grads = jax.grad(lambda x: _target_logits(c, x, targets).sum())(x)
    assert not np.allclose(((x - x0) * grads).sum((1, 2, 3)), delta,
                           rtol=1e-2)


def test_deeplift_shap_sums_to_delta_of_the_mean_baseline(cnn):
  c, x = cnn
  targets = jnp.array([2, 0, 1])
  baselines = jax.random.uniform(jax.random.key(11), (5, *x.shape[1:]))
  maps = deeplift_shap(c, x, targets, baselines=baselines, chunk_size=6)
  mean_f0 = jnp.stack([_target_logits(c, jnp.broadcast_to(b, x.shape),
                                      targets) for b in baselines]).mean(0)
  np.testing.assert_allclose(maps.sum((1, 2)),
                             _target_logits(c, x, targets) - mean_f0,
                             rtol=1e-4, atol=1e-6)
  # The mean of deeplift over the baselines, whatever the chunking.
  each = jnp.stack([deeplift(c, x, targets,
                             baseline=jnp.broadcast_to(b, x.shape))
                    for b in baselines]).mean(0)
  np.testing.assert_allclose(maps, each, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      deeplift_shap(c, x, targets, baselines=baselines, chunk_size=64),
      maps, rtol=1e-5, atol=1e-7)


def test_drawn_baselines_are_reproducible(cnn):
  c, x = cnn
  targets = jnp.array([2, 0, 1])
  key = jax.random.key(4)
  a = deeplift_shap(c, x, targets, key=key, samples=3)
  np.testing.assert_array_equal(
      a, deeplift_shap(c, x, targets, key=key, samples=3))
  drawn = jax.random.uniform(key, (3, *x.shape[1:]), x.dtype, 0.0, 1.0)
  np.testing.assert_allclose(
      a, deeplift_shap(c, x, targets, baselines=drawn), rtol=1e-6)


def test_batch_items_are_independent(cnn):
  c, x = cnn
  targets = jnp.array([0, 3, 1])
  full = deeplift(c, x, targets, baseline=0.3)
  assert full.shape == (3, 12, 20)
  for i in range(3):
    np.testing.assert_allclose(
        deeplift(c, x[i:i + 1], targets[i:i + 1], baseline=0.3)[0], full[i],
        rtol=1e-4, atol=1e-6)
  other = x.at[0].set(jax.random.uniform(jax.random.key(9), x.shape[1:]))
  np.testing.assert_allclose(deeplift(c, other, targets, baseline=0.3)[1:],
                             full[1:], rtol=1e-5, atol=1e-7)


def test_target_forms_and_jit(cnn):
  c, x = cnn
  multi = jnp.array([[0, 2], [3, 1], [1, 1]])
  maps = deeplift(c, x, multi)
  assert maps.shape == (3, 2, 12, 20)
  single = deeplift(c, x, multi[:, 1])
  np.testing.assert_allclose(maps[:, 1], single, rtol=1e-5, atol=1e-7)
  one_hot = jax.nn.one_hot(multi[:, 1], 4)
  np.testing.assert_allclose(deeplift(c, x, one_hot), single, rtol=1e-6,
                             atol=1e-8)
  per_channel = deeplift(c, x, one_hot, channels=None)
  assert per_channel.shape == (3, 12, 20, 3)
  np.testing.assert_allclose(per_channel.sum(-1), single, rtol=1e-5,
                             atol=1e-7)
  jitted = jax.jit(lambda x, t: deeplift(c, x, t))(x, multi)
  np.testing.assert_allclose(jitted, maps, rtol=1e-5, atol=1e-7)


def test_the_classifier_is_the_plain_model_outside_deeplift(cnn):
  c, x = cnn
  model = SmallCNN(4, widths=(4, 8))
  v = model.init(jax.random.key(3), x)
  np.testing.assert_array_equal(c.apply(x)[0], model.apply(v, x))
  plain = from_flax(model, v, layers=())
  np.testing.assert_allclose(
      jax.grad(lambda x: c.apply(x)[0].sum())(x),
      jax.grad(lambda x: plain.apply(x)[0].sum())(x), rtol=1e-6)


# --- Bad input --------------------------------------------------------------

class NoAct(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="head")(nn.relu(x).mean(axis=(1, 2)))


def test_bad_classifiers_and_arguments_are_refused(cnn):
  c, x = cnn
  t = jnp.array([0, 1, 2])
  model = SmallCNN(4, widths=(4, 8))
  v = model.init(jax.random.key(3), x)
  with pytest.raises(ValueError, match="relevance_classifier"):
    deeplift(from_flax(model, v, layers=()), x, t)
  no_act = rel.relevance_classifier(NoAct(), NoAct().init(
      jax.random.key(0), x))
  with pytest.raises(ValueError, match="no injectable 'act'"):
    deeplift(no_act, x, jnp.array([0, 1, 0]))
  with pytest.raises(ValueError, match="eps must be > 0"):
    deeplift(c, x, t, eps=0.0)
  with pytest.raises(ValueError, match=r"baselines must be \[N, H, W, C\]"):
    deeplift_shap(c, x, t, baselines=jnp.zeros((12, 20, 3)))
  with pytest.raises(ValueError, match="do not broadcast"):
    deeplift_shap(c, x, t, baselines=jnp.zeros((2, 12, 21, 3)))
  with pytest.raises(ValueError, match="key to draw them"):
    deeplift_shap(c, x, t)
  with pytest.raises(ValueError, match="baseline must be a number"):
    deeplift(c, x, t, baseline="black")


def test_summation_to_delta_through_zoo_residual_blocks():
  """The zoo's ResNet-50 blocks (bottlenecks, projection shortcuts, the
  stem's padded 3x3 max pool) at reduced width and depth, random init."""
  from lapjax.models import create_model
  model = create_model("resnet50", num_classes=5, width=8,
                       stage_sizes=(1, 1))
  x = jax.random.uniform(jax.random.key(0), (2, 16, 24, 3))
  v = model.init(jax.random.key(1), x)
  c = rel.relevance_classifier(model, v)
  targets = jnp.array([1, 3])
  x0 = jax.random.uniform(jax.random.key(2), x.shape)
  maps = deeplift(c, x, targets, baseline=x0)
  delta = _target_logits(c, x, targets) - _target_logits(c, x0, targets)
  np.testing.assert_allclose(maps.sum((1, 2)), delta, rtol=1e-4, atol=1e-6)
