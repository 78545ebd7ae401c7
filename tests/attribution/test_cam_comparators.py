"""Ablation-CAM, XGrad-CAM, HiResCAM and FullGrad.

References: closed forms on a conv-ReLU-GAP-linear model and on a linear
model, FullGrad's completeness, and pytorch-grad-cam's raw maps on a small
torch CNN (fixtures made by tools/fixtures/make_cams.py; no torch here).
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import from_flax
from lapjax.attribution import cam
from lapjax.attribution.fullgrad import fullgrad, fullgrad_classifier
from lapjax.models.layers import batch_norm, symmetric_padding
from tests.attribution.models import (
  Identity,
  linear_classifier,
  linear_head,
  small_cnn,
)

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "cams"
PAD1 = symmetric_padding(1)
T = jnp.array([2, 0])
LAYER_CAMS = {"ablation_cam": cam.ablation_cam, "xgrad_cam": cam.xgrad_cam,
              "hires_cam": cam.hires_cam}


# --- Closed forms -----------------------------------------------------------

def _linear_head_parts():
  _, v, clf, x = linear_head()
  acts = clf.apply(x)[1]["features"]                   # [B, h, w, 5]
  w = v["params"]["head"]["kernel"]                    # [5, K]
  return clf, x, acts, w


def test_hires_cam_is_signed_cam_over_hw_on_a_linear_head():
  clf, x, acts, w = _linear_head_parts()
  h, wd = acts.shape[1:3]
  expected = jnp.einsum("bhwc,cb->bhw", acts, w[:, T]) / (h * wd)
  got = cam.hires_cam(clf, x, T, layer="features", resize=False)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  assert float(got.min()) < 0 < float(got.max())      # signed, no ReLU


def test_xgrad_cam_is_signed_cam_over_hw_on_a_linear_head():
  """Constant gradients w_kt / hw: the activation shares sum to one."""
  clf, x, acts, w = _linear_head_parts()
  h, wd = acts.shape[1:3]
  alive = acts.sum(axis=(1, 2)) != 0                   # [B, 5]
  weights = np.where(alive[:, None], w.T[T][:, None], 0) / (h * wd)
  expected = jnp.einsum("bnc,bhwc->bhw", weights, acts)
  got = cam.xgrad_cam(clf, x, T, layer="features", resize=False)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_xgrad_cam_gives_a_dead_channel_weight_zero():
  """A channel that is 0 everywhere (0 / 0 share) adds nothing, not NaN."""
  model, v, _, x = linear_head()
  conv = v["params"]["conv"]
  v = {"params": {**v["params"], "conv": {
      "kernel": conv["kernel"].at[..., 1].set(0.0),
      "bias": conv["bias"].at[1].set(0.0)}}}
  clf = from_flax(model, v, layers=["features"])
  acts = clf.apply(x)[1]["features"]
  assert float(jnp.abs(acts[..., 1]).max()) == 0
  w = v["params"]["head"]["kernel"]
  h, wd = acts.shape[1:3]
  expected = jnp.einsum("bhwc,cb->bhw", acts, w[:, T]) / (h * wd)
  got = cam.xgrad_cam(clf, x, T, layer="features", resize=False)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_ablation_cam_closed_form_on_a_linear_head():
  """Zeroing channel k drops the logit by sum_ij A_k w_kt / hw."""
  clf, x, acts, w = _linear_head_parts()
  h, wd = acts.shape[1:3]
  logits = clf.apply(x)[0][jnp.arange(2), T]
  drop = acts.sum(axis=(1, 2)) * w.T[T] / (h * wd)      # [B, 5]
  weights = drop / logits[:, None]
  expected = jax.nn.relu(jnp.einsum("bc,bhwc->bhw", weights, acts))
  got = cam.ablation_cam(clf, x, T, layer="features", resize=False)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  assert float(got.max()) > 0


def test_ablation_cam_does_not_depend_on_the_chunk_size():
  model, v, x = small_cnn()
  clf = from_flax(model, v, layers=["block2"])
  t = jnp.array([1, 0, 3])
  one = cam.ablation_cam(clf, x, t, layer="block2", chunk_size=1)
  # 9 images: 3 channels of the batch per pass, the last chunk padded.
  odd = cam.ablation_cam(clf, x, t, layer="block2", chunk_size=9)
  # y - y_k cancels: compare to 1e-5 of the map's largest value.
  _close_to(one, odd, rtol=1e-5)


def test_fullgrad_on_a_linear_model_is_the_rescaled_abs_input_term():
  """No spatial bias layer: only psi(|w_t * x|), summed over channels."""
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(3, 5, 7, 2)).astype(np.float32)
  x = rng.normal(size=(2, 5, 7, 2)).astype(np.float32)
  clf = linear_classifier(jnp.asarray(weights), jnp.array([0.5, -1., 2.]))
  t = np.array([2, 1])
  a = np.abs(weights[t] * x)                              # [B, H, W, C]
  lo = a.min(axis=(1, 2, 3), keepdims=True)
  hi = a.max(axis=(1, 2, 3), keepdims=True)
  expected = ((a - lo) / (hi - lo + 1e-6)).sum(-1)
  np.testing.assert_allclose(fullgrad(clf, x, t), expected, rtol=1e-5,
                             atol=1e-6)
  lo = a.min(axis=(1, 2), keepdims=True)
  hi = a.max(axis=(1, 2), keepdims=True)
  per_channel = ((a - lo) / (hi - lo + 1e-6)).sum(-1)
  np.testing.assert_allclose(fullgrad(clf, x, t, normalise="channel"),
                             per_channel, rtol=1e-5, atol=1e-6)


# --- pytorch-grad-cam on a small torch CNN ----------------------------------

class TorchCNN(nn.Module):
  """The fixture's conv-BN-ReLU-maxpool-conv-BN-ReLU-GAP-linear."""

  @nn.compact
  def __call__(self, x):
    norm = batch_norm(False)
    x = nn.Conv(4, (3, 3), padding=PAD1, name="conv1")(x)
    x = nn.max_pool(nn.relu(norm(name="bn1")(x)), (2, 2), (2, 2))
    x = nn.Conv(6, (3, 3), padding=PAD1, name="conv2")(x)
    x = Identity(name="relu2")(nn.relu(norm(name="bn2")(x)))
    return nn.Dense(3, name="fc")(x.mean(axis=(1, 2)))


def _conv(w):
  return np.transpose(w, (2, 3, 1, 0))


@pytest.fixture(scope="module")
def torch_cnn():
  data = np.load(FIXTURES / "cnn.npz")
  s = {k[len("state/"):]: data[k] for k in data.files
       if k.startswith("state/")}
  params = {"conv1": {"kernel": _conv(s["conv1.weight"]),
                      "bias": s["conv1.bias"]},
            "conv2": {"kernel": _conv(s["conv2.weight"]),
                      "bias": s["conv2.bias"]},
            "fc": {"kernel": s["fc.weight"].T, "bias": s["fc.bias"]}}
  stats = {}
  for bn in ("bn1", "bn2"):
    params[bn] = {"scale": s[f"{bn}.weight"], "bias": s[f"{bn}.bias"]}
    stats[bn] = {"mean": s[f"{bn}.running_mean"],
                 "var": s[f"{bn}.running_var"]}
  model = TorchCNN()
  variables = {"params": params, "batch_stats": stats}
  return model, variables, data


def _close_to(ours, ref, rtol=1e-4):
  """Equal to ``rtol`` of the reference map's largest magnitude."""
  ref = np.asarray(ref)
  scale = np.abs(ref).max()
  assert scale > 0
  np.testing.assert_allclose(np.asarray(ours) / scale, ref / scale,
                             atol=rtol)


def test_mirror_model_matches_the_fixture(torch_cnn):
  model, v, data = torch_cnn
  clf = from_flax(model, v, layers=["bn2", "relu2"])
  logits, feats = clf.apply(jnp.asarray(data["input"]))
  np.testing.assert_allclose(logits, data["logits"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats["bn2"], data["act_bn2"], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("name", ["xgrad_cam", "hires_cam"])
def test_signed_cams_equal_pytorch_grad_cam_before_its_relu(torch_cnn, name):
  model, v, data = torch_cnn
  clf = from_flax(model, v, layers=["relu2"])
  x, t = data["input"], data["targets"]
  method = LAYER_CAMS[name]
  _close_to(method(clf, x, t, layer="relu2", resize=False), data[name])
  _close_to(method(clf, x, t, layer="relu2"), data[f"{name}_resized"])
  assert data[name].min() < 0       # the reference's ReLU would hide this


@pytest.mark.parametrize("layer,key", [("relu2", "ablation_cam"),
                                       ("bn2", "ablation_cam_bn2")])
def test_ablation_cam_equals_pytorch_grad_cam(torch_cnn, layer, key):
  """At relu2 (minimum 0) both zero the channel. At bn2 (negative values)
  pytorch-grad-cam ablates to ``min - 1e7`` (more for later channels of a
  chunk), lapjax to 0; the ReLU after bn2 maps both to 0, so the maps
  agree here, and would not before a layer that keeps negative values."""
  model, v, data = torch_cnn
  clf = from_flax(model, v, layers=[layer])
  x, t = data["input"], data["targets"]
  ref = np.maximum(data[key], 0)                 # its ReLU, then scaling
  _close_to(cam.ablation_cam(clf, x, t, layer=layer, resize=False), ref)
  _close_to(cam.ablation_cam(clf, x, t, layer=layer),
            data[f"{key}_resized"])
  assert data["act_bn2"].min() < 0 == data["act_relu2"].min()


def test_fullgrad_channel_mode_equals_pytorch_grad_cam(torch_cnn):
  model, v, data = torch_cnn
  clf = fullgrad_classifier(model, v, input_shape=data["input"].shape[1:])
  assert clf.layers == ("conv1:bias", "bn1:bias", "conv2:bias", "bn2:bias")
  x, t = data["input"], data["targets"]
  ours = fullgrad(clf, x, t, normalise="channel", eps=1e-7)
  _close_to(ours, data["fullgrad_resized"])
  # The paper's per-layer rescaling is a different map.
  paper = fullgrad(clf, x, t)
  assert np.abs(np.asarray(paper) - ours).max() > 0.1


def test_fullgrad_terms_add_up_to_the_logit(torch_cnn):
  """Completeness: x . grad_x + sum_l sum (grad_z . b) + fc bias = logit,
  which checks every bias term, BatchNorm's effective bias included."""
  model, v, data = torch_cnn
  clf = fullgrad_classifier(model, v, input_shape=data["input"].shape[1:])
  x = jnp.asarray(data["input"])
  t = data["targets"]
  shapes = jax.eval_shape(clf.apply, x)[1]
  zeros = {n: jnp.zeros(s.shape) for n, s in shapes.items()}

  def score(x, deltas):
    return clf.apply(x, deltas)[0][jnp.arange(2), t].sum()

  gx, gz = jax.grad(score, argnums=(0, 1))(x, zeros)
  terms = clf.apply(x)[1]
  total = (gx * x).sum(axis=(1, 2, 3))
  for n in terms:
    total = total + (gz[n] * terms[n]).sum(axis=(1, 2, 3))
  total = total + v["params"]["fc"]["bias"][t]
  np.testing.assert_allclose(total, data["logits"][np.arange(2), t],
                             rtol=1e-5, atol=1e-5)


def test_fullgrad_layer_mode_rescales_each_layer_as_a_whole(torch_cnn):
  model, v, data = torch_cnn
  clf = fullgrad_classifier(model, v, input_shape=data["input"].shape[1:])
  x = jnp.asarray(data["input"])
  t = data["targets"]
  shapes = jax.eval_shape(clf.apply, x)[1]
  zeros = {n: jnp.zeros(s.shape) for n, s in shapes.items()}
  gx, gz = jax.grad(lambda x, d: clf.apply(x, d)[0][jnp.arange(2), t].sum(),
                    argnums=(0, 1))(x, zeros)
  terms = clf.apply(x)[1]

  def psi(m):
    a = np.abs(np.asarray(m))
    lo = a.min(axis=(1, 2, 3), keepdims=True)
    return (a - lo) / (a.max(axis=(1, 2, 3), keepdims=True) - lo + 1e-6)

  expected = psi(gx * x).sum(-1)
  for n in terms:
    per_layer = psi(gz[n] * terms[n]).sum(-1)
    expected = expected + np.asarray(jax.image.resize(
        per_layer, (2, *x.shape[1:3]), "bilinear"))
  np.testing.assert_allclose(fullgrad(clf, x, t), expected, rtol=1e-5,
                             atol=1e-5)


# --- Contract: targets, batches, jit, H != W --------------------------------

@pytest.fixture(scope="module")
def cnn():
  model, v, x = small_cnn()                       # [3, 12, 20, 3]
  return {"layer": from_flax(model, v, layers=["block2", "global_pool"]),
          "full": fullgrad_classifier(model, v, input_shape=x.shape[1:]),
          "x": x}


def _run(cnn, name, x, targets, **kw):
  if name == "fullgrad":
    return fullgrad(cnn["full"], x, targets, **kw)
  kw = {"layer": "block2", **kw}
  if name == "ablation_cam":
    kw.setdefault("chunk_size", 8)
  return LAYER_CAMS[name](cnn["layer"], x, targets, **kw)


METHODS = [*LAYER_CAMS, "fullgrad"]


@pytest.mark.parametrize("name", METHODS)
def test_batch_items_are_independent(cnn, name):
  x, t = cnn["x"], jnp.array([0, 3, 1])
  full = _run(cnn, name, x, t)
  assert full.shape == (3, 12, 20)
  assert float(jnp.abs(full).max()) > 0
  np.testing.assert_allclose(_run(cnn, name, x[1:2], t[1:2])[0], full[1],
                             rtol=1e-4, atol=1e-6)
  other = x.at[0].set(jax.random.normal(jax.random.key(9), x.shape[1:]))
  np.testing.assert_allclose(_run(cnn, name, other, t)[1:], full[1:],
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_class_sets_and_cotangents(cnn, name):
  x = cnn["x"]
  classes = jnp.array([[0, 2], [3, 1], [1, 1]])
  multi = _run(cnn, name, x, classes)
  assert multi.shape == (3, 2, 12, 20)
  for j in range(2):
    np.testing.assert_allclose(multi[:, j], _run(cnn, name, x, classes[:, j]),
                               rtol=1e-4, atol=1e-6)
  one_hot = jax.nn.one_hot(classes[:, 0], 4)
  np.testing.assert_allclose(_run(cnn, name, x, one_hot), multi[:, 0],
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_jit_equals_the_eager_call(cnn, name):
  x, t = cnn["x"], jnp.array([2, 0, 1])
  jitted = jax.jit(lambda x, t: _run(cnn, name, x, t))(x, t)
  np.testing.assert_allclose(jitted, _run(cnn, name, x, t), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("name", LAYER_CAMS)
def test_native_resolution_keeps_h_and_w(cnn, name):
  got = _run(cnn, name, cnn["x"], jnp.array([0, 1, 2]), resize=False)
  assert got.shape == (3, 6, 10)


# --- Bad input --------------------------------------------------------------

@pytest.mark.parametrize("name", LAYER_CAMS)
def test_a_non_spatial_layer_is_refused(cnn, name):
  with pytest.raises(ValueError, match=r"'global_pool' must be a spatial "
                     r"feature map"):
    LAYER_CAMS[name](cnn["layer"], cnn["x"], jnp.array([0, 1, 2]),
                     layer="global_pool")


@pytest.mark.parametrize("name", LAYER_CAMS)
def test_an_unknown_layer_lists_the_tapped_ones(cnn, name):
  with pytest.raises(ValueError, match=r"unknown layer 'block9'"):
    LAYER_CAMS[name](cnn["layer"], cnn["x"], jnp.array([0, 1, 2]),
                     layer="block9")


def test_ablation_cam_refuses_a_non_positive_chunk_size(cnn):
  with pytest.raises(ValueError, match="chunk_size must be >= 1"):
    cam.ablation_cam(cnn["layer"], cnn["x"], jnp.array([0, 1, 2]),
                     layer="block2", chunk_size=0)


def test_fullgrad_refuses_a_classifier_without_bias_taps(cnn):
  with pytest.raises(ValueError, match=r"build it with fullgrad_classifier.*"
                     r"\['block2', 'global_pool'\]"):
    fullgrad(cnn["layer"], cnn["x"], jnp.array([0, 1, 2]))


def test_fullgrad_refuses_an_unknown_normalisation(cnn):
  with pytest.raises(ValueError, match="normalise must be one of"):
    fullgrad(cnn["full"], cnn["x"], jnp.array([0, 1, 2]), normalise="image")


def test_fullgrad_classifier_lists_the_bias_layers_and_refuses_mutable():
  model, v, x = small_cnn()
  clf = fullgrad_classifier(model, v, input_shape=x.shape[1:])
  assert clf.layers == ("block1/unit0/norm:bias", "block2/unit0/norm:bias")
  with pytest.raises(ValueError, match="no mutable collections"):
    fullgrad_classifier(model, v, input_shape=x.shape[1:],
                        mutable=["batch_stats"])
  with pytest.raises(ValueError, match="does not tap"):
    clf.apply(x, {"block2": jnp.zeros((3, 6, 10, 8))})
  with pytest.raises(ValueError, match="inference mode"):
    fullgrad_classifier(model, v, input_shape=x.shape[1:], train=True)
