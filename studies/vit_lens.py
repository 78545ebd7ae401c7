r"""Paper 003's claim on a ViT: does Attribution Lens raise RA on the grid game?

  python studies/vit_lens.py --workdir runs/vit_restart --grids 16 --seeds 3

On the clue grid pointing game (``lapjax.evaluation.grid_game``: 2x2 grids
of four clue test images of distinct classes at twice the training size,
one map per quadrant class, ``C'`` = the four quadrant labels) the clue ViT
of ``--workdir`` is explained by the transformer methods (attention
rollout, Grad-Rollout / GAE, T-Attr, Bi-attn, T-attn; Bi-attn and T-attn
from block 1, as ``evaluation.methods.transformer_methods``; and InFlow,
``transformer.inflow`` on its ``inflow_classifier``), gradient
saliency and Grad-CAM at the config's CAM layer (``block4/norm1``), each
without and with the lens (``attribution.lens_refine`` of the four
class-wise maps, the paper's form). Paper 003 reports the lens raising
mean region attribution (RA) by +20 % to +180 % on ViTs.

Per method: RA, IoU and F1 (mean over the quadrants of every grid of
every seed), the paired difference ``RA(lens) - RA`` per quadrant with its
standard error over all quadrants, the relative change of the means, and
the standard deviation of the per-seed mean differences over ``--seeds``
independent grid sets (the run-to-run noise a "lowering" must exceed).
Rollout is label-free: its four class maps are equal and the lens is
undefined (not scored). Prints JSON lines, then a Markdown table.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lapjax.attribution import transformer as tr  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation import grid_game  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402
from lapjax.evaluation.methods import (  # noqa: E402
  Method,
  method_classifiers,
  standard_methods,
  transformer_methods,
)

CNN_STYLE = ("gradient", "grad_cam")
METRICS = ("RA", "IoU", "F1", "RA_clue")


def study_methods(layer: str, key: jax.Array, image_size: int) -> dict:
  """Gradient saliency, Grad-CAM at ``layer`` and the transformer methods,
  with ``evaluation.methods``' settings."""
  standard = standard_methods(layer, key=key, image_size=image_size)
  return {**{n: standard[n] for n in CNN_STYLE}, **transformer_methods(),
          "inflow": Method(tr.inflow, {}, classifier="inflow")}


def paired(base: np.ndarray, lens: np.ndarray) -> tuple[float, float]:
  """Mean and standard error of ``lens - base`` over finite pairs."""
  d = lens - base
  d = d[np.isfinite(d)]
  return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/vit_restart")
  parser.add_argument("--grids", type=int, default=16)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--methods", nargs="*", default=None,
                      help="a subset of the study's methods")
  args = parser.parse_args()
  config, model, variables = load_run(args.workdir)
  layer = config.evaluation.layer
  cfg = sources.clues_config(config.data)

  scores: dict[str, dict[str, list[np.ndarray]]] = {}
  seconds: dict[str, float] = {}
  for seed in range(args.seeds):
    grids = grid_game.make_grid_batch(cfg, args.grids, seed=seed,
                                      data_seed=config.data.seed)
    methods = study_methods(layer, jax.random.key(seed),
                            grids["image"].shape[1])
    if args.methods:
      methods = {n: methods[n] for n in args.methods}
    known = {n: m for n, m in methods.items() if m.classifier != "inflow"}
    clfs = method_classifiers(known, model, variables, layers=[layer],
                              input_shape=grids["image"].shape[1:])
    clfs["inflow"] = tr.inflow_classifier(model, variables)
    for name, method in methods.items():
      start = time.perf_counter()
      results = grid_game.run_grid_game(clfs, grids, {name: method},
                                        batch_size=args.batch_size)
      seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
      print(json.dumps({"study": "vit_lens_progress", "seed": seed,
                        "method": name, "seconds": round(seconds[name], 1)}),
            flush=True)
      for variant, values in results.items():
        for metric, v in values.items():
          scores.setdefault(variant, {}).setdefault(metric, []).append(v)

  rows = []
  for name in (n for n in scores if not n.endswith("+AL")):
    base = {k: np.concatenate(v) for k, v in scores[name].items()}
    row = {"method": name, "grids": args.grids, "seeds": args.seeds,
           "seconds": round(seconds[name], 1),
           **{k: float(np.nanmean(base[k])) for k in METRICS}}
    if name + "+AL" in scores:
      lens = {k: np.concatenate(v) for k, v in scores[name + "+AL"].items()}
      row.update({f"{k}+AL": float(np.nanmean(lens[k])) for k in METRICS})
      row["dRA"], row["dRA_se"] = paired(base["RA"], lens["RA"])
      row["dRA_clue"], row["dRA_clue_se"] = paired(base["RA_clue"],
                                                   lens["RA_clue"])
      row["RA_change_percent"] = 100 * (row["RA+AL"] / row["RA"] - 1)
      per_seed = [np.nanmean(b - a) for a, b in
                  zip(scores[name]["RA"], scores[name + "+AL"]["RA"])]
      row["dRA_per_seed"] = [float(v) for v in per_seed]
      row["dRA_seed_std"] = float(np.std(per_seed, ddof=1)
                                  if len(per_seed) > 1 else np.nan)
    rows.append(row)
    print(json.dumps({"study": "vit_lens", **row}), flush=True)

  print("\n| method | RA | RA + AL | RA(AL) - RA, paired ± SE | change | "
        "seed-to-seed SD of the change | IoU | IoU + AL | F1 | F1 + AL | "
        "RA (clue) | RA (clue) + AL |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if "dRA" in r:
      print(f"| {r['method']} | {r['RA']:.3f} | {r['RA+AL']:.3f} | "
            f"{r['dRA']:+.3f} ± {r['dRA_se']:.3f} | "
            f"{r['RA_change_percent']:+.0f} % | {r['dRA_seed_std']:.3f} | "
            f"{r['IoU']:.3f} | {r['IoU+AL']:.3f} | {r['F1']:.3f} | "
            f"{r['F1+AL']:.3f} | {r['RA_clue']:.3f} | "
            f"{r['RA_clue+AL']:.3f} |")
    else:
      print(f"| {r['method']} | {r['RA']:.3f} | (label-free) | | | | "
            f"{r['IoU']:.3f} | | {r['F1']:.3f} | | {r['RA_clue']:.3f} | |")


if __name__ == "__main__":
  main()
