"""Transformer attribution methods: closed forms and the authors' code.

Closed forms use a hand-made classifier whose only layer is a fixed
attention matrix (``deltas`` still perturb it) and whose logits are linear
in it, so every gradient is known. The cross-checks compare with maps the
authors' released code computed on a reduced-size ViT with fixed weights
(``tools/fixtures/make_transformer.py``); no torch here.
"""

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lapjax
from lapjax.attribution import lens, postprocess
from lapjax.attribution import transformer as tr
from lapjax.attribution.relevance_transformer import (
  transformer_relevance_classifier,
)
from lapjax.classifier import Classifier
from lapjax.models import vit
from lapjax.models.weights import import_weights
from lapjax.tokens import TokenLayout

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
LAYOUT = TokenLayout(patch_size=(8, 8), num_prefix_tokens=1)
DEPTH = 4


# --- Closed forms on hand-set attention -------------------------------------

TOKENS = 5                 # class token + a 2 x 2 grid of 2 x 2 patches
SMALL = TokenLayout(patch_size=(2, 2), num_prefix_tokens=1)


def _attention(seed: int, heads: int = 2) -> np.ndarray:
  """A row-stochastic ``[1, heads, T, T]`` attention matrix."""
  a = np.random.default_rng(seed).uniform(0.1, 1.0, (1, heads, TOKENS,
                                                     TOKENS))
  return (a / a.sum(-1, keepdims=True)).astype(np.float32)


def _hand_set(attentions, weights):
  """A classifier whose taps are the given attention matrices and whose
  logits are ``logit_k = sum_l <W_lk, A_l> + mean(x)``: ``dlogit_k / dA_l
  = W_lk``, whatever ``x`` is."""
  names = tuple(f"block{i + 1}/attn/probs" for i in range(len(attentions)))

  def apply(x, deltas=None):
    deltas = deltas or {}
    feats = {n: jnp.broadcast_to(jnp.asarray(a), (x.shape[0], *a.shape[1:]))
             + deltas.get(n, 0.0) for n, a in zip(names, attentions)}
    logits = sum(jnp.einsum("bhij,khij->bk", feats[n], w)
                 for n, w in zip(names, weights))
    return logits + x.mean((1, 2, 3))[:, None], feats

  return Classifier(apply=apply, layers=names)


def _weights(seed: int, classes: int = 3, heads: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).normal(
      size=(classes, heads, TOKENS, TOKENS)).astype(np.float32)


X_SMALL = jnp.ones((1, 4, 4, 3), jnp.float32)


def _patch_map(row: np.ndarray) -> np.ndarray:
  return row[1:].reshape(2, 2)


def test_rollout_of_one_layer_is_half_the_mean_attention_row():
  a = _attention(0)
  clf = _hand_set([a], [_weights(1)])
  got = tr.attention_rollout(clf, X_SMALL, tokens=SMALL, resize=False)
  expected = 0.5 * (a[0].mean(0) + np.eye(TOKENS))
  np.testing.assert_allclose(got[0], _patch_map(expected[0]), rtol=1e-6)


def test_rollout_multiplies_deeper_layers_on_the_left():
  a1, a2 = _attention(2), _attention(3)
  clf = _hand_set([a1, a2], [_weights(4), _weights(5)])
  got = tr.attention_rollout(clf, X_SMALL, tokens=SMALL, resize=False)
  m1, m2 = (0.5 * (a[0].mean(0) + np.eye(TOKENS)) for a in (a1, a2))
  np.testing.assert_allclose(got[0], _patch_map((m2 @ m1)[0]), rtol=1e-5)
  # Starting at the second block leaves only its matrix.
  got2 = tr.attention_rollout(clf, X_SMALL, tokens=SMALL, resize=False,
                              start_block=1)
  np.testing.assert_allclose(got2[0], _patch_map(m2[0]), rtol=1e-6)


def test_gae_of_one_layer_is_the_formula_by_hand():
  a, w = _attention(6), _weights(7)
  clf = _hand_set([a], [w])
  got = tr.gae(clf, X_SMALL, jnp.array([[0, 2]]), tokens=SMALL, resize=False)
  for j, k in enumerate((0, 2)):
    bar = np.maximum(w[k] * a[0], 0).mean(0)             # E_h[(dA * A)^+]
    r = np.eye(TOKENS) + bar @ np.eye(TOKENS)
    np.testing.assert_allclose(got[0, j], _patch_map(r[0]), rtol=1e-6)


def test_gae_of_two_layers_accumulates_r_plus_a_r():
  (a1, a2), (w1, w2) = (_attention(8), _attention(9)), (_weights(10),
                                                        _weights(11))
  clf = _hand_set([a1, a2], [w1, w2])
  got = tr.gae(clf, X_SMALL, jnp.array([1]), tokens=SMALL, resize=False)
  r = np.eye(TOKENS)
  for a, w in ((a1, w1), (a2, w2)):
    r = r + np.maximum(w[1] * a[0], 0).mean(0) @ r
  np.testing.assert_allclose(got[0], _patch_map(r[0]), rtol=1e-5)


def test_t_attn_and_bi_attn_of_one_layer_by_hand():
  # The logits are linear in A, so every point of the integrated gradient
  # is W itself.
  a, w = _attention(12), _weights(13)
  clf = _hand_set([a], [w])
  feedback = np.maximum(w[2], 0).mean(0)[0]              # E_h[(grad)^+]_cls
  got = tr.t_attn(clf, X_SMALL, jnp.array([2]), tokens=SMALL, resize=False,
                  start_block=0, steps=3)
  np.testing.assert_allclose(
      got[0], _patch_map(a[0].mean(0)[0] * feedback), rtol=1e-5)

  agree = np.abs(np.einsum("hki,hkj->hij", a[0], w[2])).mean((1, 2))
  mixed = np.einsum("h,hij->ij", agree / agree.sum(), a[0])
  r = np.eye(TOKENS) + mixed
  got = tr.bi_attn(clf, X_SMALL, jnp.array([2]), tokens=SMALL, resize=False,
                   start_block=0, steps=3)
  np.testing.assert_allclose(got[0], _patch_map(r[0] * feedback), rtol=1e-5)


def test_a_cnn_or_a_missing_layout_is_refused():
  def apply(x, deltas=None):
    feats = {"conv": jnp.zeros((x.shape[0], 2, 2, 4))}
    return jnp.zeros((x.shape[0], 3)), feats

  cnn = Classifier(apply=apply, layers=("conv",))
  for method in (tr.attention_rollout, tr.gae, tr.bi_attn, tr.t_attn,
                 tr.transformer_attribution, tr.inflow):
    with pytest.raises(ValueError, match="taps no attention layer.*conv"):
      method(cnn, X_SMALL, jnp.array([0]), tokens=SMALL)
  clf = _hand_set([_attention(0)], [_weights(1)])
  with pytest.raises(ValueError, match="token layout"):
    tr.gae(clf, X_SMALL, jnp.array([0]))
  with pytest.raises(ValueError, match="5 tokens; expected 7.*2x3 patch"):
    tr.gae(clf, jnp.ones((1, 4, 6, 3)), jnp.array([0]), tokens=SMALL)


# --- The authors' code on a reduced-size ViT --------------------------------


@pytest.fixture(scope="module")
def reference():
  module = vit.VisionTransformer(num_classes=10, patch_size=8, embed_dim=48,
                                 depth=DEPTH, num_heads=3,
                                 image_size=(32, 48))
  variables = import_weights(module, FIXTURES / "transformer" /
                             "vit_depth4.pth", layout=vit.LAYOUTS["timm"])
  taps = vit.attention_taps(DEPTH)
  clf = lapjax.from_flax(module, variables, layers=taps)
  relevance_clf = transformer_relevance_classifier(module, variables,
                                                   layers=taps)
  fx = dict(np.load(FIXTURES / "transformer" / "maps.npz"))
  return clf, relevance_clf, fx, (module, variables)


def _assert_maps(got, expected):
  expected = expected.reshape(got.shape)
  np.testing.assert_allclose(got, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def _maps(method, clf, fx, **options):
  return method(clf, jnp.asarray(fx["input"]), jnp.asarray(fx["targets"]),
                resize=False, **options)


def test_the_fixture_model_is_the_authors_model(reference):
  clf, relevance_clf, fx, _ = reference
  x = jnp.asarray(fx["input"])
  np.testing.assert_allclose(clf.apply(x)[0], fx["logits"], rtol=1e-5,
                             atol=1e-5 * np.abs(fx["logits"]).max())
  np.testing.assert_array_equal(relevance_clf.apply(x)[0], clf.apply(x)[0])
  # The methods below read the token layout from the classifier.
  assert clf.tokens == relevance_clf.tokens == LAYOUT


def test_rollout_equals_chefers_baseline(reference):
  clf, _, fx, _ = reference
  got = tr.attention_rollout(clf, jnp.asarray(fx["input"]),
                             resize=False)
  _assert_maps(got, fx["rollout"])


def test_gae_equals_the_released_generic_attribution(reference):
  clf, _, fx, _ = reference
  _assert_maps(_maps(tr.gae, clf, fx), fx["gae"])


def test_transformer_attribution_equals_chefers_lrp(reference):
  # In float64 on both sides: this random model's relevance cancels enough
  # that float32 rounding moves either code's map by ~2e-3 of its maximum.
  _, _, fx, (module, variables) = reference
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                             variables)
    clf = transformer_relevance_classifier(module, variables,
                                           layers=vit.attention_taps(DEPTH))
    got = tr.transformer_attribution(
        clf, jnp.asarray(fx["input"], jnp.float64),
        jnp.asarray(fx["targets"]), resize=False)
    assert got.dtype == jnp.float64
  expected = fx["t_attr"].reshape(got.shape)
  np.testing.assert_allclose(got, expected, rtol=1e-9,
                             atol=1e-9 * np.abs(expected).max())


def test_bi_attn_equals_chens_code(reference):
  clf, _, fx, _ = reference
  _assert_maps(_maps(tr.bi_attn, clf, fx, start_block=1, steps=20),
               fx["bi_attn"])


def test_t_attn_equals_yuans_code(reference):
  clf, _, fx, _ = reference
  _assert_maps(_maps(tr.t_attn, clf, fx, start_block=1, steps=20),
               fx["t_attn"])


def test_single_targets_and_cotangents_match_the_class_set(reference):
  clf, _, fx, _ = reference
  x, targets = jnp.asarray(fx["input"]), jnp.asarray(fx["targets"])
  both = tr.gae(clf, x, targets, resize=False)
  one = tr.gae(clf, x, targets[:, 1], resize=False)
  np.testing.assert_allclose(one, both[:, 1], rtol=1e-6)
  cot = jax.nn.one_hot(targets[:, 1], 10)
  np.testing.assert_allclose(
      tr.gae(clf, x, cot, resize=False), one, rtol=1e-6)
  # At input resolution: the native map resized bilinearly.
  full = tr.gae(clf, x, targets[:, 1])
  np.testing.assert_allclose(
      full, postprocess.resize(one, (32, 48), "bilinear"), rtol=1e-6)


@pytest.mark.parametrize("method,options", [
    (tr.gae, {}), (tr.transformer_attribution, {}),
    (tr.bi_attn, {"start_block": 1, "steps": 20}),
    (tr.t_attn, {"start_block": 1, "steps": 20}),
    (tr.attention_rollout, {})])
def test_attribution_lens_around_each_method(reference, method, options):
  clf, relevance_clf, fx, _ = reference
  clf = relevance_clf if method is tr.transformer_attribution else clf
  x, class_set = jnp.asarray(fx["input"]), jnp.asarray(fx["targets"])
  got = lens.attribution_lens(method, clf, x, class_set,
                              resize=False, **options)
  maps = np.asarray(method(clf, x, class_set, resize=False,
                           **options), np.float64)
  # The paper's lens, by hand: mean softmax over the class axis at 1/t in
  # {1, 5, 100}, kept above chance.
  soft = 0
  for s in (1.0, 5.0, 100.0):
    e = np.exp(s * (maps - maps.max(1, keepdims=True)))
    soft = soft + e / e.sum(1, keepdims=True) / 3
  expected = maps * soft * (soft > 0.5)
  np.testing.assert_allclose(got, expected, rtol=1e-5,
                             atol=1e-6 * np.abs(maps).max())
  if method is tr.attention_rollout:
    # Label-free: every class has the same map, so nothing is above chance.
    assert not np.any(got)
  else:
    assert np.any(got)


# --- InFlow ------------------------------------------------------------------


def _inflow_hand_set(a, w, v, tokens):
  """One block as ``inflow_classifier`` reports it: hand-set attention
  ``a``, attention output, MLP output and block output ``tokens`` (fixed),
  logits ``<W_k, A>`` and block scores ``<V_k, A>`` (so the final and the
  bottom-up attention gradients are ``W_k`` and ``V_k``)."""
  attn_out, mlp_out, block_out = (jnp.asarray(t) for t in tokens)

  def apply(x, deltas=None):
    deltas = deltas or {}
    probs = jnp.broadcast_to(jnp.asarray(a), (x.shape[0], *a.shape[1:])) + (
        deltas.get("block1/attn/probs", 0.0))
    feats = {"block1/attn/probs": probs, "block1/attn": attn_out,
             "block1/mlp": mlp_out, "block1": block_out,
             "block1/probe": jnp.einsum("bhij,khij->bk", probs, v)}
    return jnp.einsum("bhij,khij->bk", probs, w), feats

  return Classifier(apply=apply, layers=("block1/attn/probs",))


def test_inflow_of_one_block_is_the_formula_by_hand():
  a, w, v = _attention(14), _weights(15), _weights(16)
  rng = np.random.default_rng(17)
  attn_out, mlp_out, block_out = rng.normal(
      size=(3, 1, TOKENS, 4)).astype(np.float32)
  clf = _inflow_hand_set(a, w, v, (attn_out, mlp_out, block_out))
  got = tr.inflow(clf, X_SMALL, jnp.array([[0, 2]]), tokens=SMALL,
                  resize=False)
  norm = functools.partial(np.linalg.norm, axis=-1)
  resid = block_out[0] - mlp_out[0]                      # input + attention
  n_in, n_attn = norm(resid - attn_out[0]), norm(attn_out[0])
  n_resid, n_mlp = norm(resid), norm(mlp_out[0])
  keep_in, attn_share = n_in / (n_in + n_attn), n_attn / (n_in + n_attn)
  keep_resid, mlp_share = (n_resid / (n_resid + n_mlp),
                           n_mlp / (n_resid + n_mlp))
  ratio = (mlp_share / keep_resid) / (mlp_share / keep_resid).sum()
  for j, k in enumerate((0, 2)):
    agree = np.abs(np.einsum("hki,hkj->hij", a[0], w[k])).mean((1, 2))
    kept = (a[0] * (agree / agree.sum())[:, None, None]).max(0)
    kept = np.maximum(v[k].mean(0) * kept, 0)            # bottom-up gradient
    m = kept * attn_share[None] + np.diag(keep_in)       # columns scaled
    m = m * (ratio * mlp_share + keep_resid)[None]
    m = m / m.sum(-1, keepdims=True)
    np.testing.assert_allclose(got[0, j], _patch_map(m[0]), rtol=1e-5)


def test_inflow_equals_walkers_code(reference):
  _, _, fx, (module, variables) = reference
  clf = tr.inflow_classifier(module, variables)
  # The classifier is the model: same logits, raw tokens, block scores.
  x = jnp.asarray(fx["input"])
  logits, feats = clf.apply(x)
  np.testing.assert_allclose(logits, fx["logits"], rtol=1e-5,
                             atol=1e-5 * np.abs(fx["logits"]).max())
  assert feats["block4"].shape == (2, 25, 48)
  assert feats["block4/probe"].shape == (2, 10)
  expected = np.load(FIXTURES / "transformer" / "inflow.npz")
  for name, options in (
      ("inflow", {}),
      ("inflow_attention_residual", {"residuals": "attention"}),
      ("inflow_without_gradient", {"bottom_up_gradient": False})):
    _assert_maps(_maps(tr.inflow, clf, fx, **options), expected[name])


def test_inflow_needs_its_classifier_and_a_vit(reference):
  clf, _, fx, (module, variables) = reference
  with pytest.raises(ValueError, match="inflow_classifier"):
    _maps(tr.inflow, clf, fx)
  with pytest.raises(ValueError, match="VisionTransformer; got Dense"):
    tr.inflow_classifier(nn.Dense(3), {})
  inflow_clf = tr.inflow_classifier(module, variables)
  with pytest.raises(ValueError, match="residuals must be"):
    _maps(tr.inflow, inflow_clf, fx, residuals="mlp")
