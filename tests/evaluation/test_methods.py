"""The evaluation's method table and the classifiers its methods run on."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax.evaluation import explanations
from lapjax.evaluation.methods import (
  CLASSIFIER_KINDS,
  Method,
  method_classifiers,
  standard_methods,
)
from lapjax.lap.dcs import one_vs_others
from lapjax.models.vit import VisionTransformer
from tests.attribution.models import small_cnn

KEY = jax.random.key(0)


def _table():
  return standard_methods("block2", key=KEY, image_size=32, sloc_p=(0.5,),
                          lap_layers=("block1", "block2"),
                          dcs=one_vs_others(4, bgo=0))


def test_every_method_accepts_its_options():
  """Each entry's options are keyword arguments of its function, so no
  method fails on a misspelt option only when a user selects it."""
  for name, m in _table().items():
    params = inspect.signature(m.fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
      continue                    # sloc_m passes its options on to sloc
    unknown = [k for k in m.kwargs if k not in params]
    assert not unknown, (name, unknown)
    assert m.classifier in CLASSIFIER_KINDS, name


def test_unknown_classifier_kind_is_refused():
  model, v, _ = small_cnn()
  with pytest.raises(ValueError, match=r"unknown Method.classifier \['x'\]"):
    method_classifiers({"m": Method(attr.gradient, {}, classifier="x")},
                       model, v, layers=["block2"], input_shape=(12, 20, 3))


def test_cnn_methods_on_their_classifiers_equal_direct_calls():
  """Relevance and FullGrad methods get the classifiers they need."""
  model, v, x = small_cnn()
  table = _table()
  methods = {n: table[n] for n in ("lrp", "deeplift", "fullgrad",
                                   "xgrad_cam")}
  clfs = method_classifiers(methods, model, v, layers=["block2"],
                            input_shape=x.shape[1:])
  assert set(clfs) == {"plain", "relevance", "fullgrad"}
  labels = np.array([0, 3, 1])
  maps = explanations.explain(clfs, np.asarray(x), labels, methods)
  t = jnp.asarray(labels)
  relevance = attr.relevance_classifier(model, v, layers=["block2"])
  np.testing.assert_allclose(maps["lrp"], attr.lrp(
      relevance, x, t, composite="epsilon_plus_flat"), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps["deeplift"], attr.deeplift(
      relevance, x, t), rtol=1e-5, atol=1e-6)
  bias_taps = attr.fullgrad_classifier(model, v, input_shape=x.shape[1:])
  np.testing.assert_allclose(maps["fullgrad"], attr.fullgrad(
      bias_taps, x, t), rtol=1e-5, atol=1e-6)


def test_transformer_methods_need_attention():
  model, v, x = small_cnn()
  methods = {"grad_rollout": _table()["grad_rollout"]}
  with pytest.raises(ValueError, match="has no attention layer"):
    method_classifiers(methods, model, v, layers=["block2"],
                       input_shape=x.shape[1:])


def test_transformer_methods_run_on_a_vit():
  module = VisionTransformer(num_classes=3, patch_size=8, embed_dim=16,
                             depth=2, num_heads=2, image_size=(16, 24))
  x = jax.random.uniform(jax.random.key(1), (2, 16, 24, 3))
  v = module.init(jax.random.key(2), x)
  table = standard_methods("block2/norm1", key=KEY, image_size=16)
  methods = {n: table[n] for n in ("grad_rollout", "t_attr", "inflow",
                                   "grad_cam")}
  clfs = method_classifiers(methods, module, v, layers=["block2/norm1"],
                            input_shape=x.shape[1:])
  maps = explanations.explain(clfs, np.asarray(x), np.array([0, 2]),
                              methods)
  for name, m in maps.items():
    assert m.shape == (2, 16, 24), name
  np.testing.assert_allclose(
      maps["grad_rollout"], attr.gae(clfs["attention"], x,
                                     jnp.array([0, 2])),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      maps["inflow"], attr.inflow(attr.inflow_classifier(module, v), x,
                                  jnp.array([0, 2])),
      rtol=1e-5, atol=1e-6)
