r"""SLOC against the comparators of paper 004 on the clue benchmark.

  python studies/sloc_comparators.py --workdir runs/clue_default \
      --images 16 --baseline blur --out /tmp/blur_a.npz
  python studies/sloc_comparators.py --table /tmp/blur_a.npz /tmp/blur_b.npz

Paper 004's Tables 1-3 compare SLOC with Ablation-CAM, FullGrad, DIX, LTX,
RISE, Meaningful Perturbation, Extremal Perturbations and Guided IG. On the
first ``--images`` clue test images of the run in ``--workdir``, explaining
the true class, this runs every method of ``--methods`` as ``evaluate.py``
does (``lapjax.evaluation.methods``: ``standard_methods`` and
``comparator_methods``, the same settings, the perturbation methods'
``baseline`` the protocol's) and scores it with
``explanations.faithfulness_scores`` (POS / NEG, DEL / INS, NPD, IDD; the
protocol of ``configs/sloc.py``, without SIC / AIC). It prints one JSON line
per method (mean scores, the seconds the maps took, compile included) and,
with ``--out``, keeps the per-image scores in an ``.npz`` (``<method>/
<metric>``, one value an image), rewritten after every method. ``--baseline
blur`` perturbs towards the blurred image in the methods and the metrics
(``configs/sloc.py:blur``), ``zero`` towards black (the paper's protocol).
``sloc_xp`` calibrates its ``p`` on ``--calibration-images`` validation
images first, as ``evaluate.py``.

``--first`` skips that many clue images, so a long study can run in
chunks of images (``--first 0 --images 16``, ``--first 16 --images 16``,
...) and stop after any chunk. ``--table`` merges such files into a
markdown table: methods may be split over files (the same images) and
images over chunks (each method's scores concatenated over the files that
hold it, in image order; every method must end up with the same images).
It gives mean scores and the per-image paired differences of IDD and NPD
to ``--reference`` (default ``sloc``): mean +- standard error of
``IDD(method) - IDD(sloc)`` over the images; "seconds" adds the chunks'.

LTX is not in lapjax (docs/comparators.md says why).
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

from lapjax import attribution as attr  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402
from lapjax.evaluation.explanations import faithfulness_scores  # noqa: E402
from lapjax.evaluation.methods import (
  comparator_methods,  # noqa: E402
  method_classifiers,  # noqa: E402
  standard_methods,  # noqa: E402
)
from lapjax.train.config import BASELINES  # noqa: E402

# Paper 004's comparators that lapjax has, then SLOC's versions.
DEFAULT_METHODS = ("grad_cam", "ablation_cam", "fullgrad", "dix",
                   "guided_ig", "rise", "meaningful_perturbation",
                   "extremal_perturbation", "sloc", "sloc_xp", "sloc_m")
METRICS = ("pos", "neg", "del", "ins", "npd", "idd")


def paired_difference(scores: np.ndarray, reference: np.ndarray) -> str:
  """``'mean +- standard error'`` of the per-image ``scores - reference``."""
  d = np.asarray(scores, np.float64) - np.asarray(reference, np.float64)
  se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
  return f"{d.mean():+.1f} +- {se:.1f}"


def merge_scores(paths: list[str]) -> tuple[np.ndarray,
                                             dict[str, dict[str, np.ndarray]]]:
  """The clue indices and per-image scores ``{method: {metric: [N]}}`` of
  the ``--out`` files in ``paths``, chunks of images concatenated in image
  order and ``seconds`` summed over them."""
  parts: dict[str, dict[str, list]] = {}
  for path in paths:
    with np.load(path) as f:
      indices = f["clue_indices"]
      for key in f.files:
        if "/" not in key:
          continue
        method, metric = key.split("/")
        part = parts.setdefault(method, {})
        if metric == "seconds":
          part.setdefault("seconds", []).append(float(f[key]))
          continue
        if metric == METRICS[0]:
          part.setdefault("indices", []).append(indices)
        part.setdefault(metric, []).append(f[key])
  scores: dict[str, dict[str, np.ndarray]] = {}
  images = None
  for method, part in parts.items():
    indices = np.concatenate(part["indices"])
    if len(np.unique(indices)) != len(indices):
      raise ValueError(f"{method!r} scores an image twice in {paths}")
    order = np.argsort(indices)
    if images is None:
      images = indices[order]
    elif not np.array_equal(images, indices[order]):
      raise ValueError(f"{method!r} scores other images than the first "
                       f"method in {paths}")
    scores[method] = {k: np.concatenate(part[k])[order] for k in METRICS}
    scores[method]["seconds"] = np.asarray(sum(part["seconds"]))
  return images, scores


def markdown_table(paths: list[str], reference: str) -> str:
  """Markdown table of the per-image scores in ``paths`` (``--out`` files
  of one protocol), paired differences to ``reference``."""
  images, scores = merge_scores(paths)
  if reference not in scores:
    raise ValueError(f"--reference {reference!r} is in none of {paths}; "
                     f"found {sorted(scores)}")
  ref = scores[reference]
  head = ("| method | POS↓ | NEG↑ | DEL↓ | INS↑ | NPD↑ | IDD↑ | "
          f"IDD - {reference} | NPD - {reference} | seconds |")
  lines = [head, "|" + "---|" * 10]
  for method, s in scores.items():
    cells = [f"{float(np.mean(s[k])):.1f}" for k in METRICS]
    cells += [paired_difference(s[k], ref[k]).replace("+-", "±")
              for k in ("idd", "npd")]
    cells.append(f"{float(s['seconds']):.0f}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return f"{len(images)} images\n\n" + "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/clue_default")
  parser.add_argument("--images", type=int, default=32)
  parser.add_argument("--first", type=int, default=0,
                      help="skip this many clue images (chunked runs)")
  parser.add_argument("--baseline", choices=tuple(BASELINES), default="blur")
  parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                      help="comma-separated names of evaluation/methods.py")
  parser.add_argument("--reference", default="sloc")
  parser.add_argument("--calibration-images", type=int, default=64)
  parser.add_argument("--out", default=None, help="per-image scores (.npz)")
  parser.add_argument("--table", nargs="+", default=None,
                      help="merge these .npz files into a table, run nothing")
  args = parser.parse_args()
  if args.table:
    print(markdown_table(args.table, args.reference))
    return
  names = [n for n in args.methods.split(",") if n]

  config, model, variables = load_run(args.workdir)
  e = config.evaluation
  source, _ = sources.make_source(config.data, "test")
  if args.images < 1 or args.first < 0:
    raise ValueError(f"--images must be >= 1 and --first >= 0; got "
                     f"{args.images} and {args.first}")
  wanted = args.first + args.images
  batch = source.get(np.arange(min(8 * wanted, source.num_examples)))
  clue = np.flatnonzero(batch["label"] > 0)[args.first:wanted]
  x = jnp.asarray(batch["image"][clue])
  t = jnp.asarray(batch["label"][clue], jnp.int32)
  key = jax.random.key(e.seed)
  baseline = BASELINES[args.baseline]
  image_size = int(x.shape[1])
  # The classifier of the metrics (and of the 'plain' methods).
  plain = from_flax(model, variables, layers=[e.layer])
  sloc_p = None
  if "sloc_xp" in names:
    val, _ = sources.make_source(config.data, "validation")
    v = val.get(np.arange(min(args.calibration_images, val.num_examples)))
    sloc_p = attr.calibrate_p(plain, v["image"], v["label"],
                              key=jax.random.fold_in(key, 7),
                              baseline=baseline)
  available = {
      **standard_methods(e.layer, key=key, image_size=image_size,
                         ig_steps=e.ig_steps, rise_masks=e.rise_masks,
                         sloc_masks=e.sloc_masks, sloc_steps=e.sloc_steps,
                         sloc_p=sloc_p, baseline=baseline),
      **comparator_methods(e.layer, key=key, image_size=image_size,
                           ig_steps=e.ig_steps, baseline=baseline)}
  unknown = sorted(set(names) - set(available))
  if unknown:
    raise ValueError(f"unknown --methods {unknown}; known: "
                     f"{sorted(available)}")
  methods = {n: available[n] for n in names}
  classifiers = method_classifiers(methods, model, variables,
                                   layers=[e.layer], input_shape=x.shape[1:])
  saved: dict[str, np.ndarray] = {"clue_indices": clue}
  for name, method in methods.items():
    clf = classifiers[method.classifier]
    start = time.perf_counter()
    maps = jax.block_until_ready(method.fn(clf, x, t, **method.kwargs))
    seconds = time.perf_counter() - start
    scores, _ = faithfulness_scores(
        plain, x, t, maps, key=key, sic_aic=False,
        baseline=baseline, steps=e.faithfulness_steps)
    saved.update({f"{name}/{k}": np.asarray(v) for k, v in scores.items()})
    saved[f"{name}/seconds"] = np.asarray(seconds)
    if args.out:
      np.savez(args.out, **saved)
    print(json.dumps({"method": name, "images": len(clue),
                      "baseline": args.baseline,
                      **{k: round(float(np.mean(v)), 1)
                         for k, v in scores.items()},
                      "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
  main()
