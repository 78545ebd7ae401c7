r"""Explanation-aware training cost: a step with the explanation loss over a
plain cross-entropy step, measured side by side in one run.

  python benchmarks/explain_loss.py [--reps 20] [--batch 64]

The default SmallCNN on the binary clue benchmark at 64x64, Grad-CAM at
``block4``, each score formulation with the in-loss Grad-CAM on the
training forward pass (``statistics='batch'``, the default: one forward
pass) and on a second, inference-mode pass (``'running'``); jitted steps,
compile excluded, timed in interleaved rounds, median over ``--reps``
rounds. Prints JSON lines with ms per step and the ratio to the plain step.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402

from benchmarks.common import timed_side_by_side  # noqa: E402
from configs import default  # noqa: E402
from lapjax import explain_loss  # noqa: E402
from lapjax.data import batching, sources  # noqa: E402
from lapjax.models import create_model  # noqa: E402
from lapjax.train.loop import ExplainLoss, make_optimizer, train_step  # noqa: E402,E501
from lapjax.train.state import create_train_state  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args()
  config = default.get_config()
  config.data.binary = True
  source, info = sources.make_source(config.data, "train")
  model = create_model(config.model.name, num_classes=info["num_classes"],
                       **config.model.kwargs)
  tx, _ = make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  b = batching.train_batch(source, args.batch, 0, 0)
  batch = {k: b[k] for k in ("image", "label", "boxes", "boxes_valid")}

  def step(explain):
    return jax.jit(lambda s, x: train_step(s, x, model=model, tx=tx,
                                           explain=explain)), (state, batch)

  calls = {("cross_entropy", None): step(None)}
  for kind in explain_loss.SCORES:
    for stats in explain_loss.STATISTICS:
      calls[kind, stats] = step(ExplainLoss(kind, 0.5, "block4", 0.5,
                                            "mask_values", 0.05, stats))
  print(json.dumps({"devices": [str(d) for d in jax.devices()],
                    "batch": args.batch}))
  times = timed_side_by_side(calls, reps=args.reps)
  plain = times["cross_entropy", None]
  for (kind, stats), t in times.items():
    print(json.dumps({"loss": kind, "statistics": stats,
                      "ms": round(t * 1e3, 1), "ratio": round(t / plain, 2)}),
          flush=True)


if __name__ == "__main__":
  main()
