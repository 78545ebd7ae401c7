r"""LaFAM vs RELAX on the clue benchmark (paper 002, Tables 1-2).

  python studies/lafam_vs_relax.py --workdir runs/clue_default \
      [--images 256] [--relax-seeds 2] [--json out.json]

Paper 002's headline: the label-free LaFAM (channel mean of the last
convolutional block, min-max normalised) localises better than RELAX
(random ``cells x cells`` Bernoulli(0.5) masks weighted by the cosine
similarity of the masked and the clean embedding, min-max normalised), on
every localisation metric, for self-supervised ResNet-50s. Here both
explain the trained clue CNN of ``--workdir`` on the first ``--images``
test images with a clue (the background class has no evidence), against
the clue masks, with the paper's set-up scaled to 64 x 64 inputs:

* LaFAM at ``block4`` (8 x 8 x 128, after the ReLU), nearest upsampling;
* RELAX with masks at ``block4``'s resolution (8 x 8 cells) and as many
  masks as ``block4`` has channels (128; the paper: 7 x 7 and 2,048 for
  ResNet-50's ``layer4``), p = 0.5, the embedding ``global_pool`` (the
  representation before the head), min-max normalised; ``--relax-seeds``
  mask draws, each image's scores averaged over them;
* Grad-CAM of the true class at ``block4`` (nearest upsampling), the
  supervised reference of the paper's tables.

Metrics (paper 002 App. A.1, Quantus's defaults; REFERENCE-NOTES.md): the
pointing game under both tie rules, ``'any'`` (Quantus, so the paper's:
a hit if any maximal pixel is on the mask) and ``'fraction'`` (lapjax's
default: the expected hit under a random tie-break; nearest-upsampled
maps have 8 x 8 blocks of tied maxima), relevance mass and rank accuracy,
top-k intersection with k = 1,000 of 224 x 224 pixels scaled to the area
(82 of 64 x 64), ROC AUC and sparseness (Gini). Every metric is
scale-invariant, so the paper's division by the maximum changes nothing.

Paired over images: per image LaFAM - RELAX (and LaFAM - Grad-CAM), the
mean difference and its standard error ``std(d, ddof=1) / sqrt(n)`` over
the images where both are defined. Prints JSON lines and a Markdown table.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lapjax import attribution as attr  # noqa: E402
from lapjax import from_flax, metrics  # noqa: E402
from lapjax.attribution import postprocess  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402

LAYER = "block4"
EMBEDDING = "global_pool"
# Quantus's top-k default, 1,000 of 224 x 224 pixels, as a share of the area.
TOP_K_SHARE = 1000 / 224**2
METRICS = ("pointing_game_any", "pointing_game_fraction", "relevance_mass",
           "relevance_rank", "top_k_intersection", "roc_auc", "sparseness")


def scores(maps: jax.Array, masks: jax.Array, k: int) -> dict[str, jax.Array]:
  """Paper 002's localisation metrics per image, ``[B]`` each."""
  return {
      "pointing_game_any": metrics.pointing_game(maps, masks, ties="any"),
      "pointing_game_fraction": metrics.pointing_game(maps, masks,
                                                      ties="fraction"),
      "relevance_mass": metrics.relevance_mass_accuracy(maps, masks),
      "relevance_rank": metrics.relevance_rank_accuracy(maps, masks),
      "top_k_intersection": metrics.top_k_intersection(maps, masks, k=k),
      "roc_auc": metrics.roc_auc(maps, masks),
      "sparseness": metrics.sparseness(maps)}


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  """Mean of ``a - b`` over the images where both are defined, its
  standard error and the number of pairs."""
  d = (a - b)[~np.isnan(a) & ~np.isnan(b)]
  se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else np.nan
  return {"diff": float(d.mean()) if len(d) else np.nan, "se": se,
          "n": int(len(d))}


def verdict(p: dict[str, float]) -> str:
  """'LaFAM' or 'other' when the mean difference is beyond 2 standard
  errors, else 'tie'."""
  if p["diff"] > 2 * p["se"]:
    return "LaFAM"
  if p["diff"] < -2 * p["se"]:
    return "other"
  return "tie"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/default")
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--relax-seeds", type=int, default=2)
  parser.add_argument("--json", default=None,
                      help="also write the per-image scores here")
  args = parser.parse_args()
  config, model, variables = load_run(args.workdir)
  src, _ = sources.make_source(config.data, "test")
  labels = src.get(np.arange(src.num_examples))["label"]
  index = np.flatnonzero(labels > 0)[:args.images]
  clf = from_flax(model, variables, layers=[LAYER, EMBEDDING])
  probe = clf.apply(jnp.asarray(src.get(index[:1])["image"]))[1][LAYER]
  cells, channels = int(probe.shape[1]), int(probe.shape[-1])
  size = int(src.get(index[:1])["image"].shape[1])
  k = max(1, round(TOP_K_SHARE * size * size))

  def relax(x, t, key):
    return postprocess.normalize_minmax(attr.relax(
        clf, x, t, layer=EMBEDDING, key=key, num_masks=channels,
        cells=cells, p=0.5))

  methods = {
      "grad_cam": jax.jit(lambda x, t: attr.grad_cam(
          clf, x, t, layer=LAYER, resize_method="nearest")),
      "lafam": jax.jit(lambda x, t: attr.lafam(clf, x, t, layer=LAYER)),
      **{f"relax_seed{s}": jax.jit(
          lambda x, t, s=s: relax(x, t, jax.random.key(s)))
         for s in range(args.relax_seeds)}}
  score = jax.jit(lambda m, t: scores(m, t, k))
  per_image = {name: {m: [] for m in METRICS} for name in methods}
  for start in range(0, len(index), args.batch):
    batch = src.get(index[start:start + args.batch])
    x, t = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    masks = jnp.asarray(batch["mask"])
    for name, fn in methods.items():
      for m, v in score(fn(x, t), masks).items():
        per_image[name][m].append(np.asarray(v, np.float64))
    print(f"{min(start + args.batch, len(index))} / {len(index)} images",
          file=sys.stderr, flush=True)
  per_image = {name: {m: np.concatenate(v) for m, v in d.items()}
               for name, d in per_image.items()}
  relax_names = [n for n in per_image if n.startswith("relax")]
  per_image["relax"] = {m: np.mean([per_image[n][m] for n in relax_names], 0)
                        for m in METRICS}

  print(json.dumps({"study": "lafam_vs_relax", "workdir": args.workdir,
                    "images": len(index), "layer": LAYER,
                    "relax": {"embedding": EMBEDDING, "num_masks": channels,
                              "cells": cells, "p": 0.5,
                              "seeds": args.relax_seeds},
                    "top_k": k}), flush=True)
  rows = []
  for m in METRICS:
    means = {name: metrics.nan_summary(per_image[name][m])
             for name in ("grad_cam", "lafam", "relax", *relax_names)}
    vs_relax = paired(per_image["lafam"][m], per_image["relax"][m])
    vs_cam = paired(per_image["lafam"][m], per_image["grad_cam"][m])
    seeds = [paired(per_image["lafam"][m], per_image[n][m])["diff"]
             for n in relax_names]
    rows.append((m, means, vs_relax, vs_cam, seeds))
    print(json.dumps({"metric": m,
                      **{f"{name}_mean": s["mean"] for name, s in
                         means.items()},
                      **{f"{name}_nan": s["nan"] for name, s in
                         means.items()},
                      "lafam_minus_relax": vs_relax,
                      "lafam_minus_relax_per_seed": seeds,
                      "lafam_minus_grad_cam": vs_cam}), flush=True)
  print("\n| metric | Grad-CAM | LaFAM | RELAX | LaFAM - RELAX (SE, pairs) "
        "| better | LaFAM - Grad-CAM (SE) |")
  print("|---|---|---|---|---|---|---|")
  for m, means, vs_relax, vs_cam, _ in rows:
    better = {"LaFAM": "LaFAM", "other": "RELAX",
              "tie": "neither (< 2 SE)"}[verdict(vs_relax)]
    print(f"| {m} | {means['grad_cam']['mean']:.3f} | "
          f"{means['lafam']['mean']:.3f} | {means['relax']['mean']:.3f} | "
          f"{vs_relax['diff']:+.3f} ({vs_relax['se']:.3f}, {vs_relax['n']}) "
          f"| {better} | {vs_cam['diff']:+.3f} ({vs_cam['se']:.3f}) |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({name: {m: v.tolist() for m, v in d.items()}
                 for name, d in per_image.items()}, f)


if __name__ == "__main__":
  main()
