"""Property-based tests (hypothesis) over shapes, dtypes and values: every
public metric and the attribution contract on tiny models (issue 15, item
18). Draws: batch sizes 1-5, H != W in both orientations, maps with ties,
constants, zeros, NaN and infinities, masks empty, full or random.

Jitted bundles keep compilations to one per shape (a few shapes, drawn),
and every draw is derandomised, so the suite is reproducible and fast.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lapjax import attribution as attr
from lapjax import metrics
from lapjax.attribution import postprocess as pp
from lapjax.metrics import faithfulness as F
from lapjax.metrics import saliency as S
from tests.attribution.models import linear_classifier, linear_head

SHAPES = ((3, 5), (5, 3))               # H != W, both orientations
MAP_KINDS = ("random", "ties", "constant", "zero", "nan", "inf")
MASK_KINDS = ("random", "empty", "full")


def _settings(n):
  return settings(max_examples=n, deadline=None, derandomize=True,
                  database=None, suppress_health_check=[HealthCheck.too_slow])


def _map(rng, kind, h, w):
  if kind == "random":
    return rng.normal(size=(h, w))
  if kind == "ties":
    return rng.integers(-1, 3, size=(h, w)).astype(float)
  if kind == "constant":
    return np.full((h, w), rng.normal())
  if kind == "zero":
    return np.zeros((h, w))
  m = rng.normal(size=(h, w))
  m[rng.integers(h), rng.integers(w)] = (np.nan if kind == "nan"
                                         else rng.choice([np.inf, -np.inf]))
  return m


def _mask(rng, kind, h, w):
  if kind == "empty":
    return np.zeros((h, w), bool)
  if kind == "full":
    return np.ones((h, w), bool)
  return rng.random((h, w)) < 0.4


@st.composite
def cases(draw, shapes=SHAPES, map_kinds=MAP_KINDS):
  """``(maps [B, H, W] float32, masks [B, H, W] bool)``, kinds per example."""
  b = draw(st.integers(1, 5))
  h, w = draw(st.sampled_from(shapes))
  kinds = draw(st.lists(st.tuples(st.sampled_from(map_kinds),
                                  st.sampled_from(MASK_KINDS)),
                        min_size=b, max_size=b))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  maps = np.stack([_map(rng, k, h, w) for k, _ in kinds]).astype(np.float32)
  masks = np.stack([_mask(rng, k, h, w) for _, k in kinds])
  return maps, masks


@jax.jit
def _localisation(maps, masks):
  binary = maps > jnp.nanmedian(maps, axis=(1, 2), keepdims=True)
  return {
      "pg_fraction": metrics.pointing_game(maps, masks),
      "pg_all": metrics.pointing_game(maps, masks, ties="all"),
      "pg_any": metrics.pointing_game(maps, masks, ties="any"),
      "pg_tolerance": metrics.pointing_game(maps, masks, tolerance=1.5),
      "mass_positive": metrics.relevance_mass_accuracy(maps, masks),
      "mass_abs": metrics.relevance_mass_accuracy(maps, masks, sign="abs"),
      "mass_all": metrics.relevance_mass_accuracy(maps, masks, sign="all"),
      "rank": metrics.relevance_rank_accuracy(maps, masks),
      "top_k": metrics.top_k_intersection(maps, masks, k=4),
      "roc": metrics.roc_auc(maps, masks),
      "region": metrics.region_attribution(maps, masks, kernel_size=3,
                                           blur_sigma=1.0),
      "iou": metrics.iou(binary, masks),
      "f1": metrics.f1(binary, masks),
      "sparseness": metrics.sparseness(maps),
      "validity": metrics.validity(maps, masks),
  }


def _padded(maps, masks):
  """``_localisation`` of ``B <= 5`` examples, computed in a batch padded
  to 5 (one compilation per shape; the batch test shows padding does not
  matter)."""
  b = maps.shape[0]
  pad = lambda a: np.concatenate([a, np.repeat(a[:1], 5 - b, 0)])
  return {k: np.asarray(v)[:b]
          for k, v in _localisation(pad(maps), pad(masks)).items()}


def _nan_equal(a, b, **kw):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), equal_nan=True,
                             **kw)


@_settings(40)
@given(cases())
def test_localisation_metrics_on_any_draw(case):
  maps, masks = case
  b, h, w = maps.shape
  out = _padded(maps, masks)
  finite = np.isfinite(maps).all((1, 2))
  empty, full = ~masks.any((1, 2)), masks.all((1, 2))
  const = finite & (maps.max((1, 2)) == maps.min((1, 2)))
  no_score = ~finite | empty | full
  for k, v in out.items():
    assert v.shape == (b,), k
  # Codes: first of non-finite, empty, full, constant.
  expected = np.select([~finite, empty, full, const], [1, 2, 3, 4], 0)
  np.testing.assert_array_equal(out["validity"], expected)
  for k in ("pg_fraction", "pg_all", "pg_any", "pg_tolerance", "rank",
            "top_k"):
    np.testing.assert_array_equal(np.isnan(out[k]), no_score | const, k)
  np.testing.assert_array_equal(np.isnan(out["roc"]), no_score)
  np.testing.assert_allclose(out["roc"][const & ~no_score], 0.5)
  pos_mass = np.where(finite, np.maximum(maps, 0).sum((1, 2)), 0) > 0
  np.testing.assert_array_equal(np.isnan(out["mass_positive"]),
                                no_score | ~pos_mass)
  for k in ("mass_all", "mass_abs", "region"):
    assert np.isnan(out[k][no_score]).all(), k
  for k in ("pg_fraction", "pg_all", "pg_any", "pg_tolerance", "rank",
            "top_k", "roc", "mass_positive", "mass_abs", "region", "iou",
            "f1"):
    v = out[k][~np.isnan(out[k])]
    assert ((v >= -1e-6) & (v <= 1 + 1e-6)).all(), k
  ok = ~np.isnan(out["pg_all"])
  assert (out["pg_all"][ok] <= out["pg_fraction"][ok] + 1e-6).all()
  assert (out["pg_fraction"][ok] <= out["pg_any"][ok] + 1e-6).all()
  assert (out["pg_any"][ok] <= out["pg_tolerance"][ok]).all()
  np.testing.assert_array_equal(np.isnan(out["iou"]), empty)
  ok = ~empty
  assert (out["iou"][ok] <= out["f1"][ok] + 1e-6).all()
  zero = finite & (np.abs(maps).sum((1, 2)) == 0)
  np.testing.assert_array_equal(np.isnan(out["sparseness"]), ~finite | zero)
  v = out["sparseness"][~np.isnan(out["sparseness"])]
  assert ((v >= -1e-6) & (v <= 1 - 1 / (h * w) + 1e-6)).all()


@_settings(15)
@given(cases())
def test_batch_items_scale_and_transposition_do_not_matter(case):
  """Each example alone scores what it scores in the batch; doubling a map
  changes no score; transposing maps and masks (H <-> W) changes none
  that has no flat-index tie rule."""
  maps, masks = case
  out = _localisation(maps, masks)
  doubled = _localisation(2 * maps, masks)
  flipped = _localisation(maps.transpose(0, 2, 1), masks.transpose(0, 2, 1))
  for i in range(maps.shape[0]):
    alone = _localisation(maps[i:i + 1], masks[i:i + 1])
    for k in out:
      _nan_equal(out[k][i:i + 1], alone[k], rtol=1e-5, atol=1e-6,
                 err_msg=k)
  for k in out:
    _nan_equal(out[k], doubled[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for k in ("pg_fraction", "pg_all", "pg_any", "pg_tolerance",
            "mass_positive", "mass_abs", "mass_all", "roc", "region", "iou",
            "f1", "sparseness", "validity"):
    _nan_equal(out[k], flipped[k], rtol=1e-5, atol=1e-6, err_msg=k)


@_settings(30)
@given(cases())
def test_summaries_count_every_example_once(case):
  maps, masks = case
  out = _padded(maps, masks)
  v, codes = out["pg_all"], out["validity"]
  s = metrics.nan_summary(v, codes)
  assert s["n"] + s["nan"] == len(v)
  assert s["invalid"] == int((codes == metrics.NONFINITE_MAP).sum())
  assert s["invalid"] + s["undefined"] == s["nan"]
  mask_side = (codes == metrics.EMPTY_MASK) | (codes == metrics.FULL_MASK)
  worst = metrics.worst_case(v, codes)
  np.testing.assert_array_equal(np.isnan(worst), mask_side)
  expected = np.where(np.isnan(v), 0.0, v)[~mask_side]
  if expected.size:
    assert s["worst_mean"] == expected.mean()
    assert s["worst_mean"] <= (s["mean"] if s["n"] else 0.0) + 1e-12


@_settings(20)
@given(cases(map_kinds=("random", "ties", "constant", "zero", "nan")),
       st.sampled_from([np.bool_, np.float32, np.int32]),
       st.sampled_from([0.25, 0.5, 1.0]))
def test_saliency_metrics_on_any_draw(case, mask_dtype, fraction):
  maps, masks = case
  h_hat = np.abs(maps)
  m = masks.astype(mask_dtype)
  top = np.asarray(S.top_saliency_precision(h_hat, m, fraction=fraction))
  mass = np.asarray(S.all_saliency_precision(h_hat, m))
  finite = np.isfinite(h_hat).all((1, 2))
  empty = ~masks.any((1, 2))
  np.testing.assert_array_equal(np.isnan(top), empty | ~finite)
  no_mass = finite & (h_hat.sum((1, 2)) == 0)
  np.testing.assert_array_equal(np.isnan(mass), empty | ~finite | no_mass)
  for v in (top, mass):
    v = v[~np.isnan(v)]
    assert ((v >= 0) & (v <= 1 + 1e-6)).all()
  if fraction == 1.0:      # the top set is every pixel: the mask's share
    ok = ~np.isnan(top)
    np.testing.assert_allclose(top[ok], masks.mean((1, 2))[ok], rtol=1e-6)


FH, FW = 3, 5
_WEIGHTS = jax.random.normal(jax.random.key(0), (3, FH, FW, 2))
_BIAS = jnp.array([0.5, -1.0, 2.0])


@jax.jit
def _curves(x, maps, t):
  clf = linear_classifier(_WEIGHTS, _BIAS)
  kw = dict(fractions=(0.0, 0.2, 0.6, 1.0), score="logit")
  return (F.perturbation_curve(clf, x, maps, t, mode="delete", **kw),
          F.perturbation_curve(clf, x, maps, t, mode="insert", **kw))


@_settings(15)
@given(cases(shapes=((FH, FW),)), st.integers(0, 2**32 - 1))
def test_perturbation_curves_on_any_draw(case, seed):
  """Linear model, baseline 0: deleting a set and inserting it add up to
  the clean logit plus the bias at every fraction; both ends are the clean
  and the bias logits; non-finite maps give NaN rows only."""
  maps, _ = case
  b = maps.shape[0]
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(size=(b, FH, FW, 2)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 3, b), jnp.int32)
  dele, ins = (np.asarray(c) for c in _curves(x, maps, t))
  finite = np.isfinite(maps).all((1, 2))
  assert np.isnan(dele[~finite]).all() and np.isnan(ins[~finite]).all()
  assert np.isfinite(dele[finite]).all() and np.isfinite(ins[finite]).all()
  clean = np.einsum("khwc,bhwc->bk", _WEIGHTS, x)[np.arange(b), t]
  bias = np.asarray(_BIAS)[np.asarray(t)]
  full = (clean + bias)[finite]
  np.testing.assert_allclose(
      dele[finite] + ins[finite],
      np.broadcast_to((full + bias[finite])[:, None], dele[finite].shape),
      rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dele[finite, 0], full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ins[finite, -1], full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dele[finite, -1], bias[finite], atol=1e-5)
  doubled = np.asarray(_curves(x, 2 * maps, t)[0])
  _nan_equal(doubled, dele, rtol=1e-6)


_HEAD = linear_head(shape=(1, *SHAPES[0], 3))


@_settings(6)
@given(st.integers(1, 5), st.sampled_from(SHAPES),
       st.integers(0, 2**32 - 1))
def test_attribution_contract_on_a_tiny_model(b, shape, seed):
  """Gradient, integrated gradients and Grad-CAM: ``[B, H, W]`` float32,
  finite; item ``i`` unchanged when the other items are replaced (no
  batch cross-talk); on a linear model the gradient is ``sum_c W[t]`` and
  integrated gradients from 0 is ``sum_c x W[t]`` (completeness)."""
  _, _, clf, _ = _HEAD
  rng = np.random.default_rng(seed)
  h, w = shape
  x = jnp.asarray(rng.normal(size=(b, h, w, 3)), jnp.float32)
  other = x.at[1:].set(jnp.asarray(rng.normal(size=(b - 1, h, w, 3)),
                                   jnp.float32))
  t = jnp.asarray(rng.integers(0, 3, b), jnp.int32)
  methods = {
      "gradient": lambda x: attr.gradient(clf, x, t),
      "ig": lambda x: attr.integrated_gradients(clf, x, t, steps=4),
      "grad_cam": lambda x: attr.grad_cam(clf, x, t, layer="features"),
  }
  for name, f in methods.items():
    a, a2 = f(x), f(other)
    assert a.shape == (b, h, w) and a.dtype == jnp.float32, name
    assert bool(jnp.isfinite(a).all()), name
    np.testing.assert_allclose(a[0], a2[0], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  wts = jnp.asarray(rng.normal(size=(3, h, w, 3)), jnp.float32)
  lin = linear_classifier(wts)
  np.testing.assert_allclose(attr.gradient(lin, x, t),
                             wts[t].sum(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attr.integrated_gradients(lin, x, t, steps=3),
                             (x * wts[t]).sum(-1), rtol=1e-4, atol=1e-5)
  relu = pp.relu(attr.gradient(lin, x, t))
  assert bool((relu >= 0).all())
