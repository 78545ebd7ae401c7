"""Two-image composites and their insertion / deletion (paper 003)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapjax import from_flax, metrics
from lapjax.attribution import lens_refine
from lapjax.evaluation import composites
from lapjax.models import SmallCNN


def _batch(n=6, h=8, w=12):
  rng = np.random.default_rng(0)
  return {"image": rng.uniform(size=(n, h, w, 3)).astype(np.float32),
          "label": np.arange(n) % 3,
          "mask": rng.uniform(size=(n, h, w)) > 0.5}


def test_composite_is_the_two_central_halves_side_by_side():
  batch = _batch()
  pairs = np.array([[0, 4], [5, 1]])
  out = composites.make_composites(batch, pairs)
  # Width 12: the central band is columns 3..8 of each image.
  for g, (a, b) in enumerate(pairs):
    np.testing.assert_array_equal(out["image"][g, :, :6],
                                  batch["image"][a, :, 3:9])
    np.testing.assert_array_equal(out["image"][g, :, 6:],
                                  batch["image"][b, :, 3:9])
    np.testing.assert_array_equal(out["mask"][g, 0, :, :6],
                                  batch["mask"][a, :, 3:9])
    np.testing.assert_array_equal(out["mask"][g, 1, :, 6:],
                                  batch["mask"][b, :, 3:9])
    assert not out["mask"][g, 0, :, 6:].any()
    assert not out["mask"][g, 1, :, :6].any()
  np.testing.assert_array_equal(out["labels"], batch["label"][pairs])
  assert out["half_mask"][:, 0, :, :6].all() and not out["half_mask"][
      :, 0, :, 6:].any()
  np.testing.assert_array_equal(out["half_mask"].sum(1), 1)


def test_centred_counts_object_pixels_in_the_central_band():
  masks = np.zeros((4, 4, 8), bool)
  masks[0, :, 2:6] = True                 # all inside the band [2, 6)
  masks[1, 0, 0:5] = True                 # 3 of 5 inside: 60 %
  masks[2, 0, 1:6] = True                 # 4 of 5 inside: 80 %
  np.testing.assert_array_equal(composites.centred(masks),
                                [True, False, True, False])   # 3: empty
  np.testing.assert_array_equal(composites.centred(masks, fraction=0.6),
                                [True, True, True, False])


def test_choose_pairs_gives_distinct_classes_deterministically():
  labels = np.array([0, 1, 2, 0, 1, 2, 2])
  p = composites.choose_pairs(labels, 50, seed=3)
  assert p.shape == (50, 2)
  assert (labels[p[:, 0]] != labels[p[:, 1]]).all()
  np.testing.assert_array_equal(p, composites.choose_pairs(labels, 50,
                                                           seed=3))
  with pytest.raises(ValueError, match="2 distinct classes"):
    composites.choose_pairs(np.zeros(4, int), 2, seed=0)


def test_width_must_be_divisible_by_four():
  with pytest.raises(ValueError, match="divisible by 4"):
    composites.make_composites(_batch(w=10), np.array([[0, 1]]))


def test_scores_equal_insertion_deletion_of_each_class_map():
  model = SmallCNN(num_classes=3, widths=(4, 8))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 3)),
                  jnp.float32)
  variables = model.init(jax.random.key(0), x)
  clf = from_flax(model, variables, layers=["block2"])
  labels = jnp.array([[0, 2], [1, 0]])
  maps = jax.random.normal(jax.random.key(2), (2, 2, 8, 8))
  got = composites.composite_insertion_deletion(clf, x, labels, maps,
                                                steps=4)
  for g in range(2):
    for s in range(2):
      ref = metrics.insertion_deletion(clf, x[g:g + 1], maps[g, s][None],
                                       labels[g, s][None], steps=4,
                                       baseline="blur")
      for k in ("ins", "del", "idd"):
        np.testing.assert_allclose(got[k][g, s], ref[k][0], rtol=1e-5,
                                   atol=1e-5)
  np.testing.assert_allclose(composites.with_lens(maps), lens_refine(maps))


def test_paired_summary_matches_numpy():
  rng = np.random.default_rng(0)
  base = rng.normal(10, 1, 40)
  lens = base + rng.normal(0.5, 0.2, 40)
  base[3] = np.nan                          # undefined pairs are dropped
  s = composites.paired_summary(base, lens)
  ok = ~np.isnan(base)
  d = lens[ok] - base[ok]
  assert s["n"] == 39
  np.testing.assert_allclose(s["diff"], d.mean())
  np.testing.assert_allclose(s["diff_se"], d.std(ddof=1) / np.sqrt(39))
  np.testing.assert_allclose(s["relative"],
                             lens[ok].mean() / base[ok].mean() - 1)
