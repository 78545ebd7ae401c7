"""Extremal Perturbations against TorchRay; Meaningful Perturbation against
closed forms and the authors' formulas; both against the contract."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from lapjax import Classifier
from lapjax.attribution import optimisation as opt
from tests.attribution.models import linear_classifier

FIXTURE = np.load(pathlib.Path(__file__).resolve().parents[1] / "fixtures"
                  / "optimisation" / "torchray_ep.npz")
FIXTURE_EP = dict(step=3, sigma=6.0, max_blur=5.0)
CONFIGS = {
    "preserve_blur": dict(areas=(0.2, 0.4), steps=40, perturbation="blur",
                          variant="preserve", reward="simple"),
    "delete_blur": dict(areas=(0.3,), steps=30, perturbation="blur",
                        variant="delete", reward="simple"),
    "dual_fade_contrastive": dict(areas=(0.25,), steps=30,
                                  perturbation="fade", variant="dual",
                                  reward="contrastive", smooth=0.05),
}


def tiny_cnn() -> Classifier:
  """The fixture's CNN: conv 3x3 -> ReLU -> global mean -> linear."""
  w = jnp.asarray(FIXTURE["conv_w"]).transpose(2, 3, 1, 0)

  def apply(x, deltas=None):
    del deltas
    a = jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST) + FIXTURE["conv_b"]
    a = jax.nn.relu(a).mean((1, 2))
    return a @ FIXTURE["fc_w"].T + FIXTURE["fc_b"], {}

  return Classifier(apply=apply, layers=())


CLF = tiny_cnn()      # one classifier: compiled calls are cached per model
X = jnp.asarray(FIXTURE["x"])                      # [2, 20, 28, 3]
T = jnp.asarray(FIXTURE["targets"])


# -- Extremal Perturbations ----------------------------------------------------

def test_smooth_mask_matches_torchray():
  geometry = opt.smooth_mask_geometry((20, 28), 3, 6.0)
  cropped, full = opt.smooth_mask(jnp.asarray(FIXTURE["mask_params"]),
                                  geometry)
  np.testing.assert_allclose(cropped, FIXTURE["mask_cropped"], atol=1e-5)
  np.testing.assert_allclose(full, FIXTURE["mask_full"], atol=1e-5)


def reference_smooth_mask(params, geometry):
  """TorchRay's ``MaskGenerator.generate`` written directly: every output
  pixel gathers its ``(2 radius + 1)^2`` parameters (``floor(u / step)``
  as TorchRay computes it, in float32), multiplies them by
  ``geometry.weight`` and softmax-pools them; plain autodiff."""
  g = geometry
  k = 2 * g.radius + 1
  padded = jnp.pad(params, [(0, 0)] + [(g.padding, g.padding)] * 2)
  cells = []
  for z_out, z_mid in zip(g.shape_out, g.shape_mid):
    inv = np.float32(z_mid) / np.float32(z_mid * g.step)
    cells.append(np.floor(inv * np.arange(z_out, dtype=np.float32))
                 .astype(int))
  iy, ix = cells
  gathered = jnp.stack([padded[:, iy[:, None] + ky, ix[None, :] + kx]
                        for ky in range(k) for kx in range(k)], axis=1)
  m = jnp.asarray(g.weight) * gathered                   # [P, k^2, h, w]
  pooled = jnp.sum(m * jax.nn.softmax(opt.EP_COLDNESS * m, axis=1), axis=1)
  full = jnp.where(pooled < 0, 0.0, jnp.where(pooled > 1, 1.0, pooled))
  return full[:, g.margin:g.margin + g.shape[0],
              g.margin:g.margin + g.shape[1]], full


@pytest.mark.parametrize("shape, step, sigma", [
    ((20, 28), 3, 6.0),        # the fixture's geometry
    ((112, 112), 4, 10.5),     # TorchRay's 224 settings scaled to 112
    ((224, 224), 7, 21.0),     # TorchRay's reference settings
])
def test_smooth_mask_values_and_gradients_equal_direct_definition(
    shape, step, sigma):
  geometry = opt.smooth_mask_geometry(shape, step, sigma)
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  params = jax.random.uniform(k1, (2, *geometry.shape_in))
  params = params.at[1, :3].set(1.0)        # ties, as the all-ones start
  w_crop = jax.random.normal(k2, (2, *shape))
  w_full = jax.random.normal(k3, (2, *geometry.shape_out))

  def loss(fn, p):
    cropped, full = fn(p, geometry)
    return jnp.sum(cropped * w_crop) + jnp.sum(full * w_full)

  got = opt.smooth_mask(params, geometry)
  want = reference_smooth_mask(params, geometry)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=5e-6)   # float32 sums of 81
  g_got = jax.grad(lambda p: loss(opt.smooth_mask, p))(params)
  g_want = jax.grad(lambda p: loss(reference_smooth_mask, p))(params)
  scale = float(jnp.max(jnp.abs(g_want)))
  assert scale > 0
  np.testing.assert_allclose(g_got, g_want, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", ["blur", "fade"])
def test_pyramid_matches_torchray(kind):
  pyramid = opt.perturbation_pyramid(X, num_levels=8, max_blur=5.0,
                                     perturbation=kind)
  np.testing.assert_allclose(pyramid, FIXTURE[f"pyramid_{kind}"],
                             atol=1e-5)
  if kind == "blur":
    mask = jnp.asarray(FIXTURE["mask_cropped"])
    np.testing.assert_allclose(opt.apply_pyramid(pyramid, mask),
                               FIXTURE["applied_blur"], atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_extremal_perturbation_matches_torchray(name):
  """Whole runs (SGD with dampened momentum, growing area weight, flips,
  variants, rewards, smoothing) from the same start without ties."""
  got = opt.extremal_perturbation(
      CLF, X, T, combine="stack",
      initial_params=jnp.asarray(FIXTURE[f"{name}_init"]), **FIXTURE_EP,
      **CONFIGS[name])
  np.testing.assert_allclose(got, FIXTURE[name], atol=1e-4)


def test_torchray_itself_depends_on_how_ties_are_sorted():
  """The documented reason the all-ones start is not compared: TorchRay
  with a stable sort ends elsewhere than with PyTorch's default sort."""
  gap = np.abs(FIXTURE["preserve_blur_ones"]
               - FIXTURE["preserve_blur_ones_stable"])
  assert gap.max() > 0.5


def test_area_penalty_is_the_sorted_distance():
  full = jax.random.uniform(jax.random.key(0), (2, 5, 6))
  ref = opt.area_reference(30, 0.3)
  assert ref.sum() == 30 - int(30 * 0.7)
  want = np.mean((np.sort(np.asarray(full).reshape(2, -1)) - ref) ** 2, -1)
  np.testing.assert_allclose(opt.area_penalty(full, jnp.asarray(ref)), want,
                             rtol=1e-6)


def test_area_penalty_gradient_averages_the_reference_over_ties():
  """Four tied values straddle the last zero of the reference (one zero,
  three ones among their sorted positions): each gets ``2 (v - 3/4) /
  N``, whatever order a sort would give them."""
  m = jnp.array([[0.1, 0.5, 0.5, 0.9], [0.5, 0.5, 0.2, 0.0]])[None]
  ref = jnp.asarray(opt.area_reference(8, 0.5))          # 4 zeros, 4 ones
  grad = jax.grad(lambda a: opt.area_penalty(a, ref).sum())(m)[0]
  n = 8
  want = np.array([[2 * 0.1, 2 * (0.5 - 0.75), 2 * (0.5 - 0.75),
                    2 * (0.9 - 1)], [2 * (0.5 - 0.75), 2 * (0.5 - 0.75),
                                     2 * 0.2, 2 * 0.0]]) / n
  np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)
  # The value is the plain sorted distance.
  np.testing.assert_allclose(
      opt.area_penalty(m, ref), np.mean((np.sort(np.ravel(m)) - ref) ** 2),
      rtol=1e-6)


def test_integer_key_sort_orders_like_floats():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(size=(2, 60)) * 10.0 ** rng.integers(
      -30, 30, (2, 60)), [[0.0, -0.0, np.inf, -np.inf]] * 2], axis=1)
  x = x.astype(np.float32)
  np.testing.assert_array_equal(jax.jit(opt._sorted)(x), np.sort(x))


def _numpy_area_gradient(m: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """The definition, run by run: sort, split where sorted neighbours are
  more than ``TIE_TOLERANCE`` apart, give each value ``2 (v - mean of
  ref over its run's positions) / N``."""
  order = np.argsort(m, kind="stable")
  s = m[order]
  cuts = np.flatnonzero(np.diff(s) > opt.TIE_TOLERANCE) + 1
  averaged = np.empty_like(s)
  for run in np.split(np.arange(len(s)), cuts):
    averaged[run] = ref[run].mean()
  grad = np.empty_like(m)
  grad[order] = 2 * (s - averaged) / len(m)
  return grad


@pytest.mark.parametrize("area", [0.0, 0.3, 0.5, 1.0])
def test_area_penalty_gradient_equals_the_run_by_run_definition(area):
  """Chains of near-ties (steps of half the tolerance, so a run spans
  more than the tolerance), exact ties, -0.0 and the end areas."""
  rng = np.random.default_rng(0)
  chain = 0.5 + 0.5 * opt.TIE_TOLERANCE * np.arange(7)
  base = np.concatenate([chain, [0.5] * 3, [0.0, -0.0, 1.0, 1.0],
                         rng.uniform(size=26)]).astype(np.float32)
  masks = np.stack([base, rng.permutation(base), rng.uniform(
      size=base.size).astype(np.float32)]).reshape(3, 8, 5)
  ref = opt.area_reference(40, area)
  grad = jax.jit(jax.grad(lambda a: opt.area_penalty(
      a, jnp.asarray(ref)).sum()))(jnp.asarray(masks))
  for got, m in zip(np.asarray(grad), masks):
    want = _numpy_area_gradient(m.ravel(), ref).reshape(8, 5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_extremal_mask_covers_the_region_a_model_sums_at_its_area():
  """Class 0's logit is 0.1 x the sum of a 9 x 9 region's pixels; the
  target area is the region's share of the mask with its margin."""
  region = np.zeros((24, 24), bool)
  region[3:12, 12:21] = True
  w = jnp.zeros((2, 24, 24, 1)).at[0].set(
      0.1 * jnp.asarray(region, jnp.float32)[..., None])
  geometry = opt.smooth_mask_geometry((24, 24), 3, 3.0)
  n_full = geometry.shape_out[0] * geometry.shape_out[1]
  area = region.sum() / n_full
  mask = opt.extremal_perturbation(
      linear_classifier(w), jnp.ones((1, 24, 24, 1)), jnp.array([0]),
      areas=(area,), steps=300, perturbation="fade", step=3, sigma=3.0,
      jitter=False)[0]
  assert float(mask[region].mean()) > 0.8
  assert float(mask[~region].mean()) < 0.1
  # The area penalty holds the mask near the area (soft: its smooth edges
  # keep it 16 % above, measured).
  assert abs(float(mask.sum()) / (area * n_full) - 1) < 0.25


# -- Meaningful Perturbation --------------------------------------------------

def scipy_mask(m: np.ndarray, scale: int, sigma: float,
               size: tuple[int, int]) -> np.ndarray:
  up = np.repeat(np.repeat(m, scale, 0), scale, 1)[:size[0], :size[1]]
  return ndimage.gaussian_filter(up, sigma, mode="nearest", truncate=4.0)


def test_mask_operator_is_nearest_upsampling_then_blur():
  m = np.asarray(jax.random.uniform(jax.random.key(1), (3, 4)))
  rows, cols = opt.mask_upsampler((10, 14), 4, 1.5)
  np.testing.assert_allclose(rows @ m @ cols.T,
                             scipy_mask(m, 4, 1.5, (10, 14)), atol=1e-6)


def test_image_blur_is_gaussian_with_edge_padding():
  x = jax.random.uniform(jax.random.key(2), (1, 9, 13, 2))
  got = opt._blur_images(x, opt.gaussian_taps(2.0), "edge")
  want = ndimage.gaussian_filter(np.asarray(x), (0, 2.0, 2.0, 0),
                                 mode="nearest", truncate=4.0)
  np.testing.assert_allclose(got, want, atol=1e-6)


def authors_tv(x: np.ndarray, beta: float) -> tuple[float, np.ndarray]:
  """The authors' ``tv`` (optimize_mask.py): value and derivative."""
  d1 = np.zeros(x.shape)
  d2 = np.zeros(x.shape)
  d1[:-1, :] = np.diff(x, axis=0)
  d2[:, :-1] = np.diff(x, axis=1)
  v = np.sqrt(d1 * d1 + d2 * d2) ** beta
  d1_ = np.maximum(v, 1e-5) ** (2 * (beta / 2 - 1) / beta) * d1
  d2_ = np.maximum(v, 1e-5) ** (2 * (beta / 2 - 1) / beta) * d2
  d11, d22 = -d1_, -d2_
  d11[1:, :] = -np.diff(d1_, axis=0)
  d22[:, 1:] = -np.diff(d2_, axis=1)
  return v.sum(), beta * (d11 + d22)


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_total_variation_matches_the_authors(beta):
  m = np.asarray(jax.random.uniform(jax.random.key(3), (6, 7)),
                 np.float64)
  value, derivative = authors_tv(m, beta)
  tv = jax.jit(jax.value_and_grad(lambda a: opt.total_variation(a, beta)))
  got, grad = tv(jnp.asarray(m, jnp.float32))
  np.testing.assert_allclose(got, value, rtol=1e-5)
  np.testing.assert_allclose(grad, derivative, rtol=1e-4, atol=1e-6)
  # A flat mask: no variation and no NaN gradient.
  got, grad = tv(jnp.full((6, 7), 0.5))
  assert float(got) == 0.0
  assert not np.any(np.isnan(grad))


@pytest.mark.parametrize("baseline", ["blur", 0.25])
def test_first_adam_step_moves_every_mask_value_by_the_learning_rate(
    baseline):
  """On a linear model (logit score, no jitter) the first Adam step is
  ``-lr sign(dL/dm)``, with ``dL/dm = U_h^T G U_w - l1`` and ``G`` the
  per-pixel ``sum_c w (x - b)``, ``b`` the blurred image or a constant."""
  h, w, scale, mask_blur, blur_sigma = 10, 14, 4, 1.5, 2.0
  weights = jax.random.normal(jax.random.key(4), (3, h, w, 2))
  x = jax.random.uniform(jax.random.key(5), (1, h, w, 2))
  target = 1
  got = opt.meaningful_perturbation(
      linear_classifier(weights), x, jnp.array([target]), steps=1,
      jitter=0, init=0.5, score="logit", mask_scale=scale,
      mask_blur=mask_blur, blur_sigma=blur_sigma, learning_rate=0.1,
      baseline=baseline)[0]
  blurred = ndimage.gaussian_filter(np.asarray(x[0]), (blur_sigma,
                                                       blur_sigma, 0),
                                    mode="nearest", truncate=4.0)
  if baseline != "blur":
    blurred = np.full_like(blurred, baseline)
  g_pixels = (np.asarray(weights[target]) * (np.asarray(x[0]) - blurred)
              ).sum(-1)
  low = (3, 4)
  basis = np.eye(low[0] * low[1]).reshape(-1, *low)
  ops = np.stack([scipy_mask(e, scale, mask_blur, (h, w)) for e in basis])
  grad = np.einsum("khw,hw->k", ops, g_pixels).reshape(low) - 1e-4
  m1 = np.clip(0.5 - 0.1 * np.sign(grad), 0, 1)
  want = 1 - np.einsum("khw,k->hw", ops, m1.ravel())
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_deletion_mask_finds_the_region_the_model_reads():
  region = np.zeros((24, 24), bool)
  region[14:22, 3:11] = True
  pattern = jax.random.normal(jax.random.key(6), (24, 24, 1))
  x = (0.5 + 0.5 * pattern * region[..., None])[None]
  # Class 0 reads the texture of the region (blurring it lowers the logit).
  w = jnp.zeros((2, 24, 24, 1)).at[0].set(0.1 * pattern * region[..., None])
  sal = opt.meaningful_perturbation(
      linear_classifier(w), x, jnp.array([0]), steps=150, jitter=0,
      init=1.0, mask_scale=4, mask_blur=1.0, blur_sigma=2.0, l1=1e-2,
      tv=1e-2)[0]
  assert float(sal[region].mean()) > 0.9
  assert float(sal[~region].mean()) < 0.4


def test_circle_start_is_the_smallest_disc_that_deletes_the_score():
  h = w = 32
  region = np.zeros((h, w), bool)
  region[12:20, 12:20] = True
  pattern = jax.random.normal(jax.random.key(7), (h, w, 1))
  x = (0.5 + 0.5 * pattern * region[..., None])[None]
  weights = jnp.zeros((2, h, w, 1)).at[0].set(pattern * region[..., None])
  clf = linear_classifier(weights)
  blurred = opt._blur_images(x, opt.gaussian_taps(3.0), "edge")
  cot = jax.nn.one_hot(jnp.array([0]), 2)
  start = opt._circle_init(clf, x, blurred, cot, np.array([0]), (8, 8),
                           blur_sigma=3.0, score="prob", chunk_size=7)
  discs = opt.circle_masks((h, w), 3.0)
  masked = x * discs[..., None] + blurred * (1 - discs[..., None])
  probs = np.asarray(jax.nn.softmax(clf.apply(masked)[0])[:, 0])
  orig = float(jax.nn.softmax(clf.apply(x)[0])[0, 0])
  remaining = (np.array(probs) - probs[-1]) / (orig - probs[-1])
  first = int(np.argmax(remaining < 1e-2))
  assert 0 < first < len(discs) - 1
  picked = discs[first][2::4, 2::4]                # pixel centres of 4 x 4
  np.testing.assert_allclose(start[0], picked, atol=1e-6)


# -- the contract, both methods ----------------------------------------------

METHODS = {
    "extremal": lambda clf, x, t, **kw: opt.extremal_perturbation(
        clf, x, t, steps=4, **FIXTURE_EP, **kw),
    "meaningful": lambda clf, x, t, **kw: opt.meaningful_perturbation(
        clf, x, t, steps=4, mask_scale=4, mask_blur=1.0, blur_sigma=2.0,
        jitter=2, mask_noise=0.1, key=kw.pop("key", jax.random.key(0)),
        **kw),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batch_items_are_independent(name):
  method, clf = METHODS[name], CLF
  both = method(clf, X, T)
  assert both.shape == (2, 20, 28)
  single = method(clf, X[1:], T[1:])
  np.testing.assert_allclose(both[1], single[0], atol=1e-5)
  other = X.at[0].set(jax.random.uniform(jax.random.key(9), X.shape[1:]))
  np.testing.assert_allclose(method(clf, other, T)[1], both[1], atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_class_sets_equal_one_class_at_a_time(name):
  method, clf = METHODS[name], CLF
  classes = jnp.array([[0, 2], [1, 0]])
  multi = method(clf, X, classes)
  assert multi.shape == (2, 2, 20, 28)
  for j in range(2):
    np.testing.assert_allclose(multi[:, j], method(clf, X, classes[:, j]),
                               atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_jit_and_keys(name):
  method, clf = METHODS[name], CLF
  key = jax.random.key(3)
  eager = method(clf, X, T, key=key) if name == "meaningful" else method(
      clf, X, T)
  jitted = jax.jit(lambda x, t: method(clf, x, t, key=key)
                   if name == "meaningful" else method(clf, x, t))(X, T)
  np.testing.assert_allclose(eager, jitted, atol=1e-5)
  if name == "meaningful":
    np.testing.assert_array_equal(eager, method(clf, X, T, key=key))
    other = method(clf, X, T, key=jax.random.key(4))
    assert not np.allclose(eager, other)


def test_extremal_areas_chunks_and_stack():
  """Each area's mask is its own run; the default sums them; chunks of
  pairs give the same masks."""
  clf = CLF
  kw = dict(steps=4, areas=(0.1, 0.3), **FIXTURE_EP)
  summed = opt.extremal_perturbation(clf, X, T, **kw)
  chunked = opt.extremal_perturbation(clf, X, T, combine="stack",
                                      chunk_size=3, **kw)
  assert chunked.shape == (2, 2, 20, 28)
  single = [opt.extremal_perturbation(clf, X, T, **(kw | {"areas": (a,)}))
            for a in kw["areas"]]
  for i, one_area in enumerate(single):
    np.testing.assert_allclose(chunked[:, i], one_area, atol=1e-5)
  np.testing.assert_allclose(summed, chunked.sum(1), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"areas": (0.0,)}, r"areas must be fractions of the image in \(0, 1\)"),
    ({"areas": (0.2, 1.5)}, r"areas must be fractions"),
    ({"areas": ()}, "areas must hold at least one area"),
    ({"variant": "both"}, "variant must be one of"),
    ({"reward": "max"}, "reward must be one of"),
    ({"perturbation": "noise"}, "perturbation must be one of"),
    ({"num_levels": 1}, "num_levels must be >= 2"),
    ({"sigma": 0.0}, "sigma must be > 0"),
    ({"initial_params": jnp.ones((2, 1, 3, 3))},
     r"initial_params must have shape \(2, 1, 7, 10\)"),
])
def test_extremal_bad_input(kwargs, match):
  kw = dict(FIXTURE_EP, steps=2) | kwargs
  with pytest.raises(ValueError, match=match):
    opt.extremal_perturbation(CLF, X, T, **kw)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": -3}, "steps must be >= 1"),
    ({"key": None}, "key is required when jitter > 0"),
    ({"jitter": -1}, "jitter must be an integer >= 0"),
    ({"init": 1.5}, r"init must be 'circle' or a number in \[0, 1\]"),
    ({"variant": "delete"}, "variant must be one of"),
    ({"mask_scale": 0}, "mask_scale must be >= 1"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"baseline": "noise"}, "baseline must be a number, an array or 'blur'"),
])
def test_meaningful_bad_input(kwargs, match):
  kw = dict(key=jax.random.key(0), steps=2, mask_scale=4) | kwargs
  with pytest.raises(ValueError, match=match):
    opt.meaningful_perturbation(CLF, X, T, **kw)
