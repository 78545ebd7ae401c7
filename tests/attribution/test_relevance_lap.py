"""LRP, Relevance-CAM and DeepLIFT through LAP-Pools (paper-form ResNets).

References: the canonised model's logits against the model's; the LAP-Pool
rules on a global LAP-Pool in closed form (weights from the pool's own
recorded maps, Eq. 6-7 of paper 000); conservation of the epsilon rule and
summation-to-delta of DeepLIFT on tiny paper-form LAP ResNet-18 / -50
layouts with random BatchNorm statistics.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax.attribution import core
from lapjax.attribution import relevance as rel
from lapjax.attribution import relevance_rules as rules
from lapjax.attribution.deeplift import deeplift, deeplift_shap
from lapjax.lap import LAPPool, LAPSpec, importance_pool
from lapjax.models.resnet import BasicBlock, BottleneckBlock, ResNet

EPSILON = rel.composite({nn.Conv: rules.Epsilon(1e-9),
                         nn.Dense: rules.Epsilon(1e-9)})


def _randomised(variables, seed, *, bias_free=False):
  """Random BatchNorm scales, variances (and, unless ``bias_free``, means
  and biases): a merge that dropped or misplaced a term shows. Drawn by
  NumPy (``seed``): nothing to compile."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
    if name in ("bias", "mean"):
      return (jnp.zeros_like(a) if bias_free else
              jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype))
    return a

  return {c: jax.tree.map_with_path(leaf, variables[c])
          for c in ("params", "batch_stats")}


# Paper-form LAP ResNets (App. C.1: a strided stage's first convolution at
# stride 1, then a 3x3/2 LAP-Pool, then its BatchNorm), reduced.
MODELS = {
    "resnet18": (dict(block=BasicBlock, width=4),
                 ("stem_pool", "stage2_pool", "global_pool")),
    "resnet50": (dict(block=BottleneckBlock, width=2),
                 ("stem_pool", "stage2_pool", "global_pool")),
    "resnet18_small_inputs": (dict(block=BasicBlock, width=4,
                                   small_inputs=True),
                              ("stage2_pool", "global_pool")),
}


@functools.cache
def _initialised(name):
  """``(model, variables, x)``: the model initialised once per module, in
  one compiled program."""
  options, places = MODELS[name]
  model = ResNet(3, stage_sizes=(1, 1),
                 pool=LAPSpec(places, 2, head_widths=(4,)), **options)
  x = jax.random.uniform(jax.random.key(0), (2, 24, 16, 3))
  return model, jax.jit(model.init)(jax.random.key(1), x), x


@functools.cache
def _lap_resnet(name, *, bias_free=False, layers=("stage2",)):
  """``(model, variables, relevance classifier, x, logits)``, built once per
  module and arguments (the tests share the classifier, so a method
  compiled for it by one test is compiled once); ``logits(x)`` is the
  jitted model."""
  model, variables, x = _initialised(name)
  v = _randomised(variables, 2, bias_free=bias_free)
  logits = jax.jit(functools.partial(model.apply, v))
  return (model, v, rel.relevance_classifier(model, v, layers=layers), x,
          logits)


def _jitted_apply(c):
  """``c.apply(x)`` compiled: a new function per call, traced where it is
  first called (inside ``rel._propagating`` it traces the rules)."""
  return jax.jit(lambda x: c.apply(x))


def test_lap_pool_weights_sum_to_one_per_window():
  """The premise of the merge: pooling a constant gives the constant, for
  overlapping padded windows and global pooling, whatever the importance."""
  q = jax.random.normal(jax.random.key(0), (2, 9, 7)) * 3
  ones = jnp.ones((2, 9, 7, 4))
  # Compiled (one program per layout) rather than dispatched op by op.
  pool = jax.jit(importance_pool,
                 static_argnames=("window", "strides", "padding"))
  for window, strides, padding in [(3, 2, ((1, 1), (1, 1))), (2, 2, "VALID"),
                                   (3, 2, "SAME"), (None, None, "VALID")]:
    out = pool(ones, q, jnp.float32(5.0), window=window, strides=strides,
               padding=padding)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_canonised_lap_resnet_has_the_models_logits(name):
  _, _, c, x, model_logits = _lap_resnet(name)
  logits = model_logits(x)
  np.testing.assert_array_equal(_jitted_apply(c)(x)[0], logits)
  for comp in (rel.epsilon_plus_flat(), rel.epsilon_gamma_box()):
    with rel._propagating(comp) as state:
      merged = _jitted_apply(c)(x)[0]
    assert state.traced                 # traced with the rules
    np.testing.assert_allclose(merged, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_epsilon_rule_conserves_relevance_through_lap_pools(name):
  """Bias-free (merged convolutions without bias), the epsilon rule sums
  to the target logit at the input and at every tapped stage."""
  taps = ("stage1", "stage2")
  _, _, c, x, model_logits = _lap_resnet(name, bias_free=True, layers=taps)
  targets = jnp.array([2, 0])
  logits = model_logits(x)[jnp.arange(2), targets]
  assert np.all(np.abs(logits) > 1e-4)
  sums = [rel.lrp(c, x, targets, composite=EPSILON).sum((1, 2))]
  sums += [rel.lrp(c, x, targets, composite=EPSILON, layer=t).sum((1, 2))
           for t in taps]
  for s in sums:
    np.testing.assert_allclose(s, logits, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_composites_and_relevance_cam_run_on_lap_resnets(name):
  _, _, c, x, _ = _lap_resnet(name)
  targets = jnp.array([[0, 2], [1, 1]])
  # Every composite on the bottleneck ResNet (its rules are per layer type,
  # the same in all three); the composite of the CAM below on the others.
  for comp in rel.COMPOSITES if name == "resnet50" else ("epsilon_plus",):
    maps = rel.lrp(c, x, targets, composite=comp)
    assert maps.shape == (2, 2, 24, 16) and np.all(np.isfinite(maps))
    assert np.abs(maps).max() > 0
  cam = rel.relevance_cam(c, x, targets, layer="stage2", resize=False)
  r = rel.lrp(c, x, targets, composite="epsilon_plus", layer="stage2",
              channels=None)
  acts = _jitted_apply(c)(x)[1]["stage2"]
  expected = np.maximum(np.einsum("bnc,bhwc->bnhw", r.sum((2, 3)), acts), 0)
  np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-6)
  assert np.all(np.isfinite(cam)) and cam.max() > 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_deeplift_sums_to_delta_through_lap_pools(name):
  _, _, c, x, model_logits = _lap_resnet(name)
  targets = jnp.array([1, 2])

  def target_logits(a):
    return model_logits(a)[jnp.arange(2), targets]

  # ``half`` equals x on its left half: there the pool inputs do not
  # change while the weights of windows on the border do.
  half = x.at[:, :, 8:].set(jax.random.uniform(jax.random.key(5),
                                               (2, 24, 8, 3)))
  # A constant baseline moves every pool input; ``half`` leaves some
  # windows' inputs unchanged while their weights move (the gate part).
  # Both baselines in one call (one compiled program): the batch items
  # are independent (test_deeplift.py), and a number as the baseline is
  # checked there.
  baselines = (core.baseline_images(x, 0.3), half)
  both = deeplift(c, jnp.concatenate([x, x]), jnp.tile(targets, 2),
                  baseline=jnp.concatenate(baselines))
  for maps, baseline in zip(jnp.split(both, 2), baselines):
    delta = target_logits(x) - target_logits(baseline)
    assert np.all(np.abs(delta) > 1e-4)
    np.testing.assert_allclose(maps.sum((1, 2)), delta, rtol=1e-4,
                               atol=1e-6)
  background = jax.random.uniform(jax.random.key(6), (3, 24, 16, 3))
  shap = deeplift_shap(c, x, targets, baselines=background)
  expected = target_logits(x) - jnp.mean(jnp.stack(
      [target_logits(jnp.broadcast_to(b, x.shape)) for b in background]), 0)
  np.testing.assert_allclose(shap.sum((1, 2)), expected, rtol=1e-4,
                             atol=1e-6)


# --- The LAP-Pool rules in closed form ---------------------------------------

class GlobalLAP(nn.Module):
  """1x1 convolution, global LAP-Pool, dense: ``logit_t = sum_f W_ft sum_i
  w_i z_if``. ``act`` is unused (DeepLIFT requires one)."""
  act: object = nn.relu

  @nn.compact
  def __call__(self, x):
    z = nn.Conv(4, (1, 1), use_bias=False, name="conv")(x)
    pooled = LAPPool(2, window=None, head_widths=(3,), alpha_init=1.5,
                     name="pool")(z)
    return nn.Dense(3, use_bias=False, name="fc")(pooled)


def _global_lap():
  model = GlobalLAP()
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  v = {"params": model.init(jax.random.key(1), x)["params"]}
  return model, v, x


def _weights_and_features(model, v, x):
  """``w [B, H, W]`` (Eq. 7 from the pool's recorded maps) and ``z``."""
  _, state = model.apply(v, x, mutable=["lap"])
  q = state["lap"]["pool"]["maps"][0].sum(-1)
  alpha = v["params"]["pool"]["alpha"]
  q_max = q.max((1, 2), keepdims=True)
  u = np.exp(-alpha**2 * (q_max - q) ** 2) + 1e-4
  z = np.einsum("bhwc,cf->bhwf", x, v["params"]["conv"]["kernel"][0, 0])
  return u / u.sum((1, 2), keepdims=True), z


def test_lrp_holds_lap_pool_weights_constant():
  """``R_if = w_i z_if W_ft``: the z-rule with the pool's weights as
  constants; nothing reaches the head."""
  model, v, x = _global_lap()
  c = rel.relevance_classifier(model, v, layers=("conv",))
  targets = jnp.array([0, 2])
  r = rel.lrp(c, x, targets, composite=EPSILON, layer="conv",
              channels=None)
  w, z = _weights_and_features(model, v, x)
  kernel = np.asarray(v["params"]["fc"]["kernel"])[:, targets].T  # [B, F]
  expected = w[..., None] * z * kernel[:, None, None, :]
  np.testing.assert_allclose(r, expected, rtol=1e-4, atol=1e-6)


def test_deeplift_rule_of_a_lap_pool_by_hand():
  """``w_bar Delta z`` per element (means of the values at x and x0), plus
  the gate part ``sum_i Delta w_i z_bar_i`` shared by ``|Delta z|``;
  elements that do not change get nothing."""
  model, v, x = _global_lap()
  c = rel.relevance_classifier(model, v)
  targets = jnp.array([1, 0])
  changed = np.zeros((1, 5, 6, 1), bool)
  changed[:, 1:4, 2:5] = True
  x0 = jnp.where(changed, jax.random.normal(jax.random.key(3), x.shape), x)
  ours = deeplift(c, x, targets, baseline=x0)
  w, z = _weights_and_features(model, v, x)
  w0, z0 = _weights_and_features(model, v, x0)
  w, w0 = w[..., None], w0[..., None]
  kernel = np.asarray(v["params"]["fc"]["kernel"])[:, targets].T  # [B, F]
  gate = (((w - w0) * (z + z0) / 2).sum((1, 2)) * kernel).sum(-1)  # [B]
  dz = np.abs(z - z0)
  expected = ((w + w0) / 2 * (z - z0) * kernel[:, None, None, :]).sum(-1)
  expected += gate[:, None, None] * dz.sum(-1) / dz.sum((1, 2, 3))[:, None,
                                                                   None]
  assert np.abs(gate).max() > 1e-3          # the gate part matters here
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(ours)[:, ~changed[0, ..., 0]] == 0)


# --- What cannot be merged ----------------------------------------------------

class NormAfterReluPool(nn.Module):
  """A BatchNorm after a LAP-Pool of a ReLU output: no linear layer right
  before the pool to merge it into."""
  act: object = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = self.act(nn.Conv(4, (3, 3), padding=1, name="conv")(x))
    y = LAPPool(2, window=2, head_widths=(3,), name="pool")(y)
    y = nn.BatchNorm(use_running_average=True, name="pooled_norm")(y)
    return nn.Dense(2, name="head")(y.mean((1, 2)))


def test_a_norm_that_cannot_be_merged_is_named():
  model = NormAfterReluPool()
  x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3))
  v = _randomised(model.init(jax.random.key(1), x), 2)
  c = rel.relevance_classifier(model, v)
  with pytest.raises(ValueError, match=r"BatchNorm 'pooled_norm' does not "
                     r"directly follow a Conv or Dense layer \(or a LAP-Pool"):
    rel.lrp(c, x, jnp.array([0]))
  # Zennit's pass rule for it still conserves (bias-free).
  v = _randomised(v, 3, bias_free=True)
  c = rel.relevance_classifier(model, v)
  passing = rel.composite({nn.Conv: rules.Epsilon(1e-9),
                           nn.Dense: rules.Epsilon(1e-9)}, norms="pass")
  logit = model.apply(v, x)[:, 1]
  np.testing.assert_allclose(
      rel.lrp(c, x, jnp.array([1]), composite=passing).sum((1, 2)), logit,
      rtol=1e-4)
