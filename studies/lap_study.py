r"""The LAP paper's claims on the binary clue benchmark, over seeds.

  for s in 0 1 2; do python studies/lap_study.py --seeds $s & done; wait
  python studies/lap_study.py --report               # docs/lap_study/

Variants (``configs/lap.py``): ``vanilla``; ``lap_wsl`` (LAP-Pools at every
pooling place, weak supervision, the paper's RSNA setting); ``lap_bbl``
(expert boxes, Eq. 8); ``lap_detached`` (detached LAPs on every block of
the frozen vanilla model of the same seed; ``lap_detached_deep``: on
``block2 block3`` only; ``lap_detached4``: on ``block1 .. block4`` of
``vanilla4``, the same model with a 4th block, so that the deepest LAP
is coarse, 4x4, as the paper's LAP4 is); the ablations ``naive_v1``
and ``naive_v2`` (Table 3; ``hybrid`` with ``--variants``). Setting,
small enough for a 2-core CPU: 32x32 binary clue images (clue boxes 4-20 %
of the image), SmallCNN widths (16, 32, 64) (LAP grids 32, 16, 8),
``--steps`` AdamW steps at the default schedule, batch 64; seeds change
initialisation and batch order. ``NAME,multi`` variants use the 4-class
clue benchmark (3 one-vs-others DCs) with the paper's ImageNet setting: 2
LAPs (``pool2 global_pool``; detached: ``block2 block3``), MaxAR off, LAP
weight 0.1.

Each run is scored by ``lapjax.evaluation.lap_report.lap_evaluation`` on
the first 256 test images (learned thresholds from 64 validation
images) for LAP and the paper's bar methods: input x gradient, guided
backprop, Grad-CAM at ``block3`` (IoU with the true clue mask under four
binarisations, SRG, keep-top-k accuracy, standalone LAPs) plus test
accuracy on 2,000 images. One JSON line per run in
``docs/lap_study/results.jsonl``; ``--report`` writes ``results.md``.
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

from configs import lap as lap_configs  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation.lap_report import lap_evaluation  # noqa: E402
from lapjax.train.loop import (  # noqa: E402
  build_model,
  dc_membership,
  lap_map_layers,
  predict,
  train_and_evaluate,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "lap_study")
VARIANTS = ("vanilla", "lap_wsl", "lap_bbl", "lap_detached", "naive_v1",
            "naive_v2")
# The paper's geometry for detached LAPs (Table 14): a deepest LAP coarse
# next to the clues (block4 at 4x4, 8-px cells); Grad-CAM stays at block3.
FOUR_BLOCKS = ("vanilla4", "lap_detached4")


def study_config(variant: str, seed: int, steps: int, runs: str):
  four = variant in FOUR_BLOCKS            # a 4th block, at 4x4
  base = variant[:-1] if four else variant
  deep = base == "lap_detached_deep"       # detached on block2, block3 only
  c = lap_configs.get_config("lap_detached" if deep else base)
  c.seed = seed
  c.data.image_size = (32, 32)
  c.data.min_clue_fraction = 0.04
  c.data.max_clue_fraction = 0.2
  c.model.kwargs.widths = (16, 32, 64, 128) if four else (16, 32, 64)
  c.num_steps = steps
  c.checkpoint_every = steps
  c.log_every = 100
  c.optimizer.warmup_steps = steps // 20
  c.evaluation.layer = "block3"
  c.evaluation.lap_images = 256
  c.evaluation.lap_val_images = 64
  c.evaluation.methods = ("input_x_gradient", "guided_backprop", "grad_cam",
                          "deeplift", "relevance_cam", "lrp")
  multi = not c.data.binary         # 2 LAPs, the paper's ImageNet setting
  if c.lap.mode == "plugged":
    c.lap.places = (("pool2",) if multi else ("pool1", "pool2")) + (
        "global_pool",)
  elif c.lap.mode == "detached":
    c.lap.places = ("block2", "block3") if deep or multi else (
        "block1", "block2", "block3") + (("block4",) if four else ())
    c.init_from = os.path.join(runs, "vanilla,multi" if multi else
                               "vanilla4" if four else "vanilla") + f"_s{seed}"
    c.evaluation.layer = "backbone/block3"
  return c


DEFAULT_STEPS = 600


def _trained(variant: str, seed: int, steps: int, runs: str):
  """``(config, name, state, seconds)``: trains the run, or restores it
  when its folder holds the finished run (0 steps trained); rows of a
  non-default ``steps`` are named ``variant@steps``."""
  config = study_config(variant, seed, steps, runs)
  name = variant if steps == DEFAULT_STEPS else f"{variant}@{steps}"
  t0 = time.perf_counter()
  state = train_and_evaluate(config, os.path.join(runs, f"{name}_s{seed}"),
                             progress=False)
  return config, name, state, time.perf_counter() - t0


def _scored(config, state, seed: int, *, lap_layers) -> tuple[dict, float]:
  """``(lap_evaluation report, test accuracy)`` of a trained run."""
  info = sources.data_info(config.data)
  model = build_model(config, info)
  test, _ = sources.make_source(config.data, "test")
  val, _ = sources.make_source(config.data, "validation")
  logits, labels = predict(state, model, test, batch_size=250)
  report = lap_evaluation(config, model, {"params": state.params,
                                          "batch_stats": state.batch_stats},
                          test, val, lap_layers=lap_layers,
                          membership=dc_membership(info),
                          key=jax.random.key(seed))
  return report, float(np.mean(logits.argmax(-1) == labels))


def run(variant: str, seed: int, steps: int, runs: str) -> dict:
  """Trains and scores one run."""
  config, name, state, train_s = _trained(variant, seed, steps, runs)
  report, accuracy = _scored(config, state, seed,
                             lap_layers=lap_map_layers(config))
  return {"variant": name, "seed": seed, "steps": steps,
          "train_s": train_s, "test_accuracy": accuracy, **report}


def rescore_grad_cam(variant: str, seed: int, steps: int, runs: str,
                     layer: str) -> dict:
  """Grad-CAM of a finished run at another ``layer``, same protocol."""
  config, name, state, _ = _trained(variant, seed, steps, runs)
  config.evaluation.layer = layer
  config.evaluation.methods = ("grad_cam",)
  r, _ = _scored(config, state, seed, lap_layers=())
  return {"variant": name, "seed": seed, "grad_cam_layer": layer,
          "iou": {b: v["mean"] for b, v in r["iou"]["grad_cam"].items()},
          "srg": r["srg"]["grad_cam"]["mean"]}


def report() -> None:
  rows = [json.loads(line) for line in open(os.path.join(OUT,
                                                          "results.jsonl"))]
  by = {}
  for r in rows:
    by.setdefault(r["variant"], []).append(r)

  def ms(values, scale=1.0):
    v = np.asarray(values, np.float64) * scale
    return f"{v.mean():.1f} ± {v.std():.1f}" if v.size else ""

  lines = ["# LAP study on the clue benchmark (binary; `,multi`: 4 classes)",
           "",
           f"{len(rows)} runs; mean ± std over the seeds of each variant "
           "(accuracy table); command in "
           "`studies/lap_study.py`. IoU in percent with the true clue "
           "mask on correctly classified clue test images.", "",
           "## Accuracy", "",
           "| variant | seeds | test accuracy (%) | train s |",
           "|---|---|---|---|"]
  for v, rs in by.items():
    seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r:
                                                      r["seed"]))
    lines.append(f"| {v} | {seeds} | "
                 f"{ms([r['test_accuracy'] for r in rs], 100)} | "
                 f"{ms([r['train_s'] for r in rs])} |")
  for binar in ("mu_sigma", "top_k_gt", "learned", "lap_0.5"):
    methods = sorted({m for r in rows for m, per in r["iou"].items()
                      if binar in per})
    if not methods:
      continue
    lines += ["", f"## IoU, binarisation `{binar}`", "",
              "| variant | " + " | ".join(methods) + " |",
              "|---" * (len(methods) + 1) + "|"]
    for v, rs in by.items():
      cells = [ms([r["iou"][m][binar]["mean"] for r in rs
                   if m in r["iou"] and binar in r["iou"][m]], 100)
               for m in methods]
      lines.append(f"| {v} | " + " | ".join(cells) + " |")
  methods = sorted({m for r in rows for m in r["srg"]})
  lines += ["", "## SRG (retention 0.5-1, max about 0.5)", "",
            "| variant | " + " | ".join(methods) + " |",
            "|---" * (len(methods) + 1) + "|"]
  for v, rs in by.items():
    cells = [ms([r["srg"][m]["mean"] for r in rs if m in r["srg"]], 100)
             for m in methods]
    lines.append(f"| {v} | " + " | ".join(cells) + " |")
  lines += ["", "(SRG × 100.)", "", "## LAPs as standalone predictors "
            "(macro F1 × 100: predictivity / compatibility)", "",
            "| variant | LAP | predictivity | compatibility |",
            "|---|---|---|---|"]
  for v, rs in by.items():
    for name in rs[0].get("standalone", {}):
      lines.append(f"| {v} | {name} | " + ms(
          [r["standalone"][name]["predictivity_f1"] for r in rs], 100)
          + " | " + ms([r["standalone"][name]["compatibility_f1"]
                        for r in rs], 100) + " |")
  with open(os.path.join(OUT, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--variants", nargs="+", default=list(VARIANTS))
  p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
  p.add_argument("--runs", default=os.path.join(ROOT, "runs", "lap_study"))
  p.add_argument("--report", action="store_true")
  p.add_argument("--grad_cam_layer", help="re-score finished runs' "
                 "Grad-CAM at this layer (prints rows, writes nothing)")
  args = p.parse_args()
  if args.report:
    report()
    return
  if args.grad_cam_layer:
    for seed in args.seeds:
      for variant in args.variants:
        print(json.dumps(rescore_grad_cam(variant, seed, args.steps,
                                          args.runs, args.grad_cam_layer)),
              flush=True)
    return
  os.makedirs(OUT, exist_ok=True)
  for seed in args.seeds:
    for variant in args.variants:
      row = run(variant, seed, args.steps, args.runs)
      with open(os.path.join(OUT, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
      print(json.dumps({k: row[k] for k in ("variant", "seed",
                                             "test_accuracy", "train_s")}),
            flush=True)


if __name__ == "__main__":
  main()
