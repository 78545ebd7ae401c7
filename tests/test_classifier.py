"""from_flax: taps, perturbations (deltas), inference mode, input checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lapjax import Classifier, from_flax
from lapjax.adapters import from_nnx
from lapjax.classifier import apply_tapped
from lapjax.models import SmallCNN
from lapjax.models.cnn import _Block
from lapjax.models.layers import GlobalAvgPool, Pool, batch_norm
from lapjax.tokens import TokenLayout


@pytest.fixture(scope="module")
def cnn():
  model = SmallCNN(4, widths=(4, 8, 8))
  x = jax.random.uniform(jax.random.key(1), (3, 12, 20, 3))
  variables = model.init(jax.random.key(0), x)
  # Non-trivial running statistics, so inference mode is distinguishable.
  stats = variables["batch_stats"]
  stats = jax.tree.map(lambda s: s, stats)
  for block in ("block1", "block2", "block3"):
    bn = stats[block]["unit0"]["norm"]
    bn["mean"] = bn["mean"] - 0.05
    bn["var"] = bn["var"] * 0.5
  variables = {"params": variables["params"], "batch_stats": stats}
  return model, variables, x


def test_logits_equal_model_apply_in_inference_mode(cnn):
  model, variables, x = cnn
  clf = from_flax(model, variables, input_shape=(12, 20, 3))
  logits, feats = clf.apply(x)
  np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-6)
  assert clf.layers == ("block1", "pool1", "block2", "pool2", "block3")
  assert feats["block2"].shape == (3, 6, 10, 8)


def test_delta_gradient_equals_gradient_of_the_split_network(cnn):
  """d logit / d deltas['block2'] == d rest(a) / d a, split by hand."""
  model, variables, x = cnn
  clf = from_flax(model, variables, layers=["block2"])
  p, s = variables["params"], variables["batch_stats"]
  act = model.act
  norm = batch_norm(False)

  def front(x):   # block1 -> pool1 -> block2
    h = _Block(4, 1, norm, act).apply({"params": p["block1"],
                                       "batch_stats": s["block1"]}, x)
    h = Pool().apply({}, h)
    return _Block(8, 1, norm, act).apply({"params": p["block2"],
                                          "batch_stats": s["block2"]}, h)

  def rest(a):    # pool2 -> block3 -> global pool -> head
    h = Pool().apply({}, a)
    h = _Block(8, 1, norm, act).apply({"params": p["block3"],
                                       "batch_stats": s["block3"]}, h)
    h = GlobalAvgPool().apply({}, h)
    return nn.Dense(4).apply({"params": p["head"]}, h)

  a = front(x)
  target = jnp.array([0, 3, 1])
  expected = jax.grad(lambda a: jnp.sum(
      jnp.take_along_axis(rest(a), target[:, None], 1)))(a)
  np.testing.assert_allclose(rest(a), clf.apply(x)[0], rtol=1e-5, atol=1e-6)

  def score(delta):
    logits, _ = clf.apply(x, {"block2": delta})
    return jnp.sum(jnp.take_along_axis(logits, target[:, None], 1))

  got = jax.grad(score)(jnp.zeros_like(a))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  assert np.abs(got).max() > 0


class UserNet(nn.Module):
  """A user's module written without lapjax in mind (auto-named layers)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.relu(nn.Conv(5, (3, 3), strides=2)(x))
    x = nn.BatchNorm(use_running_average=True)(x)
    return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_arbitrary_user_module_is_tapped_unchanged():
  model = UserNet()
  x = jax.random.normal(jax.random.key(2), (2, 9, 14, 3))
  v = model.init(jax.random.key(0), x)
  clf = from_flax(model, v, layers=["Conv_1"])
  logits, feats = clf.apply(x)
  np.testing.assert_allclose(logits, model.apply(v, x), rtol=1e-6)
  assert feats["Conv_1"].shape == (2, 5, 7, 5)

  def f(delta):   # Linear in delta through the BN (inference) and the mean.
    return clf.apply(x, {"Conv_1": delta})[0][:, 1].sum()

  g = jax.grad(f)(jnp.zeros((2, 5, 7, 5)))
  bn = v["batch_stats"]["BatchNorm_0"]
  scale = v["params"]["BatchNorm_0"]["scale"] / jnp.sqrt(bn["var"] + 1e-5)
  per_channel = scale * v["params"]["Dense_0"]["kernel"][:, 1] / 35
  relu_open = feats["Conv_1"] > 0
  np.testing.assert_allclose(g, jnp.where(relu_open, per_channel, 0),
                             rtol=1e-5, atol=1e-8)
  assert relu_open.any() and not relu_open.all()


def test_default_layers_are_direct_4d_children():
  model = UserNet()
  v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  clf = from_flax(model, v, input_shape=(8, 8, 3))
  assert clf.layers == ("Conv_0", "Conv_1", "BatchNorm_0")


def test_unknown_layer_lists_the_available_ones(cnn):
  model, variables, x = cnn
  with pytest.raises(ValueError, match=r"unknown layer.*'blok2'.*block2 "
                     r"\[1, 6, 10, 8\]"):
    from_flax(model, variables, layers=["blok2"], input_shape=(12, 20, 3))
  lazy = from_flax(model, variables, layers=["blok2"])  # checked at call
  with pytest.raises(ValueError, match="available layers.*pool1"):
    lazy.apply(x)


def test_batch_items_are_independent_in_inference_mode(cnn):
  model, variables, x = cnn
  clf = from_flax(model, variables, layers=["block2"])
  full = clf.apply(x)[0]
  other = x.at[1:].set(jax.random.normal(jax.random.key(9), x[1:].shape))
  np.testing.assert_allclose(clf.apply(other)[0][0], full[0], rtol=1e-6)
  np.testing.assert_allclose(clf.apply(x[:1])[0][0], full[0], rtol=1e-6)


def test_training_mode_batch_norm_is_refused():
  class TrainModeNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=False)(nn.Conv(2, (1, 1))(x))
      return x.mean(axis=(1, 2))

  model = TrainModeNet()
  v = model.init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)))
  clf = from_flax(model, v, layers=["Conv_0"])
  with pytest.raises(ValueError, match="batch_stats.*inference mode"):
    clf.apply(jnp.ones((2, 4, 4, 3)))
  with pytest.raises(ValueError, match="mutable=.*apply_tapped"):
    from_flax(model, v, layers=["Conv_0"], mutable=["batch_stats"])


def test_apply_tapped_runs_training_mode_and_perturbs_the_tap():
  """The training-mode forward of the explanation loss: batch statistics,
  the updated statistics returned, a delta added to the tapped output."""
  class TrainModeNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      h = nn.Conv(2, (1, 1))(x)
      h = nn.BatchNorm(use_running_average=not train)(h)
      return h.mean(axis=(1, 2))

  model = TrainModeNet()
  x = jax.random.normal(jax.random.key(1), (3, 4, 5, 3))
  v = model.init(jax.random.key(0), x)
  (out, updates), feats = apply_tapped(
      model, v, x, layers=["Conv_0"], train=True, mutable=["batch_stats"])
  c = feats["Conv_0"]
  mean, var = c.mean((0, 1, 2)), c.var((0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["BatchNorm_0"]["mean"],
                             0.01 * mean, rtol=1e-5, atol=1e-7)  # momentum 0.99
  np.testing.assert_allclose(out, ((c - mean) / jnp.sqrt(var + 1e-5)).mean(
      (1, 2)), rtol=1e-4, atol=1e-5)
  delta = jnp.ones_like(c)
  _, shifted = apply_tapped(model, v, x, layers=["Conv_0"],
                            deltas={"Conv_0": delta}, train=True,
                            mutable=["batch_stats"])
  np.testing.assert_allclose(shifted["Conv_0"], c + 1, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown layer"):
    apply_tapped(model, v, x, layers=["Conv_9"])


def test_jit_equals_no_jit(cnn):
  model, variables, x = cnn
  clf = from_flax(model, variables, layers=["block1", "block3"])
  eager = clf.apply(x)
  jitted = jax.jit(clf.apply)(x)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x, match", [
    (np.zeros((12, 20, 3), np.float32), r"\[B, H, W, C\].*add a batch axis"),
    (np.zeros((1, 12, 20, 3), np.uint8), "floating point.*uint8"),
    (np.zeros((1, 12, 20, 4), np.float32), "4 channels.*expects 3"),
])
def test_bad_images_get_a_clear_error(cnn, x, match):
  model, variables, _ = cnn
  clf = from_flax(model, variables, layers=["block1"])
  with pytest.raises(ValueError, match=match):
    clf.apply(x)


def test_bad_deltas_get_a_clear_error(cnn):
  model, variables, x = cnn
  clf = from_flax(model, variables, layers=["block1"])
  with pytest.raises(ValueError, match="does not tap"):
    clf.apply(x, {"block2": jnp.zeros(1)})
  with pytest.raises(ValueError, match=r"deltas\['block1'\] has shape"):
    clf.apply(x, {"block1": jnp.zeros((3, 2, 2, 4))})


# Transformers: token taps as patch grids (DESIGN.md §10).


class PositionTokens(nn.Module):
  """``[B, 2 + N, D]`` tokens that encode their own position: token ``t``
  holds ``t`` in every channel (2 register tokens, then ``N`` patches)."""
  patch: int = 4
  width: int = 3

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    n = 2 + (h // self.patch) * (w // self.patch)
    t = jnp.arange(n, dtype=x.dtype)[None, :, None] + 0 * x.mean()
    return jnp.broadcast_to(t, (b, n, self.width))


class UserTransformer(nn.Module):
  """A user's transformer: no ``token_layout`` method."""

  @nn.compact
  def __call__(self, x):
    tokens = PositionTokens(name="tokens")(x)
    tokens = nn.Dense(3, name="mix")(tokens)
    return nn.Dense(2, name="head")(tokens.mean(axis=1))


def test_explicit_token_layout_turns_token_taps_into_grids():
  """Token ``2 + i * w + j`` lands at grid cell ``(i, j)`` (8 x 12 input,
  4 x 4 patches: a 2 x 3 grid)."""
  model = UserTransformer()
  x = jnp.ones((2, 8, 12, 3))
  v = model.init(jax.random.key(0), x)
  layout = TokenLayout((4, 4), num_prefix_tokens=2)
  clf = from_flax(model, v, layers=["tokens", "mix"], tokens=layout)
  assert clf.tokens == layout
  logits, feats = clf.apply(x)
  np.testing.assert_array_equal(logits, model.apply(v, x))
  i, j = np.meshgrid(np.arange(2), np.arange(3), indexing="ij")
  want = np.broadcast_to((2 + 3 * i + j)[None, :, :, None], (2, 2, 3, 3))
  np.testing.assert_array_equal(feats["tokens"], want)
  assert feats["mix"].shape == (2, 2, 3, 3)
  # A grid delta moves the patch tokens only: the head's mean over the 8
  # tokens moves by 6 / 8 of a constant delta on the 6 patches.
  delta = jnp.ones((2, 2, 3, 3))
  moved = clf.apply(x, {"tokens": delta})
  np.testing.assert_array_equal(moved[1]["tokens"], want + 1)
  head = v["params"]["head"]["kernel"]
  mix = v["params"]["mix"]["kernel"]
  np.testing.assert_allclose(moved[0] - logits,
                             np.broadcast_to(6 / 8 * (mix.sum(0) @ head),
                                             (2, 2)), rtol=1e-5)


def test_without_a_layout_token_taps_stay_tokens():
  model = UserTransformer()
  x = jnp.ones((1, 8, 12, 3))
  v = model.init(jax.random.key(0), x)
  clf = from_flax(model, v, layers=["tokens"])
  assert clf.tokens is None
  assert clf.apply(x)[1]["tokens"].shape == (1, 8, 3)
  with pytest.raises(ValueError, match="tokens must be a TokenLayout"):
    from_flax(model, v, layers=["tokens"], tokens="grid")


def test_cnns_have_no_token_layout_and_classifier_defaults_to_none(cnn):
  model, variables, _ = cnn
  assert from_flax(model, variables, layers=["block2"]).tokens is None
  assert Classifier(apply=lambda x, d=None: (x, {}), layers=()).tokens is None


def test_apply_tapped_reads_token_taps_as_grids_when_asked():
  model = UserTransformer()
  x = jnp.ones((1, 8, 12, 3))
  v = model.init(jax.random.key(0), x)
  _, feats = apply_tapped(model, v, x, layers=["tokens"],
                          tokens=TokenLayout((4, 4), 2))
  assert feats["tokens"].shape == (1, 2, 3, 3)
  _, feats = apply_tapped(model, v, x, layers=["tokens"])
  assert feats["tokens"].shape == (1, 8, 3)


def test_from_nnx_reads_a_token_layout_method():
  """An NNX transformer with ``token_layout()``: token taps are grids and
  ``layers=None`` picks the token layers."""

  class NnxTokens(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Conv(3, 5, (4, 4), strides=(4, 4), padding="VALID",
                            rngs=rngs)
      self.cls = nnx.Param(jnp.zeros((1, 1, 5)))
      self.mix = nnx.Linear(5, 5, rngs=rngs)
      self.head = nnx.Linear(5, 2, rngs=rngs)

    def token_layout(self):
      return TokenLayout((4, 4), num_prefix_tokens=1)

    def __call__(self, x):
      p = self.embed(x)
      p = p.reshape(p.shape[0], -1, p.shape[-1])
      cls = jnp.broadcast_to(self.cls[...], (p.shape[0], 1, 5))
      tokens = self.mix(jnp.concatenate([cls, p], axis=1))
      return self.head(tokens[:, 0])

  model = NnxTokens(nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 8, 12, 3))
  clf = from_nnx(model, input_shape=(8, 12, 3))
  assert clf.tokens == TokenLayout((4, 4), 1)
  assert clf.layers == ("mix",)
  logits, feats = clf.apply(x)
  np.testing.assert_allclose(logits, model(x), rtol=1e-6)
  raw = from_nnx(model, layers=["mix"], tokens=None).apply(x)[1]["mix"]
  np.testing.assert_array_equal(feats["mix"],
                                raw[:, 1:].reshape(2, 2, 3, 5))
