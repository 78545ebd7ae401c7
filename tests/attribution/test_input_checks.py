"""Input checks that hold under ``jit`` (``checks.jit_checked``), the
remaining argument checks, and the warnings about likely misuse.

Every error names the argument, what was expected and what was given.
"""

import functools
import importlib
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import Classifier, from_flax
from lapjax import attribution as attr
from lapjax.attribution import checks
from lapjax.attribution import grid_masks as gm
from lapjax.evaluation.explanations import explain
from lapjax.evaluation.methods import Method, standard_methods
from tests.attribution.models import linear_head, small_cnn

S = importlib.import_module("lapjax.attribution.sloc")
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def cnn():
  model, v, x = small_cnn()
  return from_flax(model, v, layers=["block1", "block2"]), x


# Every method with small settings; targets are [B] class indices.
METHODS = {
    "gradient": (attr.gradient, {}),
    "integrated_gradients": (attr.integrated_gradients, {"steps": 3}),
    "grad_cam": (attr.grad_cam, {"layer": "block2"}),
    "score_cam": (attr.score_cam, {"layer": "block2", "chunk_size": 8}),
    "rise": (attr.rise, {"key": KEY, "num_masks": 4, "cells": 3}),
    "sloc": (attr.sloc, {"key": KEY, "num_masks": 4, "p": 0.5,
                         "patch_sizes": (4,), "steps": 2}),
}
LABEL_FREE = {
    "lafam": (attr.lafam, {"layer": "block2"}),
    "relax": (attr.relax, {"layer": "block2", "key": KEY, "num_masks": 4,
                           "cells": 3}),
}


@functools.cache
def _checked(name):
  """One compiled checked function per method, shared by the tests."""
  method, kw = {**METHODS, **LABEL_FREE}[name]
  model, v, _ = small_cnn()
  clf = from_flax(model, v, layers=["block1", "block2"])
  return checks.jit_checked(lambda x, t: method(clf, x, t, **kw))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_out_of_range_targets_raise_under_jit(cnn, name):
  _, x = cnn
  bad = jnp.array([0, 7, 1])
  with pytest.raises(ValueError, match=r"targets must be class indices in "
                     r"\[0, 4\); got values in \[0, 7\]"):
    _checked(name)(x, bad)


@pytest.mark.parametrize("name", sorted(METHODS) + sorted(LABEL_FREE))
def test_non_finite_images_raise_under_jit(cnn, name):
  _, x = cnn
  bad = x.at[1, 2, 3, 0].set(jnp.nan).at[0, 0, 0, 0].set(jnp.inf)
  with pytest.raises(ValueError, match=r"x has 2 non-finite values \(NaN "
                     r"or inf\); expected finite images"):
    _checked(name)(bad, jnp.array([0, 1, 2]))


@pytest.mark.parametrize("name", ["grad_cam", "rise", "sloc"])
def test_checked_maps_equal_plain_jit_maps(cnn, name):
  clf, x = cnn
  method, kw = METHODS[name]
  t = jnp.array([3, 0, 2])
  plain = jax.jit(lambda x, t: method(clf, x, t, **kw))(x, t)
  np.testing.assert_allclose(_checked(name)(x, t), plain, rtol=1e-6,
                             atol=1e-6)


def test_plain_jit_pays_nothing_for_the_checks(cnn):
  """Without checkify the traced checks are dropped from the program."""
  clf, x = cnn
  t = jnp.array([3, 0, 2])
  f = lambda x, t: attr.gradient(clf, x, t)  # noqa: E731
  plain = str(jax.make_jaxpr(f)(x, t))
  assert "debug_check" not in plain and "check" not in plain.split("{")[0]
  checked = str(jax.make_jaxpr(jax.experimental.checkify.checkify(
      f, errors=jax.experimental.checkify.user_checks))(x, t))
  assert checked != plain


def _non_finite_model():
  def apply(x, deltas=None):
    del deltas
    logits = jnp.stack([x.mean((1, 2, 3)), jnp.log(x.min((1, 2, 3)))], -1)
    return logits, {}
  return Classifier(apply=apply, layers=())


def test_sloc_finite_output_guard_holds_under_jit():
  clf = _non_finite_model()
  x = jnp.ones((1, 4, 4, 3))           # masked inputs have zeros: log 0
  f = checks.jit_checked(lambda x, t: attr.sloc(
      clf, x, t, key=KEY, num_masks=2, p=0.5, patch_sizes=(2,), steps=1,
      response="logit"))
  with pytest.raises(ValueError, match="model's outputs on the masked "
                     "inputs .* must be finite; got outputs that are not "
                     "finite"):
    f(x, jnp.array([0]))


def test_sloc_fit_checks_hold_under_jit():
  init = jnp.ones((6, 6))
  empty = jnp.zeros((3, 6, 6))
  with pytest.raises(ValueError, match="masks must have at least one pixel "
                     "on; got 3 masks with no pixel on"):
    checks.jit_checked(lambda m: S.sloc_fit(m, jnp.ones(3), init,
                                            steps=2))(empty)
  masks = jnp.ones((3, 6, 6))
  with pytest.raises(ValueError, match="responses must be finite"):
    checks.jit_checked(lambda r: S.sloc_fit(masks, r, init, steps=2))(
        jnp.array([1.0, jnp.nan, 2.0]))


# -- the evaluation path --------------------------------------------------


def test_explain_raises_for_bad_labels_and_images(cnn):
  clf, x = cnn
  methods = {"grad_cam": Method(attr.grad_cam, {"layer": "block2"})}
  images = np.asarray(x)
  with pytest.raises(ValueError, match=r"method 'grad_cam', images 0 to 1: "
                     r"targets must be class indices in \[0, 4\); got "
                     r"values in \[-1, 2\]"):
    explain({"plain": clf}, images, np.array([2, -1, 0]), methods,
            batch_size=2)
  bad = images.copy()
  bad[2, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"images 2 to 2: x has 1 non-finite"):
    explain({"plain": clf}, bad, np.array([2, 1, 0]), methods, batch_size=2)
  maps = explain({"plain": clf}, images, np.array([2, 1, 0]), methods,
                 batch_size=2)["grad_cam"]
  np.testing.assert_allclose(
      maps, attr.grad_cam(clf, x, jnp.array([2, 1, 0]), layer="block2"),
      rtol=1e-5, atol=1e-6)


# One method per kind of control flow ``checkify`` must transform: scans
# (integrated gradients, SmoothGrad), ``lax.map`` (RISE, Score-CAM), custom
# VJPs (guided Grad-CAM) and SLOC's mask sampling; the evaluation test runs
# the whole table through the same path.
CHECKED_METHODS = ("integrated_gradients", "smoothgrad", "rise", "score_cam",
                   "guided_grad_cam", "sloc_xp")


def test_explain_runs_the_methods_checked(cnn):
  """``checkify`` transforms the evaluation's methods to the same maps."""
  clf, x = cnn
  model, v, _ = small_cnn()
  guided = attr.guided_classifier(model, v, layers=["block1", "block2"])
  table = standard_methods("block2", key=KEY, image_size=12, ig_steps=2,
                           rise_masks=4, smoothgrad_samples=2, sloc_masks=4,
                           sloc_steps=2, sloc_p=(0.5, 0.5))
  table = {name: table[name] for name in CHECKED_METHODS}
  labels = np.array([0, 3, 1])
  maps = explain({"plain": clf, "guided": guided}, np.asarray(x), labels,
                 table)
  assert set(maps) == set(table)
  for name, m in maps.items():
    assert m.shape == x.shape[:3], name
  t = jnp.asarray(labels)
  np.testing.assert_allclose(maps["sloc_xp"], attr.sloc_xp(
      clf, x, t, **table["sloc_xp"].kwargs), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(maps["guided_grad_cam"], attr.guided_grad_cam(
      guided, x, t, layer="block2"), rtol=1e-5, atol=1e-7)


def test_explain_raises_for_non_finite_maps(cnn):
  clf, x = cnn

  def apply(x, deltas=None):
    logits, feats = clf.apply(x, deltas)
    # Image 1's logits overflow; the others stay finite.
    return logits * jnp.where(jnp.arange(len(x)) == 1, jnp.inf, 1.0)[:,
                                                                    None], feats

  broken = Classifier(apply=apply, layers=clf.layers)
  methods = {"gradient": Method(attr.gradient, {})}
  with pytest.raises(ValueError, match=r"method 'gradient', images 0 to 2: "
                     r"maps must be finite; got NaN or inf in the maps of "
                     r"images \[1\]"):
    explain({"plain": broken}, np.asarray(x), np.array([0, 1, 2]), methods)


# -- remaining argument checks ----------------------------------------------


@pytest.mark.parametrize("kw,message", [
    ({"p": 0.0}, r"p must be in \(0, 1\) .*; got 0.0"),
    ({"p": 1.5}, r"p must be in \(0, 1\) .*; got 1.5"),
    ({"cells": 0}, r"cells must be >= 1; got 0"),
])
def test_relax_checks_p_and_cells(cnn, kw, message):
  clf, x = cnn
  with pytest.raises(ValueError, match=message):
    attr.relax(clf, x, layer="block2", key=KEY, num_masks=2, **kw)


def test_tune_masks_of_one_is_refused(cnn):
  """The spread is a std with ddof 1: one mask would make it NaN."""
  clf, x = cnn
  t = jnp.array([0, 1, 2])
  with pytest.raises(ValueError, match="tune_masks must be >= 2 .*; got 1"):
    attr.sloc(clf, x, t, key=KEY, num_masks=2, tune_masks=1, steps=2)
  with pytest.raises(ValueError, match="tune_masks must be >= 2 .*; got 1"):
    attr.calibrate_p(clf, x, t, key=KEY, tune_masks=1)


def test_zero_masks_are_refused():
  with pytest.raises(ValueError, match="num_masks must be >= 1; got 0"):
    S.sample_masks(KEY, (8, 8), (2, 4), 0.5, 0)
  empty_set = gm.sample_grid_masks(KEY, (8, 8), 2, 0.5, 0)
  with pytest.raises(ValueError, match="masks must hold at least one mask"):
    S.sloc_fit(empty_set, jnp.zeros((0,)), jnp.ones((8, 8)), steps=2)
  with pytest.raises(ValueError, match="masks must hold at least one mask"):
    S.sloc_fit(jnp.zeros((0, 8, 8)), jnp.zeros((0,)), jnp.ones((8, 8)),
               steps=2)


def test_a_tiny_p_is_refused_eagerly_and_terminates_under_jit():
  with pytest.raises(ValueError, match=r"p must be >= .* for 4-pixel cells "
                     r"on \(8, 8\) images .*; got 1e-09"):
    gm.sample_grid_masks(KEY, (8, 8), 4, 1e-9, 3)
  # A traced p cannot be refused: the redraw loop stops after MAX_DRAWS
  # draws and forces one cell on, so every mask has pixels.
  masks = jax.jit(lambda p: gm.sample_grid_masks(KEY, (8, 8), 4, p, 5))(
      jnp.float32(1e-9))
  sizes = np.asarray(masks.sizes())
  assert np.all(sizes > 0)
  # Each forced mask is one cell (a partial border cell may be smaller).
  assert np.all(np.asarray(masks.cells).sum((1, 2)) == 1)


@pytest.mark.parametrize("method,kw", [
    (attr.gradient, {}),
    (attr.grad_cam, {"layer": "block2"}),
])
def test_b_by_1_targets_are_a_class_set_of_one(cnn, method, kw):
  """``[B, 1]`` means C' = 1: maps ``[B, 1, H, W]``, each equal to the map
  of the ``[B]`` column (the rank of the targets decides, not the size)."""
  clf, x = cnn
  column = jnp.array([2, 0, 3])
  single = method(clf, x, column, **kw)
  as_set = method(clf, x, column[:, None], **kw)
  assert single.shape == x.shape[:3]
  assert as_set.shape == (x.shape[0], 1, *x.shape[1:3])
  np.testing.assert_allclose(as_set[:, 0], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,kw", [
    (attr.grad_cam, {}), (attr.grad_cam_plus_plus, {}), (attr.layer_cam, {}),
    (attr.score_cam, {}), (attr.lafam, {}),
])
def test_cams_on_a_non_spatial_layer_name_the_layer_and_its_shape(
    method, kw):
  model, v, _, x = linear_head()
  clf = from_flax(model, v, layers=["head"])
  with pytest.raises(ValueError, match=r"layer 'head' must be a spatial "
                     r"feature map \[B, h, w, c\] .*; its output has shape "
                     r"\(2, 3\)"):
    method(clf, x, jnp.array([0, 1]), layer="head", **kw)


class WideLayer(nn.Module):
  """A thin full-resolution conv, then a 64-channel 8x8 layer."""

  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Conv(2, (3, 3), name="stem")(x))
    a = nn.relu(nn.Conv(64, (4, 4), strides=(4, 4), name="wide")(a))
    return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))


def _largest_intermediate(jaxpr) -> int:
  """Elements of the largest array any equation makes, in every sub-jaxpr."""
  largest = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      largest = max(largest, int(np.prod(getattr(v.aval, "shape", ()))))
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          largest = max(largest, _largest_intermediate(inner))
  return largest


def test_score_cam_memory_is_bounded_by_chunk_size_not_channels():
  model = WideLayer()
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  clf = from_flax(model, model.init(KEY, x), layers=["wide"])
  t = jnp.array([0, 1, 2, 0])
  # chunk_size 4 < B * channels: one channel of the batch per pass.
  jaxpr = jax.make_jaxpr(lambda x, t: attr.score_cam(
      clf, x, t, layer="wide", chunk_size=4))(x, t).jaxpr
  all_channel_masks = 4 * 32 * 32 * 64
  assert _largest_intermediate(jaxpr) <= all_channel_masks // 8


# -- warnings about likely misuse -------------------------------------------


def _no_warning(fn):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    return fn()


def test_a_classifier_returning_probabilities_warns_once(cnn):
  clf, x = cnn

  def apply(x, deltas=None):
    logits, feats = clf.apply(x, deltas)
    return jax.nn.softmax(logits), feats

  probs = Classifier(apply=apply, layers=clf.layers)
  t = jnp.array([0, 1, 2])
  with pytest.warns(UserWarning, match="outputs look like probabilities .* "
                    "lapjax expects logits.*drop the final softmax"):
    attr.gradient(probs, x, t)
  _no_warning(lambda: attr.grad_cam(probs, x, t, layer="block2"))
  # Logits that happen to be positive do not warn.
  shifted = Classifier(apply=lambda x, d=None: (clf.apply(x, d)[0] + 10,
                                                clf.apply(x, d)[1]),
                       layers=clf.layers)
  _no_warning(lambda: attr.gradient(shifted, x, t))


def test_images_in_0_255_warn_once(cnn):
  clf, x = cnn
  fresh = Classifier(apply=lambda x, d=None: clf.apply(x, d),
                     layers=clf.layers)
  pixels = jnp.round(jax.random.uniform(jax.random.key(2), x.shape) * 255)
  t = jnp.array([0, 1, 2])
  with pytest.warns(UserWarning, match=r"x has values in \[0, 255\]: float "
                    r"images in \[0, 255\]\? .* x / 255"):
    attr.gradient(fresh, pixels, t)
  _no_warning(lambda: attr.gradient(fresh, pixels, t))
  _no_warning(lambda: attr.gradient(fresh, pixels / 255, t))
