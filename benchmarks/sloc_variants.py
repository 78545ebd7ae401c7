r"""SLOC settings against Grad-CAM on the clue benchmark (paper 004's claim).

  python benchmarks/sloc_variants.py --workdir runs/default --images 32 \
      '{}' '{"num_masks": 2000}' '{"patch_sizes": [12, 21]}' \
      '{"sloc_m": true, "patch_sizes": [12, 21]}'

Each positional argument is a JSON dict of ``attr.sloc`` options (``"sloc_m":
true`` runs ``attr.sloc_m`` instead). On the first ``--images`` clue test
images of the run in ``--workdir`` (``make demo`` trains it), explaining the
true class, prints one JSON line per setting, Grad-CAM at the config's layer
first: POS / NEG, DEL / INS, NPD, IDD (``explanations.faithfulness_scores``,
the protocol of ``evaluate.py --config configs/sloc.py``, without SIC / AIC)
and the seconds the maps took.
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/default")
  parser.add_argument("--images", type=int, default=32)
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
  runs = {"grad_cam": lambda: attr.grad_cam(clf, x, t, layer=layer)}
  for spec in args.settings:
    options = json.loads(spec)
    method = attr.sloc_m if options.pop("sloc_m", False) else attr.sloc
    runs[spec] = (lambda o=options, m=method: m(clf, x, t, key=key, **o))
  for name, run in runs.items():
    start = time.perf_counter()
    maps = jax.block_until_ready(run())
    seconds = time.perf_counter() - start
    scores, _ = faithfulness_scores(
        clf, x, t, maps, key=key, sic_aic=False,
        steps=config.evaluation.faithfulness_steps)
    print(json.dumps({"setting": name, "images": len(clue),
                      **{k: round(float(np.mean(v)), 1)
                         for k, v in scores.items()},
                      "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
  main()
