r"""Paper 003 and 002 claims on the clue benchmark, with a trained model.

  make demo     # trains runs/default (configs/grid_game.py trains the same)
  python studies/grid_game.py --workdir runs/default [--grids 24] [--seeds 3]

* Grid pointing game (``lapjax.evaluation.grid_game``): RA, IoU and F1 of
  every method with and without Attribution Lens, on ``--seeds`` independent
  sets of ``--grids`` 2x2 grids; mean over grids, then mean and standard
  deviation over the sets (the run-to-run noise).
* LaFAM vs Grad-CAM pointing game (paper 002): hit rate on the clue test
  images (clue classes; the background-only class has no clue to point at),
  Grad-CAM for the true class, both at ``block4``.

Prints JSON lines, then Markdown tables for docs/studies/grid_game.md.
"""

import argparse
import dataclasses
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
from lapjax.data import clues, sources  # noqa: E402
from lapjax.evaluation import grid_game  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402
from lapjax.evaluation.methods import (  # noqa: E402
  method_classifiers,
  standard_methods,
)

LAYER = "block4"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/default")
  parser.add_argument("--grids", type=int, default=None,
                      help="default: config.evaluation.grid_games")
  parser.add_argument("--seeds", type=int, default=None,
                      help="default: config.evaluation.grid_seeds")
  parser.add_argument("--pointing_images", type=int, default=600)
  parser.add_argument("--skip_grid", action="store_true",
                      help="only the LaFAM vs Grad-CAM pointing game")
  args = parser.parse_args()
  config, model, variables = load_run(args.workdir)
  args.grids = args.grids or config.evaluation.grid_games
  args.seeds = args.seeds or config.evaluation.grid_seeds
  cfg = sources.clues_config(config.data)

  per_seed = {}
  for seed in range(0 if args.skip_grid else args.seeds):
    grids = grid_game.make_grid_batch(cfg, args.grids, seed=seed,
                                      data_seed=config.data.seed)
    methods = standard_methods(LAYER, key=jax.random.key(seed),
                               image_size=grids["image"].shape[1])
    clfs = method_classifiers(methods, model, variables, layers=[LAYER],
                              input_shape=grids["image"].shape[1:])
    results = grid_game.run_grid_game(clfs, grids, methods)
    for name, scores in results.items():
      for metric, values in scores.items():
        per_seed.setdefault((name, metric), []).append(
            metrics.nan_summary(values)["mean"])
    print(json.dumps({"benchmark": "grid_game_progress", "seed": seed}),
          flush=True)

  table = {}
  for (name, metric), vals in per_seed.items():
    table.setdefault(name, {})[metric] = (float(np.mean(vals)),
                                          float(np.std(vals)))
    print(json.dumps({"benchmark": "grid_game", "method": name,
                      "metric": metric, "mean": float(np.mean(vals)),
                      "std_over_seeds": float(np.std(vals)),
                      "per_seed": vals}), flush=True)

  clf = from_flax(model, variables, layers=[LAYER])
  # LaFAM vs Grad-CAM pointing game on single test images, with the
  # benchmark's distractors and (a control) without them.
  gc = jax.jit(lambda x, y: attr.grad_cam(clf, x, y, layer=LAYER))
  lf = jax.jit(lambda x: attr.lafam(clf, x, layer=LAYER))
  for distractors in (cfg.max_distractors, 0):
    render_cfg = dataclasses.replace(cfg, max_distractors=distractors)
    batch = clues.render(render_cfg, "test", np.arange(args.pointing_images),
                         seed=config.data.seed)
    keep = batch["label"] > 0
    x = jnp.asarray(batch["image"][keep])
    y = jnp.asarray(batch["label"][keep])
    m = jnp.asarray(batch["mask"][keep])
    for name, f in (("grad_cam", lambda x, y: gc(x, y)),
                    ("lafam", lambda x, y: lf(x))):
      maps = jnp.concatenate([f(x[i:i + 64], y[i:i + 64])
                              for i in range(0, len(x), 64)])
      for ties in ("fraction", "all", "any"):
        for tol in (0, 3):
          s = metrics.nan_summary(metrics.pointing_game(
              maps, m, tolerance=tol, ties=ties))
          print(json.dumps({"benchmark": "pointing_game", "method": name,
                            "max_distractors": distractors, "ties": ties,
                            "tolerance": tol, **s}), flush=True)

  if args.skip_grid:
    return
  print("\n| method | RA | RA + AL | change | IoU | IoU + AL | F1 | F1 + AL |"
        " RA (clue) | RA (clue) + AL |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name in (n for n in table if not n.endswith("+AL")):
    base, lens = table[name], table.get(name + "+AL")

    def cell(d, k):
      return f"{d[k][0]:.3f} ± {d[k][1]:.3f}" if d else "n/a"

    change = (f"{100 * (lens['RA'][0] / base['RA'][0] - 1):+.0f} %"
              if lens else "n/a")
    print(f"| {name} | {cell(base, 'RA')} | {cell(lens, 'RA')} | {change} | "
          f"{cell(base, 'IoU')} | {cell(lens, 'IoU')} | {cell(base, 'F1')} | "
          f"{cell(lens, 'F1')} | {cell(base, 'RA_clue')} | "
          f"{cell(lens, 'RA_clue')} |")


if __name__ == "__main__":
  main()
