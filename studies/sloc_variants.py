r"""SLOC settings against Grad-CAM on the clue benchmark (paper 004's claim).

  python studies/sloc_variants.py --workdir runs/default --images 32 \
      '{}' '{"num_masks": 2000}' '{"patch_sizes": [12, 21]}' \
      '{"sloc_m": true, "patch_sizes": [12, 21]}'

Each positional argument is a JSON dict of ``attr.sloc`` options (``"sloc_m":
true`` runs ``attr.sloc_m`` instead). On the first ``--images`` clue test
images of the run in ``--workdir`` (``make demo`` trains it), explaining the
true class, prints one JSON line per setting, Grad-CAM at the config's layer
first: POS / NEG, DEL / INS, NPD, IDD (``explanations.faithfulness_scores``,
the protocol of ``evaluate.py --config configs/sloc.py``, without SIC / AIC),
each setting's per-image NPD and IDD differences to Grad-CAM (mean and
standard error: ``idd_vs_grad_cam``, ``npd_vs_grad_cam``), the fraction of
images the model calls a clue class once the map's top 30 % of pixels are
deleted (``clue_after_deleting_30``: the clue is gone by then, so a clue
class is read into the deletion pattern) and the seconds the maps took.
``--baseline blur`` perturbs towards the blurred image, both in SLOC's
masked inputs (unless a setting names its own ``baseline``) and in the
metrics (``configs/sloc.py:blur``).
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
from lapjax import from_flax, metrics  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402
from lapjax.evaluation.explanations import faithfulness_scores  # noqa: E402
from lapjax.train.config import BASELINES  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/default")
  parser.add_argument("--images", type=int, default=32)
  parser.add_argument("--baseline", choices=tuple(BASELINES), default="zero")
  parser.add_argument("settings", nargs="*", default=["{}"])
  args = parser.parse_args()
  config, model, variables = load_run(args.workdir)
  layer = config.evaluation.layer
  clf = from_flax(model, variables, layers=[layer])
  source, _ = sources.make_source(config.data, "test")
  batch = source.get(np.arange(min(8 * args.images, source.num_examples)))
  clue = np.flatnonzero(batch["label"] > 0)[:args.images]
  x = jnp.asarray(batch["image"][clue])
  t = jnp.asarray(batch["label"][clue], jnp.int32)
  key = jax.random.key(config.evaluation.seed)
  baseline = BASELINES[args.baseline]
  runs = {"grad_cam": lambda: attr.grad_cam(clf, x, t, layer=layer)}
  for spec in args.settings:
    options = {"baseline": baseline, **json.loads(spec)}
    method = attr.sloc_m if options.pop("sloc_m", False) else attr.sloc
    runs[spec] = (lambda o=options, m=method: m(clf, x, t, key=key, **o))
  reference = None
  for name, run in runs.items():
    start = time.perf_counter()
    maps = jax.block_until_ready(run())
    seconds = time.perf_counter() - start
    scores, _ = faithfulness_scores(
        clf, x, t, maps, key=key, sic_aic=False, baseline=baseline,
        steps=config.evaluation.faithfulness_steps)
    reference = scores if reference is None else reference
    # Not predicted as background (class 0) once the top 30 % are deleted.
    background = metrics.faithfulness.perturbation_curve(
        clf, x, maps, jnp.zeros_like(t), fractions=[0.3], baseline=baseline,
        score="accuracy")
    fake = 1 - float(np.mean(background))
    paired = {}
    for k in ("idd", "npd"):
      d = scores[k] - reference[k]
      se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
      paired[f"{k}_vs_grad_cam"] = f"{d.mean():+.1f} +- {se:.1f}"
    print(json.dumps({"setting": name, "images": len(clue),
                      "baseline": args.baseline,
                      **{k: round(float(np.mean(v)), 1)
                         for k, v in scores.items()}, **paired,
                      "clue_after_deleting_30": round(fake, 2),
                      "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
  main()
