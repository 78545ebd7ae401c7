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
weight 0.1. ``NAME,resnet18`` (plugged-in variants only) swaps the small
CNN for a reduced ResNet-18 (``RESNET18``) whose LAP-Pools replace its
strided convolutions in the paper's form (``RESNET18_PLACES``); Grad-CAM
at its last stage, ``stage4``. The issue-20 rerun (docs/studies/
lap_study.md, "Rerun")::

  python studies/lap_study.py --seeds 0 --variants vanilla lap_wsl \
      --runs RUNS --results docs/lap_study/rerun.jsonl
  python studies/lap_study.py --seeds 0 --steps 300 --variants \
      vanilla,resnet18 lap_wsl,resnet18 --runs RUNS \
      --results docs/lap_study/rerun.jsonl
  python studies/lap_study.py --report --results docs/lap_study/rerun.jsonl

Each run is scored by ``lapjax.evaluation.lap_report.lap_evaluation`` on
the first 256 test images (learned thresholds from 64 validation
images) for LAP and the paper's bar methods: input x gradient, guided
backprop, Grad-CAM at ``block3``, DeepLIFT, Relevance-CAM, LRP (IoU with
the true clue mask under four binarisations, box-capture sensitivity and
truncated IoU, SRG, keep-top-k accuracy, paired t-tests of the
aggregated LAP map against each method, sensitivity and specificity,
standalone LAPs) plus test accuracy on 2,000 images. One JSON line per
run in ``--results`` (default ``docs/lap_study/results.jsonl``);
``--report`` tabulates every key into the ``.md`` beside it. A run whose
folder holds the finished run is restored and scored again, not
retrained (its ``train_s`` is then the restore time); ``--methods``
scores only the bar methods named (LAP always), e.g. to re-score one
method of a finished run after its rule changed::

  python studies/lap_study.py --seeds 0 --steps 300 \
      --variants lap_wsl,resnet18 --methods deeplift --runs RUNS \
      --results docs/lap_study/relevance_lap_resnet_deeplift.jsonl
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import lap as lap_configs  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation.lap_report import (  # noqa: E402
  BASELINE_METHODS,
  BINARIZATIONS,
  lap_evaluation,
)
from lapjax.metrics.significance import format_comparison  # noqa: E402
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


# The reduced ResNet-18 (``NAME,resnet18``): torchvision's block layout
# (2, 2, 2, 2) with an eighth of its widths (8 .. 64, about the small
# CNN's compute) and the 3x3/1 stem of small inputs (grids 32, 32, 16, 8,
# 4). Its LAP-Pools are the paper's
# 4 LAPs shifted by one stage, since a small-input ResNet has no stem max
# pool: the strided stages in the paper's form (stride-1 convolution, then
# a 3x3/2 LAP-Pool; map grids 32, 16, 8) and the global pool (4x4).
RESNET18 = {"small_inputs": True, "width": 8}
RESNET18_PLACES = ("stage2_pool", "stage3_pool", "stage4_pool",
                   "global_pool")


def study_config(variant: str, seed: int, steps: int, runs: str):
  name, *flags = variant.split(",")
  resnet = "resnet18" in flags
  variant = ",".join([name, *(f for f in flags if f != "resnet18")])
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
  if resnet:
    if c.lap.mode == "detached":
      raise ValueError("the reduced ResNet-18 has plugged-in LAP variants "
                       f"only; got {variant!r}")
    c.model.name = "resnet18"
    c.model.kwargs = ml_collections.ConfigDict(RESNET18)
    c.evaluation.layer = "stage4"          # the last stage, 4x4
    if c.lap.mode == "plugged":
      c.lap.places = RESNET18_PLACES[-2:] if multi else RESNET18_PLACES
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


def run(variant: str, seed: int, steps: int, runs: str,
        methods: tuple[str, ...] | None = None) -> dict:
  """Trains and scores one run (``methods``: only these bar methods
  beside LAP, e.g. to re-score one method of a finished run)."""
  config, name, state, train_s = _trained(variant, seed, steps, runs)
  if methods is not None:
    config.evaluation.methods = tuple(methods)
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


def _mean_std(values, scale=1.0) -> str:
  v = np.asarray([x for x in values if x is not None], np.float64) * scale
  v = v[~np.isnan(v)]
  if v.size < 2:                   # one seed: no spread to show
    return f"{v[0]:.1f}" if v.size else ""
  return f"{v.mean():.1f} ± {v.std():.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
          *("| " + " | ".join(r) + " |" for r in rows)]


def _per_binarization(by: dict, key: str, title: str, value) -> list[str]:
  """One table per binarisation of ``row[key][method][binarisation]``."""
  lines = []
  for binar in BINARIZATIONS:
    methods = sorted({m for rs in by.values() for r in rs
                      for m, per in r.get(key, {}).items() if binar in per})
    if not methods:
      continue
    rows = [[v] + [_mean_std([value(r[key][m][binar]) for r in rs
                              if m in r.get(key, {})
                              and binar in r[key][m]], 100)
                   for m in methods] for v, rs in by.items()]
    lines += ["", f"## {title}, binarisation `{binar}`", "",
              *_table(["variant", *methods], rows)]
  return lines


def report(results: str) -> None:
  """Tables of every key ``lap_evaluation`` writes, from ``results``
  (``.jsonl``) into the ``.md`` beside it; mean ± std over seeds."""
  rows = [json.loads(line) for line in open(results)]
  by = {}
  for r in rows:
    by.setdefault(r["variant"], []).append(r)
  lines = ["# LAP study on the clue benchmark (binary; `,multi`: 4 classes; "
           "`,resnet18`: the reduced ResNet-18)", "",
           f"{len(rows)} runs; mean ± std over the seeds of each variant; "
           "command in `studies/lap_study.py`. IoU, capture and "
           "truncated IoU in percent, on correctly classified clue test "
           "images.", "", "## Accuracy", ""]
  lines += _table(
      ["variant", "seeds", "test accuracy (%)", "train s"],
      [[v, ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r:
                                                   r["seed"])),
        _mean_std([r["test_accuracy"] for r in rs], 100),
        _mean_std([r["train_s"] for r in rs])] for v, rs in by.items()])
  binary = {v: rs for v, rs in by.items()
            if all("classification" in r for r in rs)}
  if binary:
    keys = ("accuracy", "sensitivity", "specificity", "balanced_accuracy",
            "f1")
    lines += ["", "## Binary classification of the evaluated test images "
              "(clue class positive; percent)", ""]
    lines += _table(["variant", "n", *keys], [
        [v, str(rs[0]["classification"]["n"])]
        + [_mean_std([r["classification"][k] for r in rs], 100)
           for k in keys] for v, rs in binary.items()])
  lines += _per_binarization(by, "iou", "IoU", lambda s: s["mean"])
  lines += _per_binarization(by, "box_capture", "Box-capture sensitivity "
                             "(App. D.2.4)", lambda s: s["sensitivity"])
  lines += _per_binarization(by, "truncated_iou", "Truncated IoU "
                             "(App. D.2.4)", lambda s: s["mean"])
  methods = sorted({m for r in rows for m in r["srg"]})
  lines += ["", "## SRG × 100 (retention 0.5-1, max about 50)", ""]
  lines += _table(["variant", *methods], [
      [v] + [_mean_std([r["srg"][m]["mean"] for r in rs if m in r["srg"]],
                       100) for m in methods] for v, rs in by.items()])
  fractions = rows[0]["keep_top_accuracy"]["fractions"]
  lines += ["", "## Keep-top-k accuracy (percent; Sec. 3.3, Fig. 5: the "
            "top k % of pixels kept, the rest black, w.r.t. the "
            "prediction)", ""]
  lines += _table(["variant", "method", *(f"{100 * f:.0f} %"
                                          for f in fractions)], [
      [v, m] + [_mean_std([r["keep_top_accuracy"][m][i] for r in rs
                           if m in r["keep_top_accuracy"]], 100)
                for i in range(len(fractions))]
      for v, rs in by.items() for m in sorted(rs[0]["keep_top_accuracy"])
      if m != "fractions"])
  tested = [r for r in rows if "significance" in r]
  if tested:
    scores = list(tested[0]["significance"]["scores"])
    lines += ["", "## `lap` against each method: paired t-test over the "
              "images (two-sided), per run", "",
              "Mean difference (lap minus the method; IoU in percentage "
              "points, SRG × 100) ± its standard error, p-value, pairs.", ""]
    lines += _table(["variant", "seed", "method", *scores], [
        [r["variant"], str(r["seed"]), m]
        + [format_comparison(r["significance"]["scores"][k][m], scale=100)
           if m in r["significance"]["scores"].get(k, {}) else ""
           for k in scores]
        for r in tested for m in sorted({
            m for k in scores
            for m in r["significance"]["scores"].get(k, {})})])
  columns = ("predictivity_f1", "compatibility_f1", "sensitivity",
             "specificity", "mlp_predictivity_top1",
             "mlp_compatibility_top1")
  standalone = [(v, rs) for v, rs in by.items() if "standalone" in rs[0]]
  if standalone:
    cols = [k for k in columns if any(k in row for _, rs in standalone
                                      for row in rs[0]["standalone"].values())]
    lines += ["", "## LAPs as standalone predictors (App. D.5; percent: "
              "macro F1 w.r.t. labels / predictions, the binary rates, the "
              "MLP's top-1)", ""]
    lines += _table(["variant", "LAP", *cols], [
        [v, name] + [_mean_std([r["standalone"][name].get(k) for r in rs],
                               100) for k in cols]
        for v, rs in standalone for name in rs[0]["standalone"]])
  out = os.path.splitext(results)[0] + ".md"
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--variants", nargs="+", default=list(VARIANTS))
  p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
  p.add_argument("--runs", default=os.path.join(ROOT, "runs", "lap_study"))
  p.add_argument("--results", default=os.path.join(OUT, "results.jsonl"),
                 help="the JSON-lines file rows are appended to and "
                 "--report reads (it writes the .md beside it)")
  p.add_argument("--report", action="store_true")
  p.add_argument("--methods", nargs="+", choices=BASELINE_METHODS,
                 help="score only these bar methods beside LAP "
                 "(default: all of the study's)")
  p.add_argument("--grad_cam_layer", help="re-score finished runs' "
                 "Grad-CAM at this layer (prints rows, writes nothing)")
  args = p.parse_args()
  if args.report:
    report(args.results)
    return
  if args.grad_cam_layer:
    for seed in args.seeds:
      for variant in args.variants:
        print(json.dumps(rescore_grad_cam(variant, seed, args.steps,
                                          args.runs, args.grad_cam_layer)),
              flush=True)
    return
  os.makedirs(os.path.dirname(os.path.abspath(args.results)),
              exist_ok=True)
  for seed in args.seeds:
    for variant in args.variants:
      row = run(variant, seed, args.steps, args.runs, args.methods)
      with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
      print(json.dumps({k: row[k] for k in ("variant", "seed",
                                             "test_accuracy", "train_s")}),
            flush=True)


if __name__ == "__main__":
  main()
