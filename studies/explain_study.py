r"""The paper-001 study on the binary clue benchmark: every loss x alpha x
seed, with exact and with coarse boxes; accuracy and saliency metrics.

  # two shards on two cores, then the report
  taskset -c 0 python studies/explain_study.py --shard 0 --num_shards 2 &
  taskset -c 1 python studies/explain_study.py --shard 1 --num_shards 2
  python studies/explain_study.py --report

Setting (small, so that 2 x (7 x 4 + 1) x seeds runs fit on a CPU): 32x32
binary clue images (clue boxes 4-20 % of the image), SmallCNN widths (16, 32,
64), Grad-CAM at ``block3`` (8x8), AdamW 3e-3, batch 32, ``--steps`` steps;
seeds change the initialisation and the batch order. Coarse boxes: each box
grows by 50 % of its side per side and overlapping boxes merge
(``data.box_padding = 0.5``). Evaluation on the first 512 test images:
accuracy; on the positive ones, Grad-CAM of the positive class (running
BatchNorm statistics, 8x8, min-max normalised) against the union of the
same kind of boxes as in training: top- and all-saliency precision (top 50
%) and annotation coverage (tau 0.01)
(``lapjax.evaluation.saliency_report``). The loss keeps the top
``--top_k`` of the heatmap (0.5, the paper's, by default); its Grad-CAM
uses the training forward pass (``--statistics batch``) or a second,
inference-mode pass (``running``); ``--probabilities sigmoid`` trains the
paper's two BCE outputs. Results go to
``docs/explain_study/results.*.jsonl``, in subfolders ``running/``,
``sigmoid/``, ``top_k_<value>/``, ``steps_<value>/`` (in that order) for
the non-default options; ``--report`` with the same options writes
``results.md`` and the box plots ``alpha.png`` and ``losses.png`` there.
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

from configs import default  # noqa: E402
from lapjax import explain_loss, from_flax  # noqa: E402
from lapjax.data import batching, sources  # noqa: E402
from lapjax.evaluation.saliency_report import saliency_scores  # noqa: E402
from lapjax.models import create_model  # noqa: E402
from lapjax.train.loop import ExplainLoss, make_optimizer, train_step  # noqa: E402,E501
from lapjax.train.state import create_train_state  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "docs", "explain_study")
ALPHAS = (0.25, 0.5, 0.75, 1.0)
LAYER = "block3"


def study_config(coarse: bool, seed: int, steps: int):
  c = default.get_config()
  c.seed = seed
  c.data.binary = True
  c.data.image_size = (32, 32)
  c.data.min_clue_fraction = 0.04
  c.data.max_clue_fraction = 0.2
  c.data.box_padding = 0.5 if coarse else 0.0
  c.data.num_train = 8000
  c.model.kwargs.widths = (16, 32, 64)
  c.batch_size = 32
  c.num_steps = steps
  c.optimizer.warmup_steps = steps // 10
  return c


def settings():
  for coarse in (False, True):
    yield coarse, "cross_entropy", 0.0
    for kind in explain_loss.SCORES:
      for alpha in ALPHAS:
        yield coarse, kind, alpha


def run_one(coarse, kind, alpha, seed, steps, num_test=512,
            reading="mask_values", top_k=0.5, statistics="batch",
            probabilities="softmax"):
  config = study_config(coarse, seed, steps)
  source, info = sources.make_source(config.data, "train")
  model = create_model(config.model.name, num_classes=2,
                       **config.model.kwargs)
  tx, schedule = make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(seed),
                             info["image_shape"])
  explain = (None if kind == "cross_entropy" else
             ExplainLoss(kind, alpha, LAYER, top_k, reading, 0.05,
                         statistics))
  step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx,
                                         explain=explain,
                                         probabilities=probabilities))
  keys = ("image", "label", "boxes", "boxes_valid")
  for i in range(steps):
    b = batching.train_batch(source, config.batch_size, i, seed)
    state, _ = step(state, {k: b[k] for k in keys})
  test, _ = sources.make_source(config.data, "test")
  t = test.get(np.arange(num_test))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  clf = from_flax(model, variables, layers=[LAYER])
  logits = np.asarray(jax.jit(clf.apply)(t["image"])[0])
  scores = saliency_scores(clf, t["image"], t["label"], t["boxes"],
                           t["boxes_valid"], layer=LAYER)
  return {
      "boxes": "coarse" if coarse else "exact", "loss": kind,
      "alpha": alpha, "seed": seed, "steps": steps, "reading": reading,
      "top_k": top_k, "statistics": statistics,
      "probabilities": probabilities,
      "accuracy": float(np.mean(logits.argmax(-1) == t["label"])),
      **{k: float(np.nanmean(v)) for k, v in scores.items()},
  }


def run_shard(shard, num_shards, seeds, steps, top_k, statistics,
              probabilities, out):
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, f"results.{shard}.jsonl")
  done = set()
  if os.path.exists(path):
    for line in open(path):
      r = json.loads(line)
      done.add((r["boxes"] == "coarse", r["loss"], r["alpha"], r["seed"]))
  jobs = [(c, k, a, s) for s in range(seeds) for c, k, a in settings()]
  for i, job in enumerate(jobs):
    if i % num_shards != shard or job in done:
      continue
    t0 = time.perf_counter()
    r = run_one(*job, steps, top_k=top_k, statistics=statistics,
                probabilities=probabilities)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    with open(path, "a") as f:
      f.write(json.dumps(r) + "\n")
    print(json.dumps(r), flush=True)


def compare_readings(shard, num_shards, seeds, steps, statistics, out):
  """The three differentiable top-k readings on one setting, into
  ``readings.jsonl``."""
  os.makedirs(out, exist_ok=True)
  jobs = [(r, s) for s in range(seeds) for r in explain_loss.READINGS]
  for i, (reading, seed) in enumerate(jobs):
    if i % num_shards == shard:
      r = run_one(True, "logit_sqr", 0.5, seed, steps, reading=reading,
                  statistics=statistics)
      with open(os.path.join(out, "readings.jsonl"), "a") as f:
        f.write(json.dumps(r) + "\n")
      print(json.dumps(r), flush=True)


def report(out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = []
  for name in sorted(os.listdir(out)):
    if name.startswith("results.") and name.endswith(".jsonl"):
      rows += [json.loads(line) for line in open(os.path.join(out, name))]
  metrics = ("accuracy", "top_precision", "all_precision", "coverage")
  lines = ["# Explanation-aware training study (paper 001)", "",
           f"{len(rows)} runs; mean ± std over seeds.", ""]
  for boxes in ("exact", "coarse"):
    sub = [r for r in rows if r["boxes"] == boxes]
    lines += [f"## {boxes} boxes", "",
              "| loss | alpha | n | " + " | ".join(metrics) + " |",
              "|---" * (len(metrics) + 3) + "|"]
    keys = sorted({(r["loss"], r["alpha"]) for r in sub},
                  key=lambda k: (k[0] != "cross_entropy", k))
    for loss, alpha in keys:
      rs = [r for r in sub if r["loss"] == loss and r["alpha"] == alpha]
      cells = [f"{np.mean([r[m] for r in rs]):.3f} ± "
               f"{np.std([r[m] for r in rs]):.3f}" for m in metrics]
      lines.append(f"| {loss} | {alpha} | {len(rs)} | " + " | ".join(cells)
                   + " |")
    lines.append("")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines))
  for name, by in (("alpha", "alpha"), ("losses", "loss")):
    fig, axes = plt.subplots(2, len(metrics), figsize=(4 * len(metrics), 7))
    for row, boxes in enumerate(("exact", "coarse")):
      sub = [r for r in rows if r["boxes"] == boxes
             and r["loss"] != "cross_entropy"]
      groups = sorted({r[by] for r in sub})
      for col, m in enumerate(metrics):
        ax = axes[row, col]
        ax.boxplot([[r[m] for r in sub if r[by] == g] for g in groups])
        ax.set_xticks(range(1, len(groups) + 1),
                      [str(g) for g in groups], rotation=45, fontsize=7)
        ax.set_title(f"{m} ({boxes} boxes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}.png"), dpi=90)
    plt.close(fig)
  print("\n".join(lines))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shard", type=int, default=0)
  parser.add_argument("--num_shards", type=int, default=1)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=400,
                      help="training steps; results of other than 400 go to "
                      "a steps_<value>/ subfolder")
  parser.add_argument("--top_k", type=float, default=0.5,
                      help="fraction of heatmap cells the loss keeps; "
                      "results go to docs/explain_study[/top_k_<value>]")
  parser.add_argument("--statistics", default="batch",
                      choices=explain_loss.STATISTICS,
                      help="BatchNorm in the in-loss Grad-CAM; 'running' "
                      "results go to a running/ subfolder")
  parser.add_argument("--probabilities", default="softmax",
                      choices=explain_loss.PROBABILITIES,
                      help="model outputs (sigmoid: trained with binary "
                      "cross-entropy); 'sigmoid' results go to sigmoid/")
  parser.add_argument("--report", action="store_true")
  parser.add_argument("--readings", action="store_true",
                      help="compare the top-k readings (logit_sqr, alpha "
                      "0.5, coarse boxes) instead")
  args = parser.parse_args()
  out = OUT if args.statistics == "batch" else os.path.join(OUT, "running")
  if args.probabilities != "softmax":
    out = os.path.join(out, args.probabilities)
  if args.top_k != 0.5:
    out = os.path.join(out, f"top_k_{args.top_k}")
  if args.steps != 400:
    out = os.path.join(out, f"steps_{args.steps}")
  if args.report:
    report(out)
  elif args.readings:
    compare_readings(args.shard, args.num_shards, args.seeds, args.steps,
                     args.statistics, out)
  else:
    run_shard(args.shard, args.num_shards, args.seeds, args.steps,
              args.top_k, args.statistics, args.probabilities, out)


if __name__ == "__main__":
  main()
