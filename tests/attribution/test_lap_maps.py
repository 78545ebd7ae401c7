"""LAP maps as an attribution method: the common contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import attribution as attr
from lapjax import from_flax, lap
from lapjax.models import SmallCNN

DCS = lap.one_vs_others(3, bgo=0)


@pytest.fixture(scope="module")
def setup():
  spec = lap.LAPSpec(("pool1", "global_pool"), DCS.num_dcs, head_widths=(8,))
  m = SmallCNN(3, widths=(8, 16), pool=spec)
  v = m.init(jax.random.key(0), jnp.zeros((1, 16, 24, 3)))
  v = {"params": v["params"], "batch_stats": v["batch_stats"]}
  clf = from_flax(m, v, layers=spec.map_layers())
  x = jax.random.uniform(jax.random.key(1), (4, 16, 24, 3))
  return clf, x, spec.map_layers()


def test_single_lap_is_the_dc_map_of_the_class(setup):
  clf, x, layers = setup
  _, feats = clf.apply(x)
  out = attr.lap_maps(clf, x, jnp.array([1, 2, 1, 0]), layers=layers,
                      dcs=DCS, lap=0, resize=False)
  head = np.asarray(feats["pool1/head"])
  np.testing.assert_allclose(out[0], head[0, :, :, 0], rtol=1e-6)
  np.testing.assert_allclose(out[1], head[1, :, :, 1], rtol=1e-6)
  np.testing.assert_array_equal(out[3], 0)                 # BGO: no region


def test_contract_properties(setup):
  clf, x, layers = setup
  kw = dict(layers=layers, dcs=DCS)
  t = jnp.array([1, 2, 2, 1])
  full = attr.lap_maps(clf, x, t, **kw)
  assert full.shape == (4, 16, 24)                         # H != W, input res
  assert float(full.min()) >= 0 and float(full.max()) <= 1
  for i in range(4):                                       # batch = per image
    np.testing.assert_allclose(full[i], attr.lap_maps(clf, x[i:i + 1],
                                                      t[i:i + 1], **kw)[0],
                               atol=1e-6)
  other = x.at[1:].set(0.0)                                # independence
  np.testing.assert_allclose(attr.lap_maps(clf, other, t, **kw)[0], full[0],
                             atol=1e-6)
  multi = attr.lap_maps(clf, x, jnp.array([[1, 2]] * 4), **kw)
  assert multi.shape == (4, 2, 16, 24)
  np.testing.assert_allclose(multi[:, 1], attr.lap_maps(
      clf, x, jnp.full(4, 2), **kw), atol=1e-6)
  jitted = jax.jit(lambda x, t: attr.lap_maps(clf, x, t, **kw))(x, t)
  np.testing.assert_allclose(jitted, full, atol=1e-6)
  weights = jax.nn.one_hot(t, 3)
  np.testing.assert_allclose(attr.lap_maps(clf, x, weights, **kw), full,
                             atol=1e-6)


def test_bad_options_are_refused(setup):
  clf, x, layers = setup
  with pytest.raises(ValueError, match="2 classes"):
    attr.lap_maps(clf, x, jnp.zeros(4, jnp.int32), layers=layers,
                  dcs=lap.binary())
  with pytest.raises(ValueError, match="lap must index"):
    attr.lap_maps(clf, x, jnp.zeros(4, jnp.int32), layers=layers, dcs=DCS,
                  lap=5)
