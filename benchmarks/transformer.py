r"""Transformer attribution speed: rollout and GAE against the passes they
need, and the Attribution Lens around GAE, side by side.

  python benchmarks/transformer.py                     # ViT-B/16, 224, B=8
  python benchmarks/transformer.py --embed-dim 192 --heads 3 --batch 8
  python benchmarks/transformer.py --size 112 --batch 2 --reps 3
  python benchmarks/transformer.py --flops-only        # operations only

A lapjax ``VisionTransformer`` with random weights (speed does not depend
on them): ViT-B/16 by default (``--embed-dim 768 --depth 12 --heads 12
--patch 16``), at ``--size`` squared, batch ``--batch``, tapping every
block's attention probabilities. Every entry is jitted (compile excluded)
and timed in interleaved rounds, median of ``--reps``:

* ``forward``: one forward pass (logits and the attention taps);
* ``forward_backward``: one forward and one backward pass (the input
  gradient of the target logits, ``lapjax.attribution.gradient``);
* ``rollout``: ``attention_rollout``; ``gae``: ``gae`` with ``[B]``
  targets;
* ``lens_gae``: ``attribution_lens`` around ``gae`` with a class set of
  ``--classes-in-set`` (C') classes per image;
* ``attention_gradients_1`` / ``attention_gradients_set``: the passes GAE
  and the lens need and nothing else (``transformer.attention_gradients``:
  one forward, then one backward pass per class, ``vmap``-ed over the
  output cotangents), for 1 and for C' classes. ``lens_gae /
  attention_gradients_set`` near 1 says the lens spends nothing beyond
  them; ``attention_gradients_set / attention_gradients_1`` is the lens'
  floor on the backend (C' backward passes cannot share work: each
  class's attention gradient is a separate vector-Jacobian product, and
  GAE's positive part makes the map non-linear in it).

Prints one JSON line: seconds per call and the ratios the issue bounds
(``rollout / forward <= 1.3``, ``gae / forward_backward <= 1.3``,
``lens_gae / gae <= 1.5``) and the decomposition above; and the same
ratios in XLA's count of floating-point operations of each compiled
program (``cost_analysis``), which does not depend on the machine's load:
the arithmetic each entry must do. ``--flops-only`` compiles and counts
without timing (minutes instead of an hour for ViT-B/16 at batch 8 on a
shared 2-core CPU).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import lapjax  # noqa: E402
from benchmarks.common import timed_side_by_side  # noqa: E402
from lapjax.attribution import gradient, lens  # noqa: E402
from lapjax.attribution import transformer as tr  # noqa: E402
from lapjax.models import vit  # noqa: E402
from lapjax.tokens import TokenLayout  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--patch", type=int, default=16)
  parser.add_argument("--embed-dim", type=int, default=768)
  parser.add_argument("--depth", type=int, default=12)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--classes-in-set", type=int, default=4)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--flops-only", action="store_true",
                      help="count each program's operations, time nothing")
  args = parser.parse_args()
  model = vit.VisionTransformer(
      num_classes=args.classes, patch_size=args.patch,
      embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads,
      image_size=(args.size, args.size))
  x = jax.random.normal(jax.random.key(0), (args.batch, args.size,
                                            args.size, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  clf = lapjax.from_flax(model, variables,
                         layers=vit.attention_taps(args.depth))
  layout = TokenLayout((args.patch, args.patch), 1)
  targets = jnp.arange(args.batch) % args.classes
  class_set = (targets[:, None] + jnp.arange(args.classes_in_set)[None]
               ) % args.classes
  names = vit.attention_taps(args.depth)
  one_hot = jax.nn.one_hot(targets, args.classes)[None]          # [1, B, K]
  set_hot = jnp.moveaxis(jax.nn.one_hot(class_set, args.classes), 1, 0)
  calls = {
      "forward": (jax.jit(lambda x: clf.apply(x)), (x,)),
      "attention_gradients_1": (jax.jit(lambda x, c: tr.attention_gradients(
          clf, x, names, c)), (x, one_hot)),
      "attention_gradients_set": (jax.jit(
          lambda x, c: tr.attention_gradients(clf, x, names, c)),
          (x, set_hot)),
      "forward_backward": (jax.jit(lambda x, t: gradient(clf, x, t)),
                           (x, targets)),
      "rollout": (jax.jit(lambda x: tr.attention_rollout(
          clf, x, tokens=layout)), (x,)),
      "gae": (jax.jit(lambda x, t: tr.gae(clf, x, t, tokens=layout)),
              (x, targets)),
      "lens_gae": (jax.jit(lambda x, s: lens.attribution_lens(
          tr.gae, clf, x, s, tokens=layout)), (x, class_set)),
  }
  # Compiled once: the executables are timed, and counted.
  compiled = {name: (f.lower(*a).compile(), a) for name, (f, a)
              in calls.items()}
  flops = {name: _flops(c) for name, (c, _) in compiled.items()}
  head = {
      "bench": "transformer_attribution", "size": args.size,
      "batch": args.batch, "patch": args.patch,
      "embed_dim": args.embed_dim, "depth": args.depth, "heads": args.heads,
      "classes_in_set": args.classes_in_set,
      "backend": jax.default_backend(), "reps": args.reps,
      "gflops": {k: round(v / 1e9, 3) for k, v in flops.items()},
      "flop_ratios": _ratios(flops)}
  if args.flops_only:
    print(json.dumps(head))
    return
  seconds = timed_side_by_side(compiled, reps=args.reps)
  print(json.dumps({
      **head, "seconds": {k: round(v, 5) for k, v in seconds.items()},
      "ratios": _ratios(seconds)}))


def _flops(executable) -> float:
  """XLA's count of floating-point operations of a compiled program."""
  cost = executable.cost_analysis()
  if isinstance(cost, list):  # older jax: one dict per device
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def _ratios(v: dict) -> dict:
  """The bounded ratios and the decomposition, of seconds or of flops."""
  def ratio(a, b):
    return round(v[a] / v[b], 3)

  return {
      "rollout/forward": ratio("rollout", "forward"),
      "gae/forward_backward": ratio("gae", "forward_backward"),
      "lens_gae/gae": ratio("lens_gae", "gae"),
      # The passes each needs: one forward, then one backward pass per
      # class (vmapped). Near 1: nothing is spent beyond those passes.
      "gae/attention_gradients_1": ratio("gae", "attention_gradients_1"),
      "lens_gae/attention_gradients_set": ratio("lens_gae",
                                                "attention_gradients_set"),
      # The lens' floor on this backend: the C' backward passes over the
      # one of GAE.
      "attention_gradients_set/attention_gradients_1": ratio(
          "attention_gradients_set", "attention_gradients_1"),
  }


if __name__ == "__main__":
  main()
