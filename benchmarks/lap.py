r"""LAP costs, measured side by side in one run (paper 000, Sec. 3.4).

  python benchmarks/lap.py [--reps 20] [--batch 64] [--ablations]

The default SmallCNN (64x64 binary clue images, widths 16-128) against its
LAP-extended versions: the paper's 4-LAP setting (LAP-Pools at ``pool1
pool2 pool3 global_pool``) and its 2-LAP setting (``pool3 global_pool``),
both with every LAP loss (weak supervision with reference maps,
discriminative modules, concordance). Reports ms per training step and the
ratio to the vanilla step; then, for one batch, the LAP maps (aggregated,
at input resolution) against a plain forward pass of the same model and
Grad-CAM at ``block4``. ``--ablations``: the 4-LAP step with one LAP
setting changed at a time instead. Jitted, compile excluded, median over
``--reps``.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.common import timed  # noqa: E402
from configs import lap as lap_configs  # noqa: E402
from lapjax import attribution as attr  # noqa: E402
from lapjax import from_flax, lap  # noqa: E402
from lapjax.data import batching, sources  # noqa: E402
from lapjax.train import loop  # noqa: E402
from lapjax.train.state import create_train_state  # noqa: E402

ABLATIONS = {"as configured": {}, "heads of width 16": {"head_widths": (16,)},
             "linear heads": {"head_widths": ()},
             "no discriminative modules": {"discriminative": False},
             "MaxAR off": {"gamma_max": None},
             "concordance off": {"concordance_weight": 0.0},
             "LAP losses weighted 0": {"weight": 0.0,
                                       "concordance_weight": 0.0,
                                       "discriminative": False}}
SETTINGS = {"vanilla": None,
            "4 LAPs": ("pool1", "pool2", "pool3", "global_pool"),
            "2 LAPs": ("pool3", "global_pool")}


def step_time(places, changes, batch_size, reps):
  """Median seconds of one jitted training step (LAP settings changed)."""
  c = lap_configs.get_config("vanilla" if places is None else "lap_wsl")
  if places is not None:
    c.lap.places = places
  for k, v in changes.items():
    c.lap[k] = v
  source, info = sources.make_source(c.data, "train")
  model = loop.build_model(c, info)
  tx, _ = loop.make_optimizer(c)
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  b = batching.train_batch(source, batch_size, 0, 0)
  batch = {k: b[k] for k in ("image", "label")}
  terms = loop.LAPTraining.from_config(c, info)
  step = jax.jit(lambda s, x: loop.train_step(s, x, model=model, tx=tx,
                                              lap_terms=terms))
  return timed(step, state, batch, reps=reps), model, state, batch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--ablations", action="store_true")
  args = parser.parse_args()
  if args.ablations:
    for name, changes in ABLATIONS.items():
      t = step_time(SETTINGS["4 LAPs"], changes, args.batch, args.reps)[0]
      print(json.dumps({"what": "train step, 4 LAPs", "change": name,
                        "ms": 1e3 * t}), flush=True)
    return
  rows = {}
  for name, places in SETTINGS.items():
    rows[name], model, state, batch = step_time(places, {}, args.batch,
                                                args.reps)
    row = {"what": "train step", "setting": name,
           "ms": 1e3 * rows[name], "ratio_to_vanilla":
           rows[name] / rows["vanilla"]}
    print(json.dumps(row), flush=True)
    if places is None:
      continue
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    layers = lap.LAPSpec(places, 1).map_layers()
    clf = from_flax(model, variables, layers=("block4", *layers))
    x, t = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    forward = jax.jit(lambda x, clf=clf: clf.apply(x)[0])
    maps = jax.jit(lambda x, t, clf=clf, layers=layers: attr.lap_maps(
        clf, x, t, layers=layers, dcs=lap.binary()))
    cam = jax.jit(lambda x, t, clf=clf: attr.grad_cam(clf, x, t,
                                                      layer="block4"))
    tf = timed(forward, x, reps=args.reps)
    tm = timed(maps, x, t, reps=args.reps)
    tc = timed(cam, x, t, reps=args.reps)
    print(json.dumps({"what": "maps", "setting": name, "batch": args.batch,
                      "forward_ms": 1e3 * tf, "lap_maps_ms": 1e3 * tm,
                      "grad_cam_ms": 1e3 * tc,
                      "lap_maps_over_forward": tm / tf,
                      "grad_cam_over_lap_maps": tc / tm}), flush=True)


if __name__ == "__main__":
  main()
