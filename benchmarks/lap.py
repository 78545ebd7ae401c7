r"""LAP costs, measured side by side in one run (paper 000, Sec. 3.4).

  python benchmarks/lap.py [--reps 20] [--batch 64] [--ablations]
  python benchmarks/lap.py --model resnet18 --batch 16 --reps 5
  python benchmarks/lap.py --model resnet50 --batch 16 --reps 5 --steps-only
  python benchmarks/lap.py --model resnet50 --batch 16 --flops-only

The default SmallCNN (64x64 binary clue images, widths 16-128) against its
LAP-extended versions: the paper's 4-LAP setting (LAP-Pools at ``pool1
pool2 pool3 global_pool``) and its 2-LAP setting (``pool3 global_pool``);
or, with ``--model resnet18``, the paper's own RSNA model: ResNet-18 on
224x224 images with LAP-Pools at ``stem_pool stage3_pool stage4_pool
global_pool`` (4 LAPs, shallow to deep) or ``stage4_pool global_pool`` (2
LAPs, the paper's ImageNet placement); ``--model resnet50``: the same
places on ResNet-50 (the paper's speed claim, Sec. 3.4: 1.46x). The
strided-stage places are the paper's replacement of a strided
convolution (App. C.1): the stage's first strided 3x3 convolution at
stride 1, then a 3x3/2 LAP-Pool. Every LAP model trains with every
LAP loss (weak supervision with reference maps,
discriminative modules, concordance). Reports ms per training step and the
ratio to the vanilla step; then, for one batch, the LAP maps (aggregated,
at input resolution) against a plain forward pass of the same model and
Grad-CAM at ``block4``. ``--ablations``: the step of one LAP setting
(``--setting``) with one LAP option changed at a time instead. Jitted,
compile excluded; the calls are timed in interleaved rounds and each
reported as its median over ``--reps`` rounds. Each step's XLA
``cost_analysis`` (FLOPs, bytes accessed) is printed beside its time;
``--flops-only`` prints that of the lowered steps and compiles nothing.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.common import timed_side_by_side  # noqa: E402
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
SETTINGS = {"small_cnn": {"vanilla": None,
                         "4 LAPs": ("pool1", "pool2", "pool3",
                                    "global_pool"),
                         "2 LAPs": ("pool3", "global_pool")},
            "resnet18": {"vanilla": None,
                         "4 LAPs": ("stem_pool", "stage3_pool",
                                    "stage4_pool", "global_pool"),
                         "2 LAPs": ("stage4_pool", "global_pool")}}
SETTINGS["resnet50"] = SETTINGS["resnet18"]
CAM_LAYER = {"small_cnn": "block4", "resnet18": "stage4",
             "resnet50": "stage4"}


def build_step(model_name, places, changes, batch_size):
  """A jitted training step, its arguments, the model and one batch (LAP
  settings ``changes`` applied; ``places`` None: the vanilla model)."""
  c = lap_configs.get_config("vanilla" if places is None else "lap_wsl")
  if model_name in ("resnet18", "resnet50"):
    c.model.name = model_name
    c.model.kwargs = {}
    c.data.image_size = (224, 224)
    c.data.num_train = batch_size          # one batch is all it needs
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
  return step, (state, batch), model


def compiled_cost(step, step_args, *, compile_step: bool = True) -> tuple:
  """``(compiled step, flops, bytes accessed)``: the step compiled once,
  for timing and for XLA's own count of its floating-point operations
  (a multiply-add is 2) and memory traffic. ``compile_step=False``: the
  count of the lowered, unoptimised program (no compilation, no step:
  None)."""
  lowered = step.lower(*step_args)
  compiled = lowered.compile() if compile_step else None
  cost = (compiled if compile_step else lowered).cost_analysis()
  if isinstance(cost, (list, tuple)):      # one dict per device program
    cost = cost[0]
  return compiled, cost["flops"], cost.get("bytes accessed", float("nan"))


def map_calls(name, places, cam_layer, model, state, batch):
  """Forward pass, LAP maps and Grad-CAM of one batch, jitted."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  layers = lap.LAPSpec(places, 1).map_layers()
  clf = from_flax(model, variables, layers=(cam_layer, *layers))
  x, t = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  return {
      (name, "forward"): (jax.jit(lambda x: clf.apply(x)[0]), (x,)),
      (name, "lap_maps"): (jax.jit(lambda x, t: attr.lap_maps(
          clf, x, t, layers=layers, dcs=lap.binary())), (x, t)),
      (name, "grad_cam"): (jax.jit(lambda x, t: attr.grad_cam(
          clf, x, t, layer=cam_layer)), (x, t))}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--model", default="small_cnn", choices=SETTINGS)
  parser.add_argument("--ablations", action="store_true")
  parser.add_argument("--setting", default="4 LAPs",
                      choices=("4 LAPs", "2 LAPs"),
                      help="the LAP setting --ablations changes")
  parser.add_argument("--only", nargs="+", default=None,
                      help="LAP settings (with --ablations: ablations) to "
                      "time beside vanilla (default: all)")
  parser.add_argument("--steps-only", action="store_true",
                      help="time the training steps, not the maps")
  parser.add_argument("--flops-only", action="store_true",
                      help="print the XLA FLOP counts of the lowered, "
                      "unoptimised steps; compile and time nothing")
  args = parser.parse_args()
  settings = {k: v for k, v in SETTINGS[args.model].items()
              if v is None or args.only is None or args.ablations
              or k in args.only}
  steps = {"vanilla": build_step(args.model, None, {}, args.batch)}
  if args.ablations:
    for name, changes in ABLATIONS.items():
      if args.only is not None and name not in args.only:
        continue
      steps[name] = build_step(args.model, settings[args.setting], changes,
                               args.batch)
  else:
    for name, places in settings.items():
      if places is not None:
        steps[name] = build_step(args.model, places, {}, args.batch)
  compiled = {name: compiled_cost(step, step_args,
                                 compile_step=not args.flops_only)
              for name, (step, step_args, _) in steps.items()}
  for name, (_, flops, bytes_accessed) in compiled.items():
    print(json.dumps({"what": "train step cost (XLA cost_analysis, "
                      + ("unoptimised" if args.flops_only else "compiled")
                      + ")",
                      "model": args.model, "setting": name,
                      "gflop": flops / 1e9, "gbytes": bytes_accessed / 1e9,
                      "flop_ratio_to_vanilla":
                      flops / compiled["vanilla"][1]}), flush=True)
  if args.flops_only:
    return
  times = timed_side_by_side(
      {k: (compiled[k][0], v[1]) for k, v in steps.items()}, reps=args.reps)
  for name, t in times.items():
    print(json.dumps({"what": "train step", "model": args.model,
                      "batch": args.batch, "setting": name,
                      "lap_places": args.setting
                      if args.ablations else settings[name], "ms": 1e3 * t,
                      "ratio_to_vanilla": t / times["vanilla"]}), flush=True)
  if args.ablations or args.steps_only:
    return
  calls = {}
  for name, places in settings.items():
    if places is not None:
      calls.update(map_calls(name, places, CAM_LAYER[args.model],
                             steps[name][2], *steps[name][1]))
  times = timed_side_by_side(calls, reps=args.reps)
  for name, places in settings.items():
    if places is None:
      continue
    tf, tm, tc = (times[name, k] for k in ("forward", "lap_maps",
                                           "grad_cam"))
    print(json.dumps({"what": "maps", "model": args.model, "setting": name,
                      "batch": args.batch,
                      "forward_ms": 1e3 * tf, "lap_maps_ms": 1e3 * tm,
                      "grad_cam_ms": 1e3 * tc,
                      "lap_maps_over_forward": tm / tf,
                      "grad_cam_over_lap_maps": tc / tm}), flush=True)


if __name__ == "__main__":
  main()
