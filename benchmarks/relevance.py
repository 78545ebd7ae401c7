r"""LRP and DeepLIFT speed against one plain gradient call, side by side.

  python benchmarks/relevance.py [--batch 8] [--reps 5]
  python benchmarks/relevance.py --model resnet50 --size 224 --batch 8

The default SmallCNN (random weights; speed does not depend on them) at
64x64, or a zoo model by name (``--model resnet50``) at ``--size``. Every
entry is jitted (compile excluded) and timed in interleaved rounds, median
of ``--reps``. Prints one JSON line per model: seconds per call of
``forward`` (the logits), ``gradient``, ``lrp`` under each composite,
``deeplift`` (one random baseline image) and ``deeplift_shap``
(``--shap`` of them); each one's ratio to the gradient, and to its floor.

Floors (the passes a method must run, in passes of the model):

* ``forward + gradient`` for the z⁺, αβ and γ composites on ReLU networks
  (``epsilon_plus_flat``, ``epsilon_plus``, ``epsilon_alpha2_beta1``,
  ``epsilon_gamma_box``): besides the model's forward pass (the
  activations) every convolution's rule needs the layer's map with
  *modified* weights (``x W^+`` for z⁺; ``x W^+`` and ``x W^-`` for αβ;
  ``x (W + γW^+)`` and ``x (W + γW^-)`` for γ), one more forward-sized
  pass, before its transposed pass. z⁺ needs exactly ``forward +
  gradient``; αβ with ``beta > 0`` and γ need two modified forward passes
  and two transposed passes per layer, so ``forward + gradient`` is a
  lower bound for them, not their floor. The gradient needs neither.
* ``forward + gradient`` for DeepLIFT (the baseline's forward and a
  gradient-sized modified backward pass).

``--profile-dir DIR`` also writes a ``jax.profiler`` trace of a few calls
of the gradient and of ``lrp`` (``epsilon_plus_flat``) to ``DIR``.
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
from lapjax.attribution import gradient  # noqa: E402
from lapjax.attribution import relevance as rel  # noqa: E402
from lapjax.attribution.deeplift import deeplift, deeplift_shap  # noqa: E402
from lapjax.models import SmallCNN, create_model  # noqa: E402

COMPOSITES = ("epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1",
              "epsilon_gamma_box")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--shap", type=int, default=4,
                      help="baselines of deeplift_shap (0: skip it)")
  parser.add_argument("--composites", default=",".join(COMPOSITES),
                      help="comma-separated LRP composites to time")
  parser.add_argument("--deeplift", action=argparse.BooleanOptionalAction,
                      default=True, help="time deeplift (and its SHAP)")
  parser.add_argument("--profile-dir", default=None,
                      help="also write a jax.profiler trace here")
  args = parser.parse_args()
  if args.model == "small_cnn":
    model = SmallCNN(args.classes)
  else:
    model = create_model(args.model, num_classes=args.classes)
  x = jax.random.uniform(jax.random.key(0), (args.batch, args.size,
                                             args.size, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  classifier = rel.relevance_classifier(model, variables)
  targets = jnp.arange(args.batch) % args.classes
  calls = {"forward": (jax.jit(lambda x: classifier.apply(x)[0]), (x,)),
           "gradient": (jax.jit(lambda x, t: gradient(classifier, x, t)),
                        (x, targets))}
  for name in filter(None, args.composites.split(",")):
    calls[name] = (jax.jit(lambda x, t, name=name: rel.lrp(
        classifier, x, t, composite=name)), (x, targets))
  # Baselines are arguments: a constant one (baseline=0) would let XLA
  # constant-fold the reference forward pass (the weights are constants).
  baselines = jax.random.uniform(jax.random.key(2),
                                 (max(args.shap, 1), *x.shape[1:]))
  if args.deeplift:
    calls["deeplift"] = (jax.jit(lambda x, t, b: deeplift(
        classifier, x, t, baseline=b)), (x, targets, baselines[:1]))
  if args.deeplift and args.shap:
    calls[f"deeplift_shap_{args.shap}"] = (jax.jit(
        lambda x, t, b: deeplift_shap(classifier, x, t, baselines=b)),
        (x, targets, baselines))
  seconds = timed_side_by_side(calls, reps=args.reps)
  floor = seconds["forward"] + seconds["gradient"]
  print(json.dumps({
      "bench": "relevance_vs_gradient", "model": args.model, "size": args.size,
      "batch": args.batch, "backend": jax.default_backend(),
      "reps": args.reps,
      "seconds": {k: round(v, 5) for k, v in seconds.items()},
      "ratio_to_gradient": {k: round(v / seconds["gradient"], 2)
                            for k, v in seconds.items()
                            if k not in ("forward", "gradient")},
      "ratio_to_forward_plus_gradient": {
          k: round(v / floor, 2) for k, v in seconds.items()
          if k not in ("forward", "gradient")
          and not k.startswith("deeplift_shap")},
  }))
  if args.profile_dir:
    _profile(args.profile_dir, {k: calls[k] for k in
                                ("gradient", "epsilon_plus_flat")})


def _profile(directory: str, calls: dict, reps: int = 3) -> None:
  """A ``jax.profiler`` trace of ``reps`` calls of each entry."""
  for f, a in calls.values():
    jax.block_until_ready(f(*a))
  with jax.profiler.trace(directory):
    for name, (f, a) in calls.items():
      for _ in range(reps):
        with jax.profiler.TraceAnnotation(name):
          jax.block_until_ready(f(*a))


if __name__ == "__main__":
  main()
