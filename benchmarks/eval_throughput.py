r"""Throughput of the streaming evaluator: Grad-CAM with every localisation
metric against Grad-CAM alone, and each metric's own cost.

  python benchmarks/eval_throughput.py [--batch 32] [--reps 5]

The default model (``configs/default.py``: 64 x 64 clue images, CAMs at
``block4``; its weights do not change the cost, so they are initialised,
not trained) on one batch of clue test images, on every device. Jitted,
compile excluded, median of ``--reps`` interleaved rounds
(``common.timed_side_by_side``), so the three rates below share the
machine's slow and quiet spells. Prints JSON lines: images/s of
``grad_cam`` (maps only), of ``grad_cam_and_metrics`` (the evaluator's
per-batch function: maps, validity codes and the sums and counts of all
nine localisation metrics, the four sort-based ones from one sort per map,
``metrics.localization.ranking_metrics``) and of
``grad_cam_and_metrics_separate_sorts`` (the same with each sort-based
metric's own function, as before the shared sort), their ratios to
Grad-CAM alone; then the seconds per batch of each metric alone on
precomputed maps, of ``ranking_metrics`` (the four together), and of
the two sorts: a stable argsort of the float maps (what each sort-based
metric pays) and a sort of one int32 operand (what ``ranking_metrics``
pays once).
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
from lapjax import from_flax, metrics  # noqa: E402
from lapjax.attribution.checks import jit_checked  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation import explanations, streaming  # noqa: E402
from lapjax.metrics import localization  # noqa: E402
from lapjax.metrics.localization import ranking_metrics  # noqa: E402
from lapjax.train import sharding  # noqa: E402
from lapjax.train.loop import build_model  # noqa: E402
from lapjax.train.state import create_train_state  # noqa: E402


def separate_sorts_values(maps, masks):
  """``explanations.localization_values`` with each sort-based metric's
  own function (one sort each, as before ``ranking_metrics``)."""
  out = explanations.localization_values(maps, masks)
  k = max(1, int(0.05 * maps.shape[1] * maps.shape[2]))
  out.update({
      "relevance_rank": metrics.relevance_rank_accuracy(maps, masks),
      "top_k_intersection": metrics.top_k_intersection(maps, masks, k=k),
      "roc_auc": metrics.roc_auc(maps, masks),
      "sparseness": metrics.sparseness(maps)})
  return out


def separate_sorts_statistics(fn, mesh):
  """``streaming.checked_map_statistics`` with ``separate_sorts_values``
  (the unused shared sort is removed by XLA as dead code)."""
  def per_batch(images, labels, masks, valid):
    maps = fn(images, labels)
    codes = streaming.validity(maps, masks)
    stats = {name: streaming.value_statistics(
        v, valid, None if name in streaming.MAP_ONLY_METRICS else codes)
             for name, v in separate_sorts_values(maps, masks).items()}
    stats["nonfinite"] = (valid & ~jnp.isfinite(maps).all((1, 2))).sum()
    return maps, streaming.replicate(stats, mesh)
  return jit_checked(per_batch)


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
  separate = separate_sorts_statistics(cam, mesh)
  args4 = (x["image"], x["label"], x["mask"], x["valid"])
  times = timed_side_by_side({
      "grad_cam": (maps_only, (x["image"], x["label"])),
      "grad_cam_and_metrics": (lambda *a: with_metrics(*a)[1], args4),
      "grad_cam_and_metrics_separate_sorts": (lambda *a: separate(*a)[1],
                                              args4)}, reps=args.reps)
  rates = {k: args.batch / v for k, v in times.items()}
  print(json.dumps({"batch": args.batch, "devices": mesh.size,
                    **{f"{k}_images_per_s": round(v, 1)
                       for k, v in rates.items()},
                    "ratio": round(rates["grad_cam_and_metrics"]
                                   / rates["grad_cam"], 3),
                    "ratio_separate_sorts": round(
                        rates["grad_cam_and_metrics_separate_sorts"]
                        / rates["grad_cam"], 3)}), flush=True)
  maps = maps_only(x["image"], x["label"])
  masks = jnp.asarray(batch["mask"])
  per_metric = {}
  for name in streaming.LOCALIZATION_METRICS:
    f = jax.jit(lambda m, k, name=name:
                separate_sorts_values(m, k)[name])
    per_metric[name] = (f, (maps, masks))
  k = max(1, int(0.05 * maps.shape[1] * maps.shape[2]))
  per_metric["ranking_metrics (the 4 sort-based, one sort)"] = (
      jax.jit(lambda m, t: ranking_metrics(m, t, k=k)), (maps, masks))
  per_metric["validity_codes"] = (jax.jit(streaming.validity),
                                  (maps, masks))
  flat = maps.reshape(maps.shape[0], -1)
  per_metric["sort: stable argsort of the floats"] = (
      jax.jit(lambda m: jnp.argsort(-m, axis=-1, stable=True)), (flat,))
  per_metric["sort: one int32 operand (ranking_metrics's)"] = (
      jax.jit(lambda m: jax.lax.sort(localization._sort_keys(m),
                                     dimension=1, is_stable=False)),
      (flat,))
  seconds = timed_side_by_side(per_metric, reps=args.reps)
  print(json.dumps({"seconds_per_batch": {
      k: round(v, 5) for k, v in sorted(seconds.items(),
                                        key=lambda kv: -kv[1])},
      "grad_cam_seconds_per_batch": round(times["grad_cam"], 5)}))


if __name__ == "__main__":
  main()
