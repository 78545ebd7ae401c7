r"""Extremal Perturbations and Meaningful Perturbation against their floor.

  python benchmarks/optimisation.py [--model resnet18] [--size 112] \
      [--batch 16] [--steps 10] [--reps 3]

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
model.
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


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--reps", type=int, default=3)
  args = parser.parse_args()
  print(json.dumps({"devices": [str(d) for d in jax.devices()]}))
  kwargs = {"small_inputs": False} if args.model.startswith("resnet") else {}
  model = create_model(args.model, num_classes=10, **kwargs)
  x = jax.random.uniform(jax.random.key(1),
                         (args.batch, args.size, args.size, 3))
  v = model.init(jax.random.key(0), x[:1])
  clf = from_flax(model, v, layers=[])
  targets = jnp.arange(args.batch) % 10
  s = args.size / 224
  ep = jax.jit(lambda x, t: opt.extremal_perturbation(
      clf, x, t, steps=args.steps, step=max(1, round(7 * s)),
      sigma=21 * s, max_blur=20 * s))
  mp = jax.jit(lambda x, t: opt.meaningful_perturbation(
      clf, x, t, key=jax.random.key(2), steps=args.steps, init=1.0,
      mask_scale=max(1, round(8 * s)), mask_blur=5 * s, blur_sigma=10 * s,
      jitter=max(1, round(4 * s))))
  base = jnp.full_like(x, 0.5)
  times = timed_side_by_side({
      "extremal": (ep, (x, targets)),
      "meaningful": (mp, (x, targets)),
      "floor": (floor_fn(clf, args.steps), (x, base, targets)),
  }, reps=args.reps)
  print(json.dumps({
      "model": args.model, "size": args.size, "batch": args.batch,
      "steps": args.steps, **{f"{k}_s": round(t, 3)
                              for k, t in times.items()},
      "extremal_over_floor": round(times["extremal"] / times["floor"], 3),
      "meaningful_over_floor": round(times["meaningful"] / times["floor"],
                                     3)}), flush=True)


if __name__ == "__main__":
  main()
