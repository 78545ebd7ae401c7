"""LRP rules, composites, the BatchNorm canonizer, lrp and Relevance-CAM.

References: hand-computed rules on one dense layer, conservation on
bias-free ReLU networks, and Zennit's relevance on two small torch networks
(fixtures made by tools/fixtures/make_relevance.py; no torch here).
"""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import from_flax
from lapjax.attribution import relevance as rel
from lapjax.attribution import relevance_rules as rules
from lapjax.models import SmallCNN
from lapjax.models.layers import batch_norm, symmetric_padding
from lapjax.models.resnet import BasicBlock, ResNet

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "relevance"
PAD1 = symmetric_padding(1)


# --- Rules on one dense layer, against the formulas by hand -----------------

def _dense_case(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(5,)).astype(np.float32)
  w = rng.normal(size=(5, 4)).astype(np.float32)
  b = rng.normal(size=(4,)).astype(np.float32) * 0.3
  r = rng.normal(size=(4,)).astype(np.float32)
  return x, w, b, r


def _dense(x, k, b):
  return x @ k + b


def _stab(z, eps=1e-6):
  return z + eps * np.where(z >= 0, 1.0, -1.0)


def _pos(a):
  return np.maximum(a, 0)


def _neg(a):
  return np.minimum(a, 0)


def _run(rule, x, w, b, r):
  return np.asarray(rule(jnp.asarray(x), _dense, jnp.asarray(w),
                         jnp.asarray(b), jnp.asarray(r)))


def test_epsilon_rule_by_hand():
  x, w, b, r = _dense_case()
  z = x @ w + b
  expected = (x[:, None] * w / _stab(z, 0.1) * r).sum(1)
  np.testing.assert_allclose(_run(rules.Epsilon(0.1), x, w, b, r), expected,
                             rtol=1e-5, atol=1e-6)


def test_alpha_beta_and_zplus_rules_by_hand():
  x, w, b, r = _dense_case(1)
  contrib = x[:, None] * w
  zp = _pos(contrib).sum(0) + _pos(b)
  zn = _neg(contrib).sum(0) + _neg(b)
  for alpha, beta in [(2.0, 1.0), (1.0, 0.0)]:
    expected = (alpha * _pos(contrib) / _stab(zp) * r
                - beta * _neg(contrib) / _stab(zn) * r).sum(1)
    np.testing.assert_allclose(
        _run(rules.AlphaBeta(alpha, beta), x, w, b, r), expected,
        rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      _run(rules.ZPlus(), x, w, b, r),
      (_pos(contrib) / _stab(zp) * r).sum(1), rtol=1e-5, atol=1e-6)


def test_gamma_rule_by_hand():
  x, w, b, r = _dense_case(2)
  g = 0.5
  contrib = x[:, None] * w
  z = contrib.sum(0) + b
  up = contrib + g * _pos(contrib)          # positive contributions boosted
  down = contrib + g * _neg(contrib)
  z_up = up.sum(0) + b + g * _pos(b)
  z_down = down.sum(0) + b + g * _neg(b)
  expected = ((z > 0) * up / _stab(z_up) * r
              + (z < 0) * down / _stab(z_down) * r).sum(1)
  np.testing.assert_allclose(_run(rules.Gamma(g), x, w, b, r), expected,
                             rtol=1e-5, atol=1e-6)


def test_zbox_flat_wsquare_rules_by_hand():
  x, w, b, r = _dense_case(3)
  low, high = -1.5, 2.0
  num = x[:, None] * w - low * _pos(w) - high * _neg(w)
  den = x @ w + b - (low * _pos(w).sum(0) + _pos(b)) - (
      high * _neg(w).sum(0) + _neg(b))
  np.testing.assert_allclose(_run(rules.ZBox(low, high), x, w, b, r),
                             (num / _stab(den) * r).sum(1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      _run(rules.Flat(), x, w, b, r),
      np.full(5, (r / _stab(np.full(4, 5.0))).sum()), rtol=1e-5)
  np.testing.assert_allclose(
      _run(rules.WSquare(), x, w, b, r),
      (w ** 2 / _stab((w ** 2).sum(0) + b ** 2) * r).sum(1), rtol=1e-5)
  np.testing.assert_array_equal(
      _run(rules.Pass(), x[:4], w[:4], b, r), r)


@pytest.mark.parametrize("rule", [rules.ZPlus(), rules.AlphaBeta(2.0, 1.0),
                                  rules.Gamma(0.5)])
def test_rules_with_known_non_negative_inputs_equal_the_checked_ones(rule):
  x, w, b, r = _dense_case(4)
  x = np.abs(x)
  checked = _run(rule, x, w, b, r)
  known = rule(jnp.asarray(x), _dense, jnp.asarray(w), jnp.asarray(b),
               jnp.asarray(r), non_negative=True)
  np.testing.assert_allclose(known, checked, rtol=1e-6)


def test_relu_outputs_skip_the_run_time_sign_check():
  """Under EpsilonPlusFlat no z+ layer of the SmallCNN checks its input's
  sign at run time (all read ReLU outputs or their pools); under
  EpsilonAlpha2Beta1 only the first layer, which reads the image, does."""
  model = SmallCNN(4, widths=(4, 8))
  x = jnp.ones((1, 8, 12, 3))
  v = jax.eval_shape(model.init, jax.random.key(0), x)

  def conds(comp):
    jaxpr = jax.make_jaxpr(lambda v: rel.lrp(
        rel.relevance_classifier(model, v), x, jnp.array([0]),
        composite=comp))(v)
    return str(jaxpr).count(" cond[")

  assert conds("epsilon_plus_flat") == 0
  assert conds("epsilon_alpha2_beta1") == 1


def test_stabilize_is_zennits():
  z = jnp.array([-2.0, 0.0, 3.0])
  np.testing.assert_array_equal(rules.stabilize(z, 0.5), [-2.5, 0.5, 3.5])


@pytest.mark.parametrize("make, match", [
    (lambda: rules.Gamma(gamma=-0.1), "gamma"),
    (lambda: rules.Epsilon(epsilon=0.0), "epsilon"),
    (lambda: rules.AlphaBeta(alpha=2.0, beta=0.5), "alpha - beta"),
    (lambda: rules.AlphaBeta(alpha=-1.0, beta=-2.0), "alpha and beta"),
    (lambda: rules.Flat(stabilizer=0.0), "stabilizer"),
    (lambda: rules.rule("zplsu"), r"unknown rule 'zplsu'.*'zplus'"),
    (lambda: rel.as_composite("epsilon_plus_flta"),
     r"unknown composite.*'epsilon_plus_flat'"),
])
def test_bad_rule_and_composite_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


# --- Conservation on bias-free ReLU networks ---------------------------------

class Unit(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (3, 3), padding=PAD1,
                           use_bias=False, name="conv")(x))


class BiasFree(nn.Module):
  """conv-ReLU, max pool, conv-ReLU, avg pool, dense-ReLU, dense."""

  @nn.compact
  def __call__(self, x):
    x = Unit(4, name="u1")(x)
    x = Pooled("max", name="p1")(x)
    x = Unit(6, name="u2")(x)
    x = Pooled("avg", name="p2")(x)
    x = nn.relu(nn.Dense(16, use_bias=False, name="fc1")(
        x.reshape(x.shape[0], -1)))
    return nn.Dense(3, use_bias=False, name="fc2")(x)


class Pooled(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    pool = nn.max_pool if self.kind == "max" else nn.avg_pool
    return pool(x, (2, 2), (2, 2))


BIAS_FREE_TAPS = ("p1", "fc1")


@pytest.mark.parametrize("comp", [
    rel.composite({nn.Conv: rules.Epsilon(1e-9),
                   nn.Dense: rules.Epsilon(1e-9)}),
    rel.epsilon_plus_flat(epsilon=1e-9),
])
def test_relevance_is_conserved_at_every_layer(comp):
  model = BiasFree()
  x = jax.random.normal(jax.random.key(0), (3, 8, 12, 3))
  v = model.init(jax.random.key(1), x)
  c = rel.relevance_classifier(model, v, layers=BIAS_FREE_TAPS)
  targets = jnp.array([0, 2, 1])
  logits = model.apply(v, x)[jnp.arange(3), targets]
  assert np.all(np.abs(logits) > 1e-3)
  sums = [rel.lrp(c, x, targets, composite=comp).sum((1, 2))]
  sums += [rel.lrp(c, x, targets, composite=comp, layer=n).reshape(3, -1)
           .sum(1) for n in BIAS_FREE_TAPS]
  for s in sums:
    np.testing.assert_allclose(s, logits, rtol=1e-5)


def test_residual_additions_split_relevance_in_proportion():
  """A ResNet whose merged BatchNorms have no bias conserves relevance
  through its additions and the global pool (each summand gets its share)."""
  model = ResNet(3, stage_sizes=(1, 1), block=BasicBlock, width=4,
                 small_inputs=True)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 12, 3))
  v = model.init(jax.random.key(1), x)
  keys = iter(jax.random.split(jax.random.key(2), 1000))
  v = {"params": jax.tree.map_with_path(
      lambda p, a: (jnp.zeros_like(a) if p[-1].key == "bias" else
                    jax.random.uniform(next(keys), a.shape, a.dtype, 0.5, 1.5)
                    if p[-1].key == "scale" else a), v["params"]),
       "batch_stats": jax.tree.map_with_path(
           lambda p, a: (jnp.zeros_like(a) if p[-1].key == "mean" else
                         jax.random.uniform(next(keys), a.shape, a.dtype, 0.5,
                                            2.0)), v["batch_stats"])}
  c = rel.relevance_classifier(model, v)
  targets = jnp.array([1, 2])
  logits = model.apply(v, x)[jnp.arange(2), targets]
  # z+ does not conserve at negative outputs (a block's last conv feeds the
  # addition before the ReLU); epsilon -> 0 does.
  comp = rel.composite({nn.Conv: rules.Epsilon(1e-9),
                        nn.Dense: rules.Epsilon(1e-9)})
  r = rel.lrp(c, x, targets, composite=comp)
  np.testing.assert_allclose(r.sum((1, 2)), logits, rtol=1e-5)


# --- Against Zennit ---------------------------------------------------------

class TorchCNN(nn.Module):
  """The fixture's conv-BN-ReLU-maxpool-conv-BN-ReLU-avgpool-linear."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train)
    x = nn.Conv(4, (3, 3), padding=PAD1, name="conv1")(x)
    x = nn.max_pool(nn.relu(norm(name="bn1")(x)), (2, 2), (2, 2))
    x = nn.Conv(6, (3, 3), padding=PAD1, name="conv2")(x)
    x = nn.avg_pool(nn.relu(norm(name="bn2")(x)), (2, 2), (2, 2))
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch order
    return nn.Dense(3, name="fc")(x)


class TorchResNet(nn.Module):
  """The fixture's stem and torchvision BasicBlock, as lapjax's block
  (``act`` injectable, for DeepLIFT's rules)."""
  act: object = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train)
    x = nn.Conv(4, (3, 3), padding=PAD1, use_bias=False, name="conv")(x)
    x = self.act(norm(name="bn")(x))
    x = BasicBlock(6, 2, norm, self.act, zero_init_residual=False,
                   name="block")(x)
    return nn.Dense(3, name="fc")(x.mean(axis=(1, 2)))


def _conv(w):
  return np.transpose(w, (2, 3, 1, 0))


def _norm(s, prefix):
  return ({"scale": s[f"{prefix}.weight"], "bias": s[f"{prefix}.bias"]},
          {"mean": s[f"{prefix}.running_mean"],
           "var": s[f"{prefix}.running_var"]})


def torch_state(data) -> dict:
  """The torch ``state_dict`` stored in a fixture under ``state/``."""
  return {k[len("state/"):]: data[k] for k in data.files
          if k.startswith("state/")}


def resnet_variables(s) -> dict:
  """``TorchResNet`` variables from the residual fixture's state."""
  block, block_stats = {}, {}
  for ours, theirs in [("conv1", "conv1"), ("conv2", "conv2"),
                       ("proj", "downsample.0")]:
    block[ours] = {"kernel": _conv(s[f"block.{theirs}.weight"])}
  for ours, theirs in [("norm1", "bn1"), ("norm2", "bn2"),
                       ("proj_norm", "downsample.1")]:
    block[ours], block_stats[ours] = _norm(s, f"block.{theirs}")
  params = {"conv": {"kernel": _conv(s["conv.weight"])}, "block": block,
            "fc": {"kernel": s["fc.weight"].T, "bias": s["fc.bias"]}}
  stats = {"block": block_stats}
  params["bn"], stats["bn"] = _norm(s, "bn")
  return {"params": params, "batch_stats": stats}


def _load(name):
  data = np.load(FIXTURES / f"{name}.npz")
  s = torch_state(data)
  if name != "cnn":
    return TorchResNet(), resnet_variables(s), data
  params = {"conv1": {"kernel": _conv(s["0.weight"]), "bias": s["0.bias"]},
            "conv2": {"kernel": _conv(s["4.weight"]), "bias": s["4.bias"]},
            "fc": {"kernel": s["9.weight"].T, "bias": s["9.bias"]}}
  stats = {}
  params["bn1"], stats["bn1"] = _norm(s, "1")
  params["bn2"], stats["bn2"] = _norm(s, "5")
  return TorchCNN(), {"params": params, "batch_stats": stats}, data


@pytest.mark.parametrize("net", ["cnn", "resnet"])
def test_forward_values_unchanged_by_the_canonizer(net):
  model, v, data = _load(net)
  x = jnp.asarray(data["input"])
  np.testing.assert_allclose(model.apply(v, x), data["logits"], rtol=1e-5,
                             atol=1e-5)
  c = rel.relevance_classifier(model, v)
  np.testing.assert_array_equal(c.apply(x)[0], model.apply(v, x))
  # Under a composite the BatchNorms are merged: same logits.
  with rel._propagating(rel.epsilon_plus()):
    merged = c.apply(x)[0]
  np.testing.assert_allclose(merged, data["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("net", ["cnn", "resnet"])
@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_gamma_box",
                                  "epsilon_alpha2_beta1"])
def test_lrp_equals_zennit(net, name):
  model, v, data = _load(net)
  c = rel.relevance_classifier(model, v)
  x, t = data["input"], data["targets"]
  # Zennit hands the cotangent itself to the logits; lapjax hands logit *
  # cotangent, so cotangent / logit reproduces Zennit's start.
  logits = model.apply(v, x)[np.arange(len(t)), t]
  cot = jax.nn.one_hot(t, 3) / logits[:, None]
  comp = rel.COMPOSITES[name](stabilizer=float(data["stabilizer"]))
  ours = rel.lrp(c, x, cot, composite=comp, channels=None)
  ref = data[name]
  scale = np.abs(ref).max()
  assert scale > 0
  np.testing.assert_allclose(ours / scale, ref / scale, atol=1e-4)


# --- Contract: targets, batches, jit ----------------------------------------

@pytest.fixture(scope="module")
def cnn():
  model = SmallCNN(4, widths=(4, 8))
  x = jax.random.uniform(jax.random.key(7), (3, 12, 20, 3))
  v = model.init(jax.random.key(3), x)
  return rel.relevance_classifier(model, v, layers=("block2",)), x


def test_batch_items_are_independent(cnn):
  c, x = cnn
  targets = jnp.array([0, 3, 1])
  full = rel.lrp(c, x, targets)
  assert full.shape == (3, 12, 20)
  for i in range(3):
    np.testing.assert_allclose(rel.lrp(c, x[i:i + 1], targets[i:i + 1])[0],
                               full[i], rtol=1e-4, atol=1e-6)
  other = x.at[0].set(jax.random.uniform(jax.random.key(9), x.shape[1:]))
  np.testing.assert_allclose(rel.lrp(c, other, targets)[1:], full[1:],
                             rtol=1e-5, atol=1e-7)


def test_target_forms_agree(cnn):
  c, x = cnn
  multi = jnp.array([[0, 2], [3, 1], [1, 1]])
  maps = rel.lrp(c, x, multi, composite="epsilon_gamma_box")
  assert maps.shape == (3, 2, 12, 20)
  single = rel.lrp(c, x, multi[:, 1], composite="epsilon_gamma_box")
  np.testing.assert_allclose(maps[:, 1], single, rtol=1e-5, atol=1e-7)
  one_hot = jax.nn.one_hot(multi[:, 1], 4)
  np.testing.assert_allclose(
      rel.lrp(c, x, one_hot, composite="epsilon_gamma_box"), single,
      rtol=1e-6, atol=1e-8)
  per_channel = rel.lrp(c, x, one_hot, composite="epsilon_gamma_box",
                        channels=None)
  assert per_channel.shape == (3, 12, 20, 3)
  np.testing.assert_allclose(per_channel.sum(-1), single, rtol=1e-5,
                             atol=1e-7)


def test_jit_equals_eager(cnn):
  c, x = cnn
  targets = jnp.array([0, 3, 1])
  eager = rel.lrp(c, x, targets, composite="epsilon_alpha2_beta1")
  jitted = jax.jit(lambda x, t: rel.lrp(
      c, x, t, composite="epsilon_alpha2_beta1"))(x, targets)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)


def test_relevance_cam_is_its_definition(cnn):
  c, x = cnn
  targets = jnp.array([[0, 2], [3, 1], [1, 1]])
  cam = rel.relevance_cam(c, x, targets, layer="block2", resize=False)
  r = rel.lrp(c, x, targets, composite="epsilon_plus", layer="block2",
              channels=None)                                  # [B, C', h, w, c]
  acts = c.apply(x)[1]["block2"]
  expected = np.maximum(np.einsum("bnc,bhwc->bnhw", r.sum((2, 3)), acts), 0)
  np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-6)
  assert rel.relevance_cam(c, x, targets, layer="block2").shape == (
      3, 2, 12, 20)


# --- Bad models -------------------------------------------------------------

def test_plain_classifier_is_refused(cnn):
  _, x = cnn
  model = SmallCNN(4, widths=(4, 8))
  v = model.init(jax.random.key(3), x)
  with pytest.raises(ValueError, match="relevance_classifier"):
    rel.lrp(from_flax(model, v, layers=()), x, jnp.array([0, 1, 2]))


class PreNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.BatchNorm(use_running_average=True, name="pre_norm")(x)
    return nn.Dense(2, name="head")(nn.relu(x).mean(axis=(1, 2)))


class WithLayerNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(name="ln")(nn.Conv(3, (1, 1), name="conv")(x))
    return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def test_standalone_norms_may_pass_relevance():
  """norms='pass' (Zennit's rule for unmerged BatchNorms): a pre-activation
  norm hands relevance on unchanged, so the input's sums to the logit."""
  model = PreNorm()
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 3))
  v = model.init(jax.random.key(1), x)
  v = {"params": v["params"], "batch_stats": {"pre_norm": {
      "mean": jnp.array([0.3, -0.2, 0.1]), "var": jnp.array([0.5, 2.0, 1.0])}}}
  c = rel.relevance_classifier(model, v)
  comp = rel.composite({nn.Dense: rules.Epsilon(1e-9)}, norms="pass")
  targets = jnp.array([0, 1])
  logits = model.apply(v, x)[jnp.arange(2), targets]
  np.testing.assert_allclose(rel.lrp(c, x, targets, composite=comp)
                             .sum((1, 2)), logits, rtol=1e-5)


@pytest.mark.parametrize("model, comp, match", [
    (PreNorm(), "epsilon_plus", r"BatchNorm 'pre_norm' does not directly"),
    (WithLayerNorm(), "epsilon_plus", r"'ln' of type LayerNorm"),
    (BiasFree(), rel.composite({nn.Conv: "zplus"}),
     r"no rule for layer 'fc1' of type Dense"),
])
def test_layers_without_a_rule_are_named(model, comp, match):
  x = jnp.ones((1, 4, 8, 3))
  c = rel.relevance_classifier(model, model.init(jax.random.key(0), x))
  with pytest.raises(ValueError, match=match):
    rel.lrp(c, x, jnp.array([0]), composite=comp)


# --- The zoo's ResNet-50, VGG-16 and DenseNet-121 ----------------------------

# Each family's blocks, stem, pools, shortcuts and norms at reduced width
# and depth (random init; relevance does not need trained weights; the
# full-depth models are checked in docs/relevance.md).
ZOO = {
    "resnet50": ("stage2", dict(width=8, stage_sizes=(1, 1))),
    "vgg16": ("block3", dict(blocks=((4, 4), (8, 8), (8, 8, 8)),
                             classifier_width=16, pool_size=(1, 1))),
    "densenet121": ("features", dict(growth_rate=4, num_init_features=8,
                                     bn_size=2, block_config=(2, 2))),
}
def zoo_norms(name):
  # DenseNet's norms come before their convolutions: Zennit's Pass.
  return "pass" if name.startswith("densenet") else "error"


def bias_free(variables, key):
  """Zero biases and BatchNorm means, random scales and variances: merged
  layers without bias, so that the epsilon rule conserves relevance."""
  keys = iter(jax.random.split(key, 10_000))

  def param(path, a):
    if path[-1].key == "bias":
      return jnp.zeros_like(a)
    if path[-1].key == "scale":
      return jax.random.uniform(next(keys), a.shape, a.dtype, 0.5, 1.5)
    return a

  def stat(path, a):
    if path[-1].key == "mean":
      return jnp.zeros_like(a)
    return jax.random.uniform(next(keys), a.shape, a.dtype, 0.5, 2.0)

  return {"params": jax.tree.map_with_path(param, variables["params"]),
          "batch_stats": jax.tree.map_with_path(
              stat, variables.get("batch_stats", {}))}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_conserve_relevance(name):
  """Bias-free, the epsilon rule (eps -> 0) sums to the logit through each
  family's residual additions, concatenations, max / average / adaptive
  pools and (DenseNet) passed pre-activation norms; EpsilonPlusFlat and
  Relevance-CAM run and are finite."""
  from lapjax.models import create_model
  layer, options = ZOO[name]
  model = create_model(name, num_classes=5, **options)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 24, 3))
  v = bias_free(model.init(jax.random.key(1), x), jax.random.key(2))
  c = rel.relevance_classifier(model, v, layers=(layer,))
  targets = jnp.array([1, 3])
  logits = model.apply(v, x)[jnp.arange(2), targets]
  assert np.all(np.abs(logits) > 1e-6)
  norms = zoo_norms(name)
  eps = rel.composite({nn.Conv: rules.Epsilon(1e-9),
                       nn.Dense: rules.Epsilon(1e-9)}, norms=norms)
  np.testing.assert_allclose(rel.lrp(c, x, targets, composite=eps)
                             .sum((1, 2)), logits, rtol=1e-4)
  flat = dataclasses.replace(rel.epsilon_plus_flat(), norms=norms)
  maps = rel.lrp(c, x, targets, composite=flat)
  assert maps.shape == (2, 16, 24) and np.all(np.isfinite(maps))
  cam = rel.relevance_cam(c, x, targets, layer=layer, composite=flat)
  assert cam.shape == (2, 16, 24) and np.all(np.isfinite(cam))
  assert np.all(cam >= 0) and cam.max() > 0


def test_unknown_layers_name_relevance_classifier(cnn):
  c, x = cnn
  with pytest.raises(ValueError, match=r"unknown layer 'block1'.*"
                     r"relevance_classifier\(module, variables, layers="):
    rel.lrp(c, x, jnp.array([0, 1, 2]), layer="block1")
  model = SmallCNN(4, widths=(4, 8))
  with pytest.raises(ValueError, match="relevance_classifier needs layers="):
    rel.relevance_classifier(model, model.init(jax.random.key(0), x),
                             layers=None)
