"""Grid pointing game scoring."""

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.data import clues
from lapjax.evaluation import grid_game
from lapjax.evaluation.methods import method_classifiers, standard_methods
from lapjax.models import SmallCNN

CFG = clues.CluesConfig(image_size=(32, 32), min_clue_fraction=0.04,
                        max_clue_fraction=0.2)


def test_grids_are_twice_the_size_with_four_distinct_classes():
  grids = grid_game.make_grid_batch(CFG, 3, seed=0)
  assert grids["image"].shape == (3, 64, 64, 3)
  for row in grids["labels"]:
    assert sorted(row.tolist()) == [0, 1, 2, 3]


def test_a_map_on_the_right_quadrant_scores_high_and_wrong_low():
  grids = grid_game.make_grid_batch(CFG, 2, seed=1)
  right = jnp.asarray(grids["quadrant_mask"], jnp.float32)   # [G, 4, H, W]
  wrong = jnp.roll(right, 1, axis=1)
  good = grid_game.score_maps(right, grids)
  bad = grid_game.score_maps(wrong, grids)
  assert np.nanmean(good["RA"]) > 0.9 and np.nanmean(bad["RA"]) < 0.1
  assert np.nanmean(good["IoU"]) > 0.8 and np.nanmean(bad["IoU"]) < 0.1
  assert np.isnan(good["RA_clue"]).sum() == 2      # background quadrants


def test_run_grid_game_scores_methods_with_and_without_lens():
  model = SmallCNN(4, widths=(4, 8))
  grids = grid_game.make_grid_batch(CFG, 2, seed=0)
  v = model.init(jax.random.key(0), grids["image"][:1])
  methods = {k: m for k, m in standard_methods(
      "block2", key=jax.random.key(0), image_size=64).items()
             if k in ("grad_cam", "guided_backprop", "lafam")}
  clfs = method_classifiers(methods, model, v, layers=["block2"],
                            input_shape=grids["image"].shape[1:])
  out = grid_game.run_grid_game(clfs, grids, methods)
  assert set(out) == {"grad_cam", "grad_cam+AL", "guided_backprop",
                      "guided_backprop+AL", "lafam"}
  assert out["grad_cam"]["RA"].shape == (8,)
