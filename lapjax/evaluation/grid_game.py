"""The grid pointing game of paper 003 on the clue benchmark.

A classifier trained on single clue images explains 2x2 grids of four images
of distinct classes, one map per quadrant class (``C'`` = the four quadrant
labels, one method call with ``[G, 4]`` targets), with and without
Attribution Lens. Protocol (paper 003, App. B): the region of class ``c`` is
its quadrant; maps keep their positive part and are Gaussian-blurred (11 x 11,
sigma 2) before scoring; region attribution (RA) is the blurred mass inside
the region; IoU and F1 binarise the blurred map at ``mean + std`` (the paper
does not name its binarisation; this one is lapjax's choice). The clue masks
give a stricter region too (``*_clue`` metrics; the background-only class has
no clue and is left out there).

The source images are rendered at twice the training size with the same clue
fractions, so that the half-size tiles show clues at the scale the model was
trained on (the paper tiles 224 px images into a 224 px grid; a 64 px clue
model would otherwise see clues half as large as any it was trained on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import attribution as attr
from lapjax import metrics
from lapjax.attribution import postprocess
from lapjax.classifier import Classifier
from lapjax.data import clues, grid
from lapjax.evaluation import explanations
from lapjax.evaluation.methods import Method


def make_grid_batch(config: clues.CluesConfig, num_grids: int, *,
                    seed: int, data_seed: int = 0) -> dict[str, np.ndarray]:
  """``num_grids`` test grids at ``2 x config.image_size``."""
  big = dataclasses.replace(config, image_size=tuple(
      2 * s for s in config.image_size))
  n_source = 4 * num_grids * 2
  source = clues.render(big, "test", np.arange(n_source), seed=data_seed)
  tiles = grid.choose_tiles(source["label"], num_grids, seed=seed)
  return grid.make_grids(source, tiles)


def score_maps(maps: jax.Array, grids: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
  """Per (grid, quadrant) RA / IoU / F1, ``[G * 4]`` each, NaN-aware."""
  g, q, h, w = maps.shape
  blurred = postprocess.gaussian_blur(jax.nn.relu(maps).reshape(g * q, h, w),
                                      sigma=2.0, kernel_size=11)
  binary = postprocess.binarize_mean_std(blurred)
  out = {}
  for suffix, region in (("", grids["quadrant_mask"]),
                         ("_clue", grids["mask"])):
    r = jnp.asarray(region.reshape(g * q, h, w))
    out["RA" + suffix] = np.asarray(metrics.relevance_mass_accuracy(
        blurred, r, sign="all"))
    out["IoU" + suffix] = np.asarray(metrics.iou(binary, r))
    out["F1" + suffix] = np.asarray(metrics.f1(binary, r))
  return out


def run_grid_game(classifiers: Mapping[str, Classifier],
                  grids: dict[str, np.ndarray],
                  methods: dict[str, Method], *, batch_size: int = 8
                  ) -> dict[str, dict[str, np.ndarray]]:
  """Scores every method with and without the lens.

  Returns:
    ``{method or method+AL: {metric: [G * 4] values}}``.
  """
  all_maps = explanations.explain(classifiers, grids["image"],
                                  grids["labels"], methods,
                                  batch_size=batch_size)
  results = {}
  for name, maps in all_maps.items():
    maps = jnp.asarray(maps)
    results[name] = score_maps(maps, grids)
    if not methods[name].label_free:
      results[name + "+AL"] = score_maps(attr.lens_refine(maps), grids)
  return results
