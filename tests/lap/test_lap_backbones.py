"""LAP on the papers' backbones: paper-form strided replacement (App. C.1),
trainable aggregation, LAP-extended pretrained zoo models."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lapjax import lap
from lapjax.lap import pool as lap_pool
from lapjax.models import efficientnet, inception, resnet, weights
from tests.models import zoo_checks

PAPER_4_LAPS = ("stem_pool", "stage3_pool", "stage4_pool", "global_pool")


class _StridedConv(nn.Module):
  """ResNet's strided 3x3 convolution, in the paper's form when ``down``."""
  down: nn.Module | None

  @nn.compact
  def __call__(self, x):
    return resnet._strided_conv(x, 1, 3, 2, self.down, name="conv")


def _hand_lap_pool(y, q, alpha, eps):
  """Eq. 6-7 on a 3x3/2 window with padding 1, element by element."""
  h, w = y.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  out = np.zeros((ho, wo))
  for i, j in itertools.product(range(ho), range(wo)):
    cells = [(a, b) for a in range(2 * i - 1, 2 * i + 2)
             for b in range(2 * j - 1, 2 * j + 2)
             if 0 <= a < h and 0 <= b < w]
    top = max(q[c] for c in cells)
    wt = [np.exp(-alpha**2 * (top - q[c])**2) + eps for c in cells]
    out[i, j] = sum(wi * y[c] for wi, c in zip(wt, cells)) / sum(wt)
  return out


def test_paper_form_is_stride_one_conv_then_lap_pool_by_hand():
  x = np.array([[0., 1., 2., 0., 1.],
                [3., 0., 1., 2., 0.],
                [1., 2., 5., 1., 1.],
                [0., 1., 0., 4., 2.],
                [2., 0., 1., 1., 3.]])
  kernel = np.array([[0., 1., 0.], [1., -1., 1.], [0., 2., 0.]])
  alpha, eps = 1.5, 1e-3
  down = lap.LAPPool(1, window=3, strides=2, padding=((1, 1), (1, 1)),
                     head_widths=(), alpha_init=alpha, eps=eps,
                     discriminative=False)
  model = _StridedConv(down)
  v = model.init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))
  params = {"conv": {"kernel": jnp.asarray(kernel)[..., None, None]},
            "down": {"alpha": jnp.array(alpha), "head": {"out": {
                "kernel": jnp.array([[0.5]]), "bias": jnp.array([-1.0])}}}}
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         v["params"])
  out = model.apply({"params": params}, jnp.asarray(x)[None, ..., None])
  # By hand: the stride-1 convolution (zero padding 1), the head's map
  # sigmoid(0.5 y - 1), then the 3x3/2 LAP-Pool.
  xp = np.pad(x, 1)
  y = np.array([[(xp[i:i + 3, j:j + 3] * kernel).sum() for j in range(5)]
                for i in range(5)])
  q = 1 / (1 + np.exp(-(0.5 * y - 1)))
  want = _hand_lap_pool(y, q, alpha, eps)
  assert out.shape == (1, 3, 3, 1)           # the strided convolution's grid
  np.testing.assert_allclose(out[0, ..., 0], want, rtol=1e-5, atol=1e-6)
  strided = _StridedConv(None).apply({"params": {"conv": params["conv"]}},
                                     jnp.asarray(x)[None, ..., None])
  assert strided.shape == out.shape
  np.testing.assert_allclose(strided[0, ..., 0], y[::2, ::2], atol=1e-5)


@pytest.mark.parametrize("block,conv", [(resnet.BasicBlock, "conv1"),
                                        (resnet.BottleneckBlock, "conv2")])
def test_resnet_stage_places_sit_after_the_stride_one_conv(block, conv):
  spec = lap.LAPSpec(("stage2_pool",), 1, head_widths=(4,), alpha_init=0.0,
                     discriminative=False)
  m = resnet.ResNet(3, stage_sizes=(1, 1), block=block, width=4,
                    small_inputs=True, pool=spec)
  x = jax.random.normal(jax.random.key(1), (2, 9, 7, 3))
  v = jax.jit(m.init)(jax.random.key(0), x)
  assert "stage2_pool" in v["params"]            # a submodule of the ResNet
  _, inter = jax.jit(functools.partial(m.apply, capture_intermediates=True))(
      v, x)
  inter = inter["intermediates"]
  y = inter["stage2"]["block1"][conv]["__call__"][0]
  pooled = inter["stage2_pool"]["__call__"][0]
  assert y.shape[1:3] == (9, 7)                  # stride 1 before the pool
  # alpha 0: the LAP-Pool is a 3x3/2 average of the real elements.
  yp = np.pad(np.asarray(y), ((0, 0), (1, 1), (1, 1), (0, 0)))
  cnt = np.pad(np.ones((9, 7)), 1)
  want = np.stack([np.stack([
      yp[:, i:i + 3, j:j + 3].sum((1, 2)) / cnt[i:i + 3, j:j + 3].sum()
      for j in range(0, 7, 2)], 1) for i in range(0, 9, 2)], 1)
  np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-6)
  # Same kernels as the plain ResNet: the pretrained weights carry over.
  plain = resnet.ResNet(3, stage_sizes=(1, 1), block=block, width=4,
                        small_inputs=True)
  pv = jax.eval_shape(plain.init, jax.random.key(0), x)
  shapes = jax.tree.map(jnp.shape, pv["params"])
  assert shapes == {k: s for k, s in jax.tree.map(
      jnp.shape, v["params"]).items() if k != "stage2_pool"}


def test_stride_on_1x1_bottleneck_refuses_a_stage_lap_pool():
  spec = lap.LAPSpec(("stage2_pool",), 1)
  m = resnet.ResNet(3, stage_sizes=(1, 1), block=resnet.BottleneckBlock,
                    width=4, small_inputs=True, stride_on_1x1=True, pool=spec)
  with pytest.raises(ValueError, match="stride_on_1x1"):
    m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_weighted_aggregation_starts_as_sum_and_learns():
  maps = jax.random.uniform(jax.random.key(2), (2, 4, 4, 3))
  np.testing.assert_allclose(
      lap_pool.aggregate(maps, "weighted", jnp.zeros(3)), maps.sum(-1),
      rtol=1e-6)
  logits = jnp.array([0.3, -1.0, 2.0])
  w = 3 * np.exp(logits) / np.exp(logits).sum()
  np.testing.assert_allclose(lap_pool.aggregate(maps, "weighted", logits),
                             (np.asarray(maps) * w).sum(-1), rtol=1e-5)
  with pytest.raises(ValueError, match="dc_logits of shape"):
    lap_pool.aggregate(maps, "weighted", jnp.zeros(2))

  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 5))
  kw = dict(window=2, head_widths=(4,), discriminative=False)
  weighted = lap.LAPPool(3, aggregation="weighted", **kw)
  v = jax.jit(weighted.init)(jax.random.key(0), x)
  assert v["params"]["dc_logits"].shape == (3,)
  summed = {k: p for k, p in v["params"].items() if k != "dc_logits"}
  np.testing.assert_allclose(
      jax.jit(weighted.apply)(v, x),
      jax.jit(lap.LAPPool(3, aggregation="sum", **kw).apply)(
          {"params": summed}, x),
      rtol=1e-6, atol=1e-6)
  g = jax.jit(jax.grad(
      lambda p: (weighted.apply({"params": p}, x)**2).sum()))(v["params"])
  assert float(jnp.abs(g["dc_logits"]).sum()) > 0
  assert lap.LAPSpec(("pool1",), 3, aggregation="weighted")
  with pytest.raises(ValueError, match="aggregation must be one of"):
    lap.LAPSpec(("pool1",), 3, aggregation="softmax")


# LAP-extended pretrained backbones, on the reduced PyTorch fixtures. The
# models run jitted: op by op, every layer shape compiles its own programs
# (hundreds for Inception), which is most of these tests' time.

@functools.cache
def _resnet():
  module = resnet.ResNet(10, stage_sizes=(2, 1, 1, 1),
                         block=resnet.BasicBlock, width=8,
                         stage_widths=(8, 8, 16, 16))
  shape = (48, 40, 3)
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / "resnet_basic.pth",
      layout=resnet.TORCHVISION_LAYOUT, input_shape=shape), shape


TV_STAGES = (efficientnet.MBConvStage(1, 3, 1, 8, 8, 1),
             efficientnet.MBConvStage(6, 3, 2, 8, 16, 2),
             efficientnet.MBConvStage(6, 5, 2, 16, 24, 1))


def _efficientnet():
  module = efficientnet.EfficientNet(10, TV_STAGES, stem_features=8,
                                     head_features=96)
  shape = (40, 32, 3)
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / "efficientnet.pth",
      layout=efficientnet.torchvision_layout(TV_STAGES),
      input_shape=shape), shape


def _inception():
  module = inception.InceptionV3(10, transform_input=True, width_divisor=16)
  shape = (83, 75, 3)
  return module, weights.import_weights(
      module, zoo_checks.FIXTURES / "inception.safetensors",
      layout=inception.torchvision_layout(), input_shape=shape), shape


def _fixture_input(name):
  return jnp.asarray(zoo_checks.load_fixture(name)["input"])


def _assert_backbone_intact(pretrained, extended, prefix=()):
  for col, tree in pretrained.items():
    got = traverse_util.flatten_dict(extended[col])
    for path, value in traverse_util.flatten_dict(tree).items():
      np.testing.assert_array_equal(got[prefix + path], value)


def _logits(module, variables, x):
  return jax.jit(module.apply)(variables, x)


def _maps(module, variables, x):
  def logits_and_maps(variables, x):
    # Inside the trace: the collection still holds the maps in the order
    # they were recorded (a jitted dict comes back with sorted keys).
    logits, col = module.apply(variables, x, mutable=["lap"])
    return logits, *lap.lap_outputs(col["lap"])

  return jax.jit(logits_and_maps)(variables, x)


def _extend_jitted(module, variables, spec, *, key, **kwargs):
  """``lap.extend_pretrained`` traced as one program (its ``init`` op by
  op costs the Inception test a minute of compilation); the same copies
  and initialisers, so the same checks hold. ``test_resnet_paper_4_laps``
  calls it as users do."""
  built = []

  def variables_only(variables, key):
    lap_module, lap_variables = lap.extend_pretrained(
        module, variables, spec, key=key, **kwargs)
    built.append(lap_module)
    return lap_variables

  lap_variables = jax.jit(variables_only)(variables, key)
  return built[0], lap_variables


def test_resnet_paper_4_laps_from_a_pretrained_checkpoint():
  module, variables, shape = _resnet()
  assert lap.pool_places(module, shape) == (
      "stem_pool", "stage2_pool", "stage3_pool", "stage4_pool",
      "global_pool")
  spec = lap.LAPSpec(PAPER_4_LAPS, 1, head_widths=(8,))
  m, v = lap.extend_pretrained(module, variables, spec, input_shape=shape,
                               key=jax.random.key(0))
  _assert_backbone_intact(variables, v)
  for place in PAPER_4_LAPS:
    assert v["params"][place]["alpha"] == spec.alpha_init
  x = _fixture_input("resnet_basic")
  logits, maps, disc = _maps(m, v, x)
  assert logits.shape == (x.shape[0], 10) and len(disc) == 4
  # Shallow to deep: the stem pool's input, stage2's and stage3's grids
  # (the stride-1 convolutions), stage4's output.
  assert [mp.shape[1:3] for mp in maps] == [(24, 20), (6, 5), (3, 3),
                                            (2, 2)]


def test_resnet_lap_pools_at_alpha_zero_and_detached_laps_keep_logits():
  module, variables, shape = _resnet()
  x = _fixture_input("resnet_basic")
  want = _logits(module, variables, x)
  np.testing.assert_allclose(want, zoo_checks.load_fixture(
      "resnet_basic")["logits"], rtol=1e-4, atol=1e-4)
  # A LAP-Pool at alpha 0 averages: at global_pool it is the backbone's
  # pool. Max pools and strided convolutions have no LAP-Pool equal to
  # them, so those places get detached LAPs.
  spec = lap.LAPSpec(("global_pool",), 1, alpha_init=0.0)
  m, v = _extend_jitted(module, variables, spec,
                        detached=("stem_pool", "stage3", "stage4"),
                        input_shape=shape, key=jax.random.key(1))
  _assert_backbone_intact(variables, v, ("backbone",))
  logits, maps, _ = _maps(m, v, x)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  assert [mp.shape[1:3] for mp in maps] == [(12, 10), (3, 3), (2, 2),
                                            (2, 2)]


def test_efficientnet_b0_placement_keeps_logits():
  module, variables, shape = _efficientnet()
  assert lap.pool_places(module, shape) == ("stage2_pool", "stage3_pool",
                                            "global_pool")
  x = _fixture_input("efficientnet")
  want = _logits(module, variables, x)
  # The paper's LAP-EfficientNetB0: a LAP-Pool at the global pool, a
  # detached LAP on the first block of a strided stage (features.6.0 in
  # B0; stage3/block1 in this reduced model).
  spec = lap.LAPSpec(("global_pool",), 2, alpha_init=0.0)
  m, v = _extend_jitted(module, variables, spec,
                        detached=("stage3/block1",), input_shape=shape,
                        key=jax.random.key(2))
  _assert_backbone_intact(variables, v, ("backbone",))
  logits, maps, _ = _maps(m, v, x)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  assert [mp.shape[-1] for mp in maps] == [2, 2]
  # The paper form at a strided stage: stride-1 depthwise, 3x3/2 LAP-Pool.
  m4, v4 = _extend_jitted(
      module, variables, lap.LAPSpec(("stage2_pool", "global_pool"), 1),
      input_shape=shape, key=jax.random.key(3))
  _assert_backbone_intact(variables, v4)
  _, maps4, _ = _maps(m4, v4, x)
  assert [mp.shape[1:3] for mp in maps4] == [(20, 16), (5, 4)]


def test_inception_v3_placement_keeps_logits():
  module, variables, shape = _inception()
  assert lap.pool_places(module, shape) == ("maxpool1", "maxpool2",
                                            "global_pool")
  x = _fixture_input("inception")
  want = _logits(module, variables, x)
  spec = lap.LAPSpec(("global_pool",), 1, alpha_init=0.0)
  m, v = _extend_jitted(module, variables, spec, detached=("Mixed_7a",),
                        input_shape=shape, key=jax.random.key(4))
  _assert_backbone_intact(variables, v, ("backbone",))
  logits, maps, _ = _maps(m, v, x)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  assert len(maps) == 2


def test_bad_places_list_what_the_backbone_has():
  module, variables, shape = _resnet()
  with pytest.raises(ValueError, match=r"\['stage5_pool'\] are not pooling "
                     r"places.*'stem_pool', 'stage2_pool'.*'global_pool'"):
    lap.extend_pretrained(module, variables,
                          lap.LAPSpec(("stage5_pool",), 1),
                          input_shape=shape, key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"\['stage9'\] are not layers of "
                     r"ResNet; its layers are \[.*'stage4'"):
    lap.extend_pretrained(module, variables, detached=("stage9",),
                          num_dcs=1, input_shape=shape,
                          key=jax.random.key(0))
  with pytest.raises(ValueError, match="interleave in depth"):
    lap.extend_pretrained(module, variables,
                          lap.LAPSpec(("stem_pool", "global_pool"), 1),
                          detached=("stage3",), input_shape=shape,
                          key=jax.random.key(0))
  with pytest.raises(ValueError, match="takes no LAP-Pools"):
    lap.pool_places(nn.Dense(3), (4, 4, 3))
