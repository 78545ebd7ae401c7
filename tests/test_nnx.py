"""from_nnx: an NNX CNN against the same network in linen (same weights)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lapjax
from lapjax.adapters import available_nnx_layers

SHAPE = (10, 14, 3)                           # H != W


class NnxBlock(nnx.Module):
  def __init__(self, cin, cout, rngs):
    self.conv = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(cout, epsilon=1e-5, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.block1 = NnxBlock(3, 4, rngs)
    self.blocks = nnx.List([NnxBlock(4, 5, rngs), NnxBlock(5, 6, rngs)])
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = self.block1(x)
    for block in self.blocks:
      x = block(x)
    return self.head(self.drop(x.mean(axis=(1, 2))))


class LinenBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(x)
    return nn.relu(x)


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = LinenBlock(4, name="block1")(x)
    x = LinenBlock(5, name="blocks_0")(x)
    x = LinenBlock(6, name="blocks_1")(x)
    return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


NAMES = {"block1": "block1", "blocks/0": "blocks_0", "blocks/1": "blocks_1"}


@functools.cache
def _models():
  """The NNX net with non-default BatchNorm statistics, and its linen twin.

  Built once (jitted: eager initialisation compiles every initialiser
  separately); tests only read it.
  """
  model = nnx.jit(lambda: NnxNet(nnx.Rngs(0)))()
  r = np.random.default_rng(1)
  blocks = {"block1": model.block1, "blocks/0": model.blocks[0],
            "blocks/1": model.blocks[1]}
  params, stats = {}, {}
  for nnx_name, block in blocks.items():
    n = block.bn.mean.get_value().shape[0]
    block.bn.mean.set_value(jnp.asarray(r.normal(size=n), jnp.float32))
    block.bn.var.set_value(jnp.asarray(r.uniform(0.5, 2, n), jnp.float32))
    block.bn.scale.set_value(jnp.asarray(r.uniform(0.5, 1.5, n), jnp.float32))
    block.bn.bias.set_value(jnp.asarray(r.normal(size=n), jnp.float32))
    block.conv.bias.set_value(jnp.asarray(r.normal(size=n), jnp.float32))
    name = NAMES[nnx_name]
    params[name] = {
        "conv": {"kernel": block.conv.kernel.get_value(),
                 "bias": block.conv.bias.get_value()},
        "bn": {"scale": block.bn.scale.get_value(),
               "bias": block.bn.bias.get_value()}}
    stats[name] = {"bn": {"mean": block.bn.mean.get_value(),
                          "var": block.bn.var.get_value()}}
  params["head"] = {"kernel": model.head.kernel.get_value(),
                    "bias": model.head.bias.get_value()}
  return model, LinenNet(), {"params": params, "batch_stats": stats}


def _x(batch=3, seed=2):
  return jax.random.normal(jax.random.key(seed), (batch, *SHAPE))


def test_logits_features_and_delta_gradients_equal_linen():
  model, linen, variables = _models()
  nnx_clf = lapjax.from_nnx(model, layers=list(NAMES))
  linen_clf = lapjax.from_flax(linen, variables, layers=list(NAMES.values()))
  x = _x()
  logits, feats = jax.jit(nnx_clf.apply)(x)
  want_logits, want_feats = jax.jit(linen_clf.apply)(x)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
  for nnx_name, linen_name in NAMES.items():
    np.testing.assert_allclose(feats[nnx_name], want_feats[linen_name],
                               rtol=1e-5, atol=1e-5)

  def grads(clf, names):
    def score(deltas):
      return clf.apply(x, deltas)[0][:, 1].sum()
    zeros = {n: jnp.zeros_like(feats[k]) for n, k in zip(names, NAMES)}
    return jax.jit(jax.grad(score))(zeros)

  g_nnx = grads(nnx_clf, list(NAMES))
  g_linen = grads(linen_clf, list(NAMES.values()))
  for nnx_name, linen_name in NAMES.items():
    assert float(jnp.abs(g_nnx[nnx_name]).max()) > 0
    np.testing.assert_allclose(g_nnx[nnx_name], g_linen[linen_name],
                               rtol=1e-5, atol=1e-6)


def test_deltas_perturb_like_linen():
  model, linen, variables = _models()
  nnx_clf = lapjax.from_nnx(model, layers=["blocks/0"])
  linen_clf = lapjax.from_flax(linen, variables, layers=["blocks_0"])
  x = _x()
  delta = jax.random.normal(jax.random.key(5), (3, *SHAPE[:2], 5))
  got, feats = jax.jit(nnx_clf.apply)(x, {"blocks/0": delta})
  want, want_feats = jax.jit(linen_clf.apply)(x, {"blocks_0": delta})
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats["blocks/0"], want_feats["blocks_0"],
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(got, jax.jit(nnx_clf.apply)(x)[0])


def test_batch_equals_single_in_inference_mode():
  model, _, _ = _models()
  clf = lapjax.from_nnx(model, layers=["block1", "blocks/1"])
  apply = jax.jit(clf.apply)
  x = _x(batch=4)
  logits, feats = apply(x)
  # Running statistics and no dropout: each image alone gives the same.
  for i in range(4):
    single, single_feats = apply(x[i:i + 1])
    np.testing.assert_allclose(single[0], logits[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single_feats["blocks/1"][0],
                               feats["blocks/1"][i], rtol=1e-5, atol=1e-6)
  # The user's module is left in its own (training) mode and unwrapped.
  assert model.block1.bn.use_running_average is False
  assert model.drop.deterministic is False
  assert type(model.blocks[0]) is NnxBlock


def test_available_layers_and_default_layers():
  model, _, _ = _models()
  avail = available_nnx_layers(model, SHAPE)
  assert list(avail)[:3] == ["block1/conv", "block1/bn", "block1"]
  assert avail["blocks/1"] == (1, *SHAPE[:2], 6)
  assert avail["head"] == (1, 3)
  clf = lapjax.from_nnx(model, input_shape=SHAPE)
  assert clf.layers == ("block1",)        # direct children with 4-D outputs
  clf = lapjax.from_nnx(model, layers=["blocks/1", "block1/conv"],
                        input_shape=SHAPE)
  assert clf.layers == ("block1/conv", "blocks/1")     # shallow to deep


def test_unknown_layers_are_listed():
  model, _, _ = _models()
  with pytest.raises(ValueError, match=r"unknown layer\(s\) \['block3'\].*"
                                       r"blocks/0 \[1, 10, 14, 5\]"):
    lapjax.from_nnx(model, layers=["block3"], input_shape=SHAPE)
  clf = lapjax.from_nnx(model, layers=["block3"])
  with pytest.raises(ValueError, match=r"unknown layer.*block1/bn"):
    jax.eval_shape(clf.apply, _x())
  with pytest.raises(ValueError, match="needs layers"):
    lapjax.from_nnx(model)


def test_bad_deltas():
  model, _, _ = _models()
  clf = lapjax.from_nnx(model, layers=["block1"])
  with pytest.raises(ValueError, match="does not tap"):
    clf.apply(_x(), {"blocks/0": jnp.zeros((3, *SHAPE[:2], 5))})
  with pytest.raises(ValueError, match=r"deltas\['block1'\] has shape"):
    clf.apply(_x(), {"block1": jnp.zeros((3, 2, 2, 4))})


class Twice(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 3, (1, 1), rngs=rngs)
    self.head = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    return self.head(self.conv(self.conv(x)).mean(axis=(1, 2)))


def test_a_layer_called_twice_cannot_be_tapped():
  model = nnx.jit(lambda: Twice(nnx.Rngs(0)))()
  clf = lapjax.from_nnx(model, layers=["conv"])
  with pytest.raises(ValueError, match="more than once"):
    jax.eval_shape(clf.apply, _x())


def test_grad_cam_runs_on_an_nnx_model():
  model, linen, variables = _models()
  x = _x()
  targets = jnp.array([0, 1, 2])
  got = jax.jit(functools.partial(
      lapjax.attribution.grad_cam, lapjax.from_nnx(model, layers=["blocks/1"]),
      layer="blocks/1"))(x, targets)
  want = jax.jit(functools.partial(
      lapjax.attribution.grad_cam,
      lapjax.from_flax(linen, variables, layers=["blocks_1"]),
      layer="blocks_1"))(x, targets)
  assert got.shape == (3, *SHAPE[:2])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_plain_function_route():
  """The docs' Equinox adapter pattern, with plain JAX parameters: a
  per-image channels-first network vmapped, taps moved channels-last."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  w1 = jax.random.normal(k1, (4, 3, 3, 3)) * 0.3      # OIHW, as Equinox
  w2 = jax.random.normal(k2, (5, 4, 3, 3)) * 0.3
  head = jax.random.normal(k3, (3, 5))
  layers = ("conv1", "conv2")

  def conv(w, h):                                       # h [C, H, W]
    return jax.lax.conv_general_dilated(h[None], w, (1, 1), "SAME")[0]

  def one_image(image, deltas):
    features = {}
    h = jnp.moveaxis(image, -1, 0)
    for name, w in zip(layers, (w1, w2)):
      f = jnp.moveaxis(jax.nn.relu(conv(w, h)), 0, -1)
      if name in deltas:
        f = f + deltas[name]
      features[name] = f
      h = jnp.moveaxis(f, -1, 0)
    return head @ h.mean(axis=(1, 2)), features

  def apply(x, deltas=None):
    return jax.vmap(one_image)(x, dict(deltas or {}))

  clf = lapjax.Classifier(apply=jax.jit(apply), layers=layers)
  x = _x()
  logits, feats = clf.apply(x)
  assert logits.shape == (3, 3) and feats["conv2"].shape == (3, *SHAPE[:2],
                                                              5)
  # Grad-CAM with a global-average-pool and linear head is CAM / (h * w).
  targets = jnp.array([0, 2, 1])
  got = jax.jit(functools.partial(lapjax.attribution.grad_cam, clf,
                                  layer="conv2", resize=False))(x, targets)
  cam = jnp.einsum("bhwc,bc->bhw", feats["conv2"], head[targets])
  np.testing.assert_allclose(got, jax.nn.relu(cam) / (SHAPE[0] * SHAPE[1]),
                             rtol=1e-5, atol=1e-6)
