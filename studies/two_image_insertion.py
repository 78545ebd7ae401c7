r"""Paper 003's two-image insertion / deletion test on the clue benchmark.

  python studies/two_image_insertion.py --workdir runs/clue_default \
      [--composites 200] [--seeds 2] [--out docs/studies/two_image.jsonl]

Claim tested (paper 003, Sec. 4.2, Table 2 and App. Table 12): on
two-image composites, Attribution Lens raises the insertion AUC of CNN
attribution methods by 8-11 % and lowers their deletion AUC, Grad-CAM
excepted. Protocol (``lapjax.evaluation.composites``): clue test images of
the clue classes whose clue lies for at least 80 % in the central half of
the width, that half cropped, two crops of distinct classes side by side;
each composite explained for both of its classes in one call (``[G, 2]``
targets), the maps scored as they are and after the lens over ``C' =``
the two classes; insertion and deletion towards the blurred composite, 21
points, softmax probability of the explained class, AUC in percent.
Statistics: per map the paired difference ``lens - base``; its mean and
standard error over all maps of all seeds (``--seeds`` independent sets of
``--composites`` composites).

Prints JSON lines, then the Markdown table of
docs/studies/two_image_insertion.md.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lapjax.data import clues, sources  # noqa: E402
from lapjax.evaluation import composites, explanations  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402
from lapjax.evaluation.methods import (  # noqa: E402
  method_classifiers,
  standard_methods,
)

LAYER = "block4"
# Paper 003 Table 2's CNN methods that lapjax has (LRP: the relevance
# classifier), Grad-CAM among them (the paper's exception).
METHODS = ("integrated_gradients", "guided_backprop", "input_x_gradient",
           "guided_grad_cam", "grad_cam", "lrp")


def composite_set(config, num: int, *, seed: int) -> dict[str, np.ndarray]:
  """``num`` composites of clue test images (clue classes, centred)."""
  cfg = sources.clues_config(config.data)
  pool = clues.render(cfg, "test", np.arange(6 * num + 400),
                      seed=config.data.seed)
  keep = np.flatnonzero((pool["label"] > 0)
                        & composites.centred(pool["mask"]))
  chosen = {k: v[keep] for k, v in pool.items()}
  pairs = composites.choose_pairs(chosen["label"], num, seed=seed)
  return composites.make_composites(chosen, pairs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/clue_default")
  parser.add_argument("--composites", type=int, default=200)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--out", default=None,
                      help="also write JSON lines there, and each seed's "
                      "per-map scores to <out>.seed<k>.npz")
  args = parser.parse_args()
  config, model, variables = load_run(args.workdir)
  names = args.methods.split(",")
  out = open(args.out, "w") if args.out else None

  def emit(row):
    line = json.dumps(row)
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()

  scores = {}            # (method, variant, metric) -> list of [G, 2]
  scorer = None
  for seed in range(args.seeds):
    t0 = time.time()
    comp = composite_set(config, args.composites, seed=seed)
    table = standard_methods(LAYER, key=jax.random.key(seed),
                             image_size=comp["image"].shape[1])
    methods = {m: table[m] for m in names}
    clfs = method_classifiers(methods, model, variables, layers=[LAYER],
                              input_shape=comp["image"].shape[1:])
    maps = explanations.explain(clfs, comp["image"], comp["labels"],
                                methods, batch_size=16)
    plain = clfs["plain"]
    if scorer is None:     # one compilation for every method and variant
      scorer = jax.jit(lambda x, t, m, plain=plain:
                       composites.composite_insertion_deletion(
                           plain, x, t, m, steps=args.steps))
    probs = jax.nn.softmax(plain.apply(jnp.asarray(comp["image"]))[0])
    both = np.take_along_axis(np.asarray(probs), comp["labels"], 1)
    top2 = np.argsort(-np.asarray(probs), 1)[:, :2]
    emit({"benchmark": "two_image_composites", "seed": seed,
          "composites": len(comp["image"]),
          "mean_probability_of_each_class": float(both.mean()),
          "both_classes_in_top2": float(np.mean(
              (np.sort(top2, 1) == np.sort(comp["labels"], 1)).all(1)))})
    for name, m in maps.items():
      for variant, v in (("base", m), ("lens", composites.with_lens(m))):
        s = jax.device_get(scorer(jnp.asarray(comp["image"]),
                                  jnp.asarray(comp["labels"]), v))
        for metric in ("ins", "del"):
          scores.setdefault((name, variant, metric), []).append(
              np.asarray(s[metric]))
      last = {m: scores[(name, m, k)][-1] for m in ("base", "lens")
              for k in ("ins",)}
      emit({"benchmark": "two_image_seed", "seed": seed, "method": name,
            **composites.paired_summary(last["base"], last["lens"])})
    if out:
      np.savez(f"{args.out}.seed{seed}.npz", labels=comp["labels"],
               **{f"{n}/{v}/{k}": a[-1] for (n, v, k), a in scores.items()})
    emit({"benchmark": "two_image_progress", "seed": seed,
          "seconds": round(time.time() - t0, 1)})

  rows = {}
  for name in names:
    for metric in ("ins", "del"):
      base = np.concatenate(scores[(name, "base", metric)]).reshape(-1)
      lens = np.concatenate(scores[(name, "lens", metric)]).reshape(-1)
      s = composites.paired_summary(base, lens)
      per_seed = [composites.paired_summary(b, ln)["relative"] for b, ln in
                  zip(scores[(name, "base", metric)],
                      scores[(name, "lens", metric)])]
      rows[(name, metric)] = s
      emit({"benchmark": "two_image_insertion", "method": name,
            "metric": metric, **s, "relative_per_seed": per_seed})

  for metric in ("ins", "del"):
    emit({"benchmark": "two_image_average", "metric": metric,
          "mean_relative_change": float(np.mean(
              [rows[(n, metric)]["relative"] for n in names]))})
  if out:
    out.close()
  print("\n| method | INS | INS + AL | paired diff ± SE | change | DEL | "
        "DEL + AL | paired diff ± SE | change |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in names:
    i, d = rows[(name, "ins")], rows[(name, "del")]
    print(f"| {name} | {i['base']:.2f} | {i['lens']:.2f} | "
          f"{i['diff']:+.2f} ± {i['diff_se']:.2f} | "
          f"{100 * i['relative']:+.1f} % | {d['base']:.2f} | "
          f"{d['lens']:.2f} | {d['diff']:+.2f} ± {d['diff_se']:.2f} | "
          f"{100 * d['relative']:+.1f} % |")


if __name__ == "__main__":
  main()
