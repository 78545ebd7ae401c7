r"""Extremal Perturbations and Meaningful Perturbation against their floor.

  python benchmarks/optimisation.py [--model resnet18] [--size 112] \
      [--batch 16] [--steps 10] [--reps 3] [--methods extremal,meaningful]

Both methods run one optimisation loop for the whole batch; each step is
one forward and one backward pass of the ``--batch`` masked inputs. The
floor is exactly that and nothing else: a jitted ``lax.scan`` of
``--steps`` steps whose body blends the batch with a baseline through a
per-pixel mask, runs the model forward and backward to the mask, and
updates it. The three are timed side by side, interleaved
(``timed_side_by_side``), compile excluded, median of ``--reps``; the
ratio is method / floor (per step, so ``--steps`` only sets the run time).

The methods' pixel sizes are the references' 224 x 224 values scaled to
``--size``. Meaningful Perturbation starts from a constant mask here
(``init=1.0``): its default circular start adds 35 forward passes of the
batch once per call, outside the loop measured. Prints one JSON line per
model. ``--methods extremal`` times Extremal Perturbations and the floor
only (at 224 x 224 behind ResNet-50 each call is minutes on a small CPU).
``--previous FILE`` also times Extremal Perturbations from another version
of ``lapjax/attribution/optimisation.py`` (e.g. ``git show
REV:lapjax/attribution/optimisation.py > FILE``) in the same rounds:
before / after numbers from one process.
"""

import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.common import timed_side_by_side  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.attribution import loop_convs  # noqa: E402
from lapjax.attribution import optimisation as opt  # noqa: E402
from lapjax.models import create_model  # noqa: E402


def floor_fn(clf, steps):
  """``steps`` forward and backward passes of the masked batch."""

  def run(x, base, targets):
    cot = jax.nn.one_hot(targets, clf.apply(x[:1])[0].shape[-1])

    def score(m):
      xs = x * m + base * (1 - m)
      return jnp.sum(clf.apply(xs)[0] * cot)

    grad = loop_convs.canonical_convs(jax.grad(score))

    def body(m, _):
      return jnp.clip(m - 1e-3 * grad(m), 0, 1), None

    m0 = jnp.ones((*x.shape[:3], 1), x.dtype)
    return jax.lax.scan(body, m0, None, length=steps)[0]

  return jax.jit(run)


def method_calls(clf, x, targets, *, size: int, steps: int,
                 module=opt) -> dict:
  """``{name: (jitted function, args)}`` of both methods (from ``module``,
  a version of ``lapjax.attribution.optimisation``) with the references'
  pixel sizes scaled from 224 to ``size``."""
  s = size / 224
  ep = jax.jit(lambda x, t: module.extremal_perturbation(
      clf, x, t, steps=steps, step=max(1, round(7 * s)),
      sigma=21 * s, max_blur=20 * s))
  mp = jax.jit(lambda x, t: module.meaningful_perturbation(
      clf, x, t, key=jax.random.key(2), steps=steps, init=1.0,
      mask_scale=max(1, round(8 * s)), mask_blur=5 * s, blur_sigma=10 * s,
      jitter=max(1, round(4 * s))))
  return {"extremal": (ep, (x, targets)), "meaningful": (mp, (x, targets))}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--methods", default="extremal,meaningful",
                      help="comma-separated: extremal, meaningful")
  parser.add_argument("--previous", default=None,
                      help="another optimisation.py: its EP timed too")
  args = parser.parse_args()
  if args.steps < 2:
    # EP returns the mask before its last update: with one step nothing
    # depends on the model, and XLA drops its forward and backward pass.
    raise ValueError(f"--steps must be >= 2; got {args.steps}")
  print(json.dumps({"devices": [str(d) for d in jax.devices()]}))
  kwargs = {"small_inputs": False} if args.model.startswith("resnet") else {}
  model = create_model(args.model, num_classes=10, **kwargs)
  x = jax.random.uniform(jax.random.key(1),
                         (args.batch, args.size, args.size, 3))
  v = model.init(jax.random.key(0), x[:1])
  clf = from_flax(model, v, layers=[])
  targets = jnp.arange(args.batch) % 10
  available = method_calls(clf, x, targets, size=args.size,
                           steps=args.steps)
  names = [n for n in args.methods.split(",") if n]
  unknown = sorted(set(names) - set(available))
  if unknown or not names:
    raise ValueError(f"--methods must name some of {sorted(available)}; "
                     f"got {args.methods!r}")
  calls = {n: available[n] for n in names}
  if args.previous:
    spec = importlib.util.spec_from_file_location("previous_optimisation",
                                                  args.previous)
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    calls["extremal_previous"] = method_calls(
        clf, x, targets, size=args.size, steps=args.steps,
        module=previous)["extremal"]
    names.append("extremal_previous")
  base = jnp.full_like(x, 0.5)
  times = timed_side_by_side({
      **calls,
      "floor": (floor_fn(clf, args.steps), (x, base, targets)),
  }, reps=args.reps)
  print(json.dumps({
      "model": args.model, "size": args.size, "batch": args.batch,
      "steps": args.steps, **{f"{k}_s": round(t, 3)
                              for k, t in times.items()},
      **{f"{n}_over_floor": round(times[n] / times["floor"], 3)
         for n in names}}), flush=True)


if __name__ == "__main__":
  main()
