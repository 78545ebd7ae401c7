r"""Throughput of the streaming evaluator: Grad-CAM with every localisation
metric against Grad-CAM alone, and each metric's own cost.

  python benchmarks/eval_throughput.py [--batch 32] [--reps 5]

The default model (``configs/default.py``: 64 x 64 clue images, CAMs at
``block4``; its weights do not change the cost, so they are initialised,
not trained) on one batch of clue test images, on every device. Jitted,
compile excluded, median of ``--reps`` interleaved rounds
(``common.timed_side_by_side``). Prints JSON lines: images/s of
``grad_cam`` (maps only), of ``grad_cam_and_metrics`` (the evaluator's
per-batch function: maps, validity codes and the sums and counts of all
nine localisation metrics) and their ratio; then the seconds per batch of
each metric alone on precomputed maps.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import timed_side_by_side  # noqa: E402
from configs import default  # noqa: E402
from lapjax import attribution as attr  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation import explanations, streaming  # noqa: E402
from lapjax.train import sharding  # noqa: E402
from lapjax.train.loop import build_model  # noqa: E402
from lapjax.train.state import create_train_state  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  config = default.get_config()
  config.data.num_test = args.batch
  source, info = sources.make_source(config.data, "test")
  model = build_model(config, info)
  state = create_train_state(model, optax.sgd(0.1), jax.random.key(0),
                             info["image_shape"])
  mesh = sharding.make_mesh()
  variables = jax.device_put({"params": state.params,
                              "batch_stats": state.batch_stats},
                             sharding.replicated(mesh))
  layer = config.evaluation.layer
  clf = from_flax(model, variables, layers=[layer])
  batch = source.get(np.arange(args.batch))
  x = streaming.mesh_inputs(mesh, image=batch["image"],
                            label=batch["label"].astype(np.int32),
                            mask=batch["mask"],
                            valid=np.ones(args.batch, bool))

  def cam(images, labels):
    return attr.grad_cam(clf, images, labels, layer=layer)

  maps_only = jax.jit(cam)
  with_metrics = streaming.checked_map_statistics(cam, mesh)
  times = timed_side_by_side({
      "grad_cam": (maps_only, (x["image"], x["label"])),
      "grad_cam_and_metrics": (lambda *a: with_metrics(*a)[1],
                               (x["image"], x["label"], x["mask"],
                                x["valid"]))}, reps=args.reps)
  rates = {k: args.batch / v for k, v in times.items()}
  print(json.dumps({"batch": args.batch, "devices": mesh.size,
                    **{f"{k}_images_per_s": round(v, 1)
                       for k, v in rates.items()},
                    "ratio": round(rates["grad_cam_and_metrics"]
                                   / rates["grad_cam"], 3)}), flush=True)
  maps = maps_only(x["image"], x["label"])
  masks = jnp.asarray(batch["mask"])
  per_metric = {}
  for name in streaming.LOCALIZATION_METRICS:
    f = jax.jit(lambda m, k, name=name:
                explanations.localization_values(m, k)[name])
    per_metric[name] = (f, (maps, masks))
  per_metric["validity_codes"] = (jax.jit(streaming.validity),
                                  (maps, masks))
  seconds = timed_side_by_side(per_metric, reps=args.reps)
  print(json.dumps({"seconds_per_batch": {
      k: round(v, 5) for k, v in sorted(seconds.items(),
                                        key=lambda kv: -kv[1])},
      "grad_cam_seconds_per_batch": round(times["grad_cam"], 5)}))


if __name__ == "__main__":
  main()
