"""LAP-Pool (Eq. 6-7) and depth aggregation (Algorithm 1)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import lap
from lapjax.models import layers


def _inputs(h=8, w=12, f=3, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(2, h, w, f)), jnp.float32),
          jnp.asarray(rng.uniform(size=(2, h, w)), jnp.float32))


def test_alpha_zero_is_average_pooling_and_global_mean():
  x, q = _inputs()
  out = lap.importance_pool(x, q, jnp.array(0.0), window=2, eps=1e-4)
  ref = x.reshape(2, 4, 2, 6, 2, 3).mean((2, 4))
  np.testing.assert_allclose(out, ref, atol=1e-6)
  g = lap.importance_pool(x, q, jnp.array(0.0), window=None)
  np.testing.assert_allclose(g, x.mean((1, 2)), atol=1e-6)


def test_large_alpha_passes_the_most_important_element():
  x, q = _inputs()
  out = lap.importance_pool(x, q, jnp.array(1e3), window=2, eps=1e-9)
  qb = np.asarray(q).reshape(2, 4, 2, 6, 2).transpose(0, 1, 3, 2, 4)
  xb = np.asarray(x).reshape(2, 4, 2, 6, 2, 3).transpose(0, 1, 3, 2, 4, 5)
  idx = qb.reshape(2, 4, 6, 4).argmax(-1)
  ref = np.take_along_axis(xb.reshape(2, 4, 6, 4, 3), idx[..., None, None],
                           3)[..., 0, :]
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_eq7_weights_by_hand_for_one_window():
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  q = jnp.array([[[0.2, 0.9], [0.5, 0.1]]])
  alpha, eps = 1.5, 1e-3
  w = np.exp(-alpha**2 * (0.9 - np.array([0.2, 0.9, 0.5, 0.1]))**2) + eps
  ref = (w * np.arange(4.0)).sum() / w.sum()
  out = lap.importance_pool(x, q, jnp.array(alpha), window=2, eps=eps)
  np.testing.assert_allclose(out[0, 0, 0, 0], ref, rtol=1e-6)


def test_window_path_equals_tiling_path_and_handles_same_padding():
  x, q = _inputs()
  tiled = lap.importance_pool(x, q, jnp.array(2.0), window=2)
  patched = lap.importance_pool(x, q, jnp.array(2.0), window=2,
                                padding="SAME")
  np.testing.assert_allclose(tiled, patched, atol=1e-5)
  same = lap.importance_pool(x, q, jnp.array(2.0), window=3, strides=2,
                             padding="SAME")
  assert same.shape == (2, 4, 6, 3)
  # SAME pads one row / column at the end; a padded window averages only
  # its real elements (alpha 0).
  avg = lap.importance_pool(x, q, jnp.array(0.0), window=3, strides=2,
                            padding="SAME")
  np.testing.assert_allclose(avg[:, -1, -1], x[:, 6:, 10:].mean((1, 2)),
                             atol=1e-5)
  np.testing.assert_allclose(avg[:, 0, 0], x[:, :3, :3].mean((1, 2)),
                             atol=1e-5)


def test_lap_pool_records_maps_and_grads_reach_the_head():
  pool = lap.LAPPool(num_dcs=2, window=2, head_widths=(4,))
  x, _ = _inputs()
  v = pool.init(jax.random.key(0), x)
  out, col = pool.apply({"params": v["params"]}, x, mutable=["lap"])
  maps, disc = lap.lap_outputs(col["lap"])
  assert out.shape == (2, 4, 6, 3) and maps[0].shape == (2, 8, 12, 2)
  assert disc[0].shape == (2, 8, 12, 2)
  g = jax.grad(lambda p: pool.apply({"params": p}, x).sum())(v["params"])
  assert float(jnp.abs(g["head"]["out"]["kernel"]).sum()) > 0
  assert float(jnp.abs(g["alpha"])) > 0
  # The discriminative module sees the input through a stop-gradient.
  gx = jax.grad(lambda x: pool.apply({"params": v["params"]}, x,
                                     mutable=["lap"])[1]["lap"][
                                         "disc_maps"][0].sum())(x)
  assert float(jnp.abs(gx).sum()) == 0


def _algorithm1(maps, decay):
  """Algorithm 1 pixel by pixel, as printed (independent reference)."""
  depth = len(maps)
  r = maps[-1].copy()
  for level in range(depth - 2, -1, -1):
    p = maps[level]
    fh, fw = p.shape[0] // r.shape[0], p.shape[1] // r.shape[1]
    new = np.zeros_like(p)
    for i, j in itertools.product(range(r.shape[0]), range(r.shape[1])):
      block = p[i * fh:(i + 1) * fh, j * fw:(j + 1) * fw]
      out = np.full_like(block, r[i, j])
      if r[i, j] >= 0.5 and block.max() >= 0.5:
        for a, b in itertools.product(range(fh), range(fw)):
          v = block[a, b] * decay ** (depth - 1 - level)
          out[a, b] = max(r[i, j], v) if block[a, b] >= 0.5 else v
      new[i * fh:(i + 1) * fh, j * fw:(j + 1) * fw] = out
    r = new
  return r


def test_depth_aggregation_matches_algorithm_1():
  rng = np.random.default_rng(4)
  shapes = [(8, 12), (4, 6), (2, 3)]
  maps = [rng.uniform(size=(3, h, w, 2)).astype(np.float32)
          for h, w in shapes]
  out = np.asarray(lap.aggregate_depth([jnp.asarray(m) for m in maps],
                                       decay=0.8))
  for b, m in itertools.product(range(3), range(2)):
    ref = _algorithm1([mm[b, :, :, m] for mm in maps], 0.8)
    np.testing.assert_allclose(out[b, :, :, m], ref, rtol=1e-6)


def test_depth_aggregation_refuses_grids_that_do_not_nest():
  with pytest.raises(ValueError, match="do not nest"):
    lap.aggregate_depth([jnp.zeros((1, 6, 6, 1)), jnp.zeros((1, 4, 4, 1))])


def test_standard_pool_is_unchanged_by_the_factory():
  assert layers.standard_pool("p", window=2, optional=True) is None
  assert isinstance(layers.standard_pool("global_pool", window=None),
                    layers.GlobalAvgPool)


def _windowed_pool_reference(x, q, alpha, window, stride, padding, eps):
  """Eq. 6-7 window by window over the real (unpadded) elements."""
  x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
  b, h, w, f = x.shape
  (pt, pb), (pl, pr) = jax.lax.padtype_to_pads((h, w), (window, window),
                                               (stride, stride), padding)
  ho = (h + pt + pb - window) // stride + 1
  wo = (w + pl + pr - window) // stride + 1
  out = np.zeros((b, ho, wo, f))
  for i, j in itertools.product(range(ho), range(wo)):
    r0, c0 = i * stride - pt, j * stride - pl
    rows = slice(max(r0, 0), min(r0 + window, h))
    cols = slice(max(c0, 0), min(c0 + window, w))
    qk, xk = q[:, rows, cols].reshape(b, -1), x[:, rows, cols].reshape(b, -1, f)
    wt = np.exp(-alpha**2 * (qk.max(-1, keepdims=True) - qk)**2) + eps
    out[:, i, j] = (wt[..., None] * xk).sum(1) / wt.sum(-1, keepdims=True)
  return out


@pytest.mark.parametrize("window,stride,padding,h,w", [
    (3, 2, "SAME", 9, 12), (3, 1, "VALID", 7, 6), (2, 2, "SAME", 7, 9),
    (3, 2, "SAME", 8, 8)])
def test_overlapping_and_padded_windows_match_a_window_by_window_loop(
    window, stride, padding, h, w):
  x, q = _inputs(h, w)
  pool = jax.jit(lambda x, q, a: lap.importance_pool(
      x, q, a, window=window, strides=stride, padding=padding, eps=1e-3))
  out = pool(x, q, jnp.array(1.7))
  np.testing.assert_allclose(out, _windowed_pool_reference(
      x, q, 1.7, window, stride, padding, 1e-3), rtol=1e-5, atol=1e-6)
  # Gradients stay finite next to the padding (no NaN from the masked
  # branch) and reach the scores of real elements.
  gx, gq, ga = jax.grad(lambda x, q, a: pool(x, q, a).sum(),
                        argnums=(0, 1, 2))(x, q, jnp.array(1.7))
  assert all(bool(jnp.isfinite(g).all()) for g in (gx, gq, ga))
  assert float(jnp.abs(gq).sum()) > 0 and float(jnp.abs(ga)) > 0
