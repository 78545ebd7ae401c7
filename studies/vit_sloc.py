r"""Paper 004's claim on a ViT: SLOC against T-Attr, GAE and RISE.

  python studies/vit_sloc.py --workdir runs/vit_restart --images 48

On the first ``--images`` clue test images (clue classes) of the clue ViT
in ``--workdir``, explaining the true class, with the blurred baseline
(``--baseline blur``, the default: SLOC's masked inputs, RISE's masks and
the metrics' perturbations all go towards the Gaussian-blurred image,
``configs/sloc.py:blur``), each method's maps are scored by
``explanations.faithfulness_scores`` (POS / NEG by top-1 accuracy, DEL /
INS by probability, NPD = NEG - POS, IDD = INS - DEL; AUCs in percent;
no SIC / AIC). Methods: SLOC (``attr.sloc``, ``evaluation.methods``'
settings, ``--sloc_masks`` masks per patch size and ``--sloc_steps``
Adam steps), T-Attr (``transformer_attribution``), GAE (Grad-Rollout) and
RISE (``--rise_masks`` masks). Paper 004 (Tables 2, 3, 5, 8) reports
SLOC above T-Attr, GAE and RISE in both measures on ViT-S and ViT-B.

Prints one JSON line per method with the mean scores, SLOC's per-image
paired differences ``SLOC - method`` in NPD and IDD (mean and standard
error over the images), and the seconds the maps took; then a Markdown
table.
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

from lapjax.data import sources  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402
from lapjax.evaluation.explanations import (  # noqa: E402
  explain,
  faithfulness_scores,
)
from lapjax.evaluation.methods import (  # noqa: E402
  method_classifiers,
  standard_methods,
  transformer_methods,
)
from lapjax.train.config import BASELINES  # noqa: E402

COMPARED = ("t_attr", "grad_rollout", "rise")
SCORES = ("pos", "neg", "del", "ins", "npd", "idd")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/vit_restart")
  parser.add_argument("--images", type=int, default=48)
  parser.add_argument("--baseline", choices=tuple(BASELINES), default="blur")
  parser.add_argument("--sloc_masks", type=int, default=500)
  parser.add_argument("--sloc_steps", type=int, default=501)
  parser.add_argument("--rise_masks", type=int, default=500)
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args()
  config, model, variables = load_run(args.workdir)
  layer = config.evaluation.layer
  source, _ = sources.make_source(config.data, "test")
  batch = source.get(np.arange(min(8 * args.images, source.num_examples)))
  clue = np.flatnonzero(batch["label"] > 0)[:args.images]
  images, labels = batch["image"][clue], batch["label"][clue]
  baseline = BASELINES[args.baseline]
  key = jax.random.key(config.evaluation.seed)
  standard = standard_methods(
      layer, key=key, image_size=images.shape[1],
      rise_masks=args.rise_masks, sloc_masks=args.sloc_masks,
      sloc_steps=args.sloc_steps, baseline=baseline)
  methods = {"sloc": standard["sloc"],
             **{n: m for n, m in transformer_methods().items()
                if n in COMPARED}, "rise": standard["rise"]}
  clfs = method_classifiers(methods, model, variables, layers=[layer],
                            input_shape=images.shape[1:])
  plain = clfs.get("plain") or clfs["attention"]
  logits = plain.apply(jnp.asarray(images))[0]
  accuracy = float(np.mean(np.asarray(logits.argmax(-1)) == labels))

  scores, seconds = {}, {}
  for name, method in methods.items():
    start = time.perf_counter()
    maps = explain(clfs, images, labels, {name: method},
                   batch_size=args.batch_size)[name]
    seconds[name] = time.perf_counter() - start
    scores[name], _ = faithfulness_scores(
        plain, images, labels, maps, key=key, sic_aic=False,
        baseline=baseline, steps=config.evaluation.faithfulness_steps)

  rows = []
  for name in methods:
    row = {"method": name, "images": len(clue), "baseline": args.baseline,
           "accuracy_on_images": accuracy,
           **{k: float(np.mean(scores[name][k])) for k in SCORES},
           "seconds": round(seconds[name], 1)}
    if name != "sloc":
      for k in ("npd", "idd"):
        d = scores["sloc"][k] - scores[name][k]
        row[f"sloc_minus_{k}"] = float(d.mean())
        row[f"sloc_minus_{k}_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
    rows.append(row)
    print(json.dumps({"study": "vit_sloc", **row}), flush=True)

  print("\n| method | POS↓ | NEG↑ | DEL↓ | INS↑ | NPD↑ | IDD↑ | "
        "SLOC − method, NPD (± SE) | SLOC − method, IDD (± SE) | s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    diff = ("| | " if r["method"] == "sloc" else
            f"| {r['sloc_minus_npd']:+.1f} ± {r['sloc_minus_npd_se']:.1f} "
            f"| {r['sloc_minus_idd']:+.1f} ± {r['sloc_minus_idd_se']:.1f} ")
    print(f"| {r['method']} | {r['pos']:.1f} | {r['neg']:.1f} | "
          f"{r['del']:.1f} | {r['ins']:.1f} | {r['npd']:.1f} | "
          f"{r['idd']:.1f} {diff}| {r['seconds']} |")


if __name__ == "__main__":
  main()
