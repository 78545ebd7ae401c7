r"""Attribution speed: Attribution Lens overhead, batching, IG memory.

  python benchmarks/attribution.py [--batch 64] [--reps 5]
  python benchmarks/attribution.py --model resnet18 --size 96 --batch 8 \
      --sections chunking
  python benchmarks/attribution.py --sections checks --batch 16 \
      --methods gradient,integrated_gradients,grad_cam,score_cam,rise,sloc

The default SmallCNN (random weights; speed does not depend on them) at
64x64, or ``--model resnet18`` (CAM layer ``stage4``) at ``--size``. Every
ratio is measured in this one run, jitted functions, compile
excluded, median of ``--reps``. Prints JSON lines:

* ``lens``: Attribution Lens with C' = 4 over Grad-CAM and input x gradient,
  against one call of the base method with one target, and against a loop of
  4 single-target calls.
* ``batching``: per-image time of each method on a batch vs image by image
  (batch-1 calls of the same jitted function) on ``--single`` images.
* ``eager``: one plain (un-jitted) call of each method, as the README's
  examples make it, with the library's ``compiled`` wrapper vs the same
  method unwrapped (``__wrapped__``: what an eager call used to run,
  operation by operation) vs ``jax.jit`` of it, on the batch and on one
  image.
* ``checks``: each method jitted plainly (its traced input checks
  dropped) vs through ``checks.jit_checked`` (the checks compiled in and
  raised, as the evaluation runs the methods), timed side by side on the
  batch, plus SLOC (``--sloc-steps``) on ``--single`` images:
  ``checked_over_plain`` is the cost of the checks.
* ``ig_memory``: XLA's temporary buffer size of the compiled integrated
  gradients (chunk 16) for 50 and 200 steps: chunking bounds memory by
  ``chunk_size * B`` images whatever the number of steps.
* ``chunking``: integrated gradients with the library's ``lax.scan`` over
  chunks vs a host loop over one jitted chunk (DESIGN.md §3), and vs the
  same ``lax.scan`` without ``loop_convs`` (the convolutions of the loop
  body left in the layouts of JAX's transpose rule).
"""

import argparse
import functools
import json
import os
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import checkify  # noqa: E402

from benchmarks.common import timed, timed_side_by_side  # noqa: E402
from lapjax import attribution as attr  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.attribution import checks, core  # noqa: E402
from lapjax.models import SmallCNN, create_model  # noqa: E402


def _cost(f, args) -> dict:
  """XLA's cost analysis (flops, bytes accessed) of ``jax.jit(f)``."""
  cost = jax.jit(f).lower(*args).compile().cost_analysis()
  return cost[0] if isinstance(cost, list) else cost


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="small_cnn",
                      choices=("small_cnn", "resnet18"))
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--single", type=int, default=8)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--sloc-steps", type=int, default=101)
  parser.add_argument("--methods", default="",
                      help="comma-separated subset of methods for the checks "
                      "section (default: all)")
  parser.add_argument("--sections",
                      default="lens,batching,eager,checks,memory,chunking",
                      help="comma-separated subset to run")
  args = parser.parse_args()
  sections = set(args.sections.split(","))
  if args.model == "resnet18":
    model, layer = create_model("resnet18", num_classes=4), "stage4"
  else:
    model, layer = SmallCNN(4, widths=(16, 32, 64, 128)), "block4"
  x = jax.random.uniform(jax.random.key(0),
                         (args.batch, args.size, args.size, 3))
  v = model.init(jax.random.key(1), x[:1])
  clf = from_flax(model, v, layers=[layer])
  guided = attr.guided_classifier(model, v, layers=[layer])
  t1 = jnp.arange(args.batch) % 4
  t4 = jnp.tile(jnp.arange(4), (args.batch, 1))
  key = jax.random.key(2)

  # Attribution Lens overhead.
  for name, method, kw in (("grad_cam", attr.grad_cam, {"layer": layer}),
                           ("input_x_gradient", attr.input_x_gradient, {})
                           ) if "lens" in sections else ():
    one = jax.jit(functools.partial(method, clf, **kw))
    lens = jax.jit(functools.partial(attr.attribution_lens, method, clf,
                                     **kw))
    base = timed(one, x, t1, reps=args.reps)
    with_lens = timed(lens, x, t4, reps=args.reps)

    def loop(x, t4, one=one):
      return [one(x, t4[:, j]) for j in range(4)]

    looped = timed(loop, x, t4, reps=args.reps)
    print(json.dumps({"benchmark": "lens", "method": name,
                      "batch": args.batch, "classes": 4,
                      "base_s": round(base, 4), "lens_s": round(with_lens, 4),
                      "lens_over_base": round(with_lens / base, 2),
                      "loop_over_base": round(looped / base, 2)}),
          flush=True)

  # Batch vs image by image.
  methods = {
      "gradient": (attr.gradient, clf, {}),
      "input_x_gradient": (attr.input_x_gradient, clf, {}),
      "integrated_gradients": (attr.integrated_gradients, clf,
                               {"steps": 16, "chunk_size": 16}),
      "smoothgrad": (attr.smoothgrad, clf, {"key": key, "samples": 16}),
      "guided_backprop": (attr.guided_backprop, guided, {}),
      "grad_cam": (attr.grad_cam, clf, {"layer": layer}),
      "grad_cam_plus_plus": (attr.grad_cam_plus_plus, clf,
                             {"layer": layer}),
      "layer_cam": (attr.layer_cam, clf, {"layer": layer}),
      "guided_grad_cam": (attr.guided_grad_cam, guided, {"layer": layer}),
      "score_cam": (attr.score_cam, clf, {"layer": layer,
                                          "chunk_size": 32}),
      "occlusion": (attr.occlusion, clf, {"window": (8, 8),
                                          "stride": (8, 8)}),
      "rise": (attr.rise, clf, {"key": key, "num_masks": 256}),
      "lafam": (attr.lafam, clf, {"layer": layer}),
      "relax": (attr.relax, clf, {"layer": layer, "key": key,
                                  "num_masks": 256}),
  }
  for name, (method, c, kw) in (methods.items() if "batching" in sections
                                else ()):
    f = jax.jit(functools.partial(method, c, **kw))
    xs, ts = x[:args.single], t1[:args.single]

    def singles(xs, ts, f=f):
      return [f(xs[i:i + 1], ts[i:i + 1]) for i in range(len(xs))]

    times = timed_side_by_side({"batched": (f, (x, t1)),
                                "single": (singles, (xs, ts))},
                               reps=max(1, args.reps // 2))
    batched = times["batched"] / args.batch
    single = times["single"] / len(xs)
    print(json.dumps({"benchmark": "batching", "method": name,
                      "batch": args.batch, "options": {
                          k: v for k, v in kw.items() if k != "key"},
                      "per_image_batched_ms": round(1e3 * batched, 2),
                      "per_image_single_ms": round(1e3 * single, 2),
                      "speedup": round(single / batched, 2)}), flush=True)

  # Eager calls: the compiled wrapper vs op-by-op dispatch vs jax.jit.
  for name, (method, c, kw) in (methods.items() if "eager" in sections
                                else ()):
    for n in (args.batch, 1):
      inputs = (x[:n], t1[:n])
      times = timed_side_by_side({
          "eager": (functools.partial(method, c, **kw), inputs),
          "op_by_op": (functools.partial(method.__wrapped__, c, **kw),
                       inputs),
          "jit": (jax.jit(functools.partial(method, c, **kw)), inputs)},
          reps=max(1, args.reps // 2))
      print(json.dumps({"benchmark": "eager", "method": name, "batch": n,
                        **{f"{k}_ms": round(1e3 * v, 2)
                           for k, v in times.items()},
                        "op_by_op_over_eager": round(
                            times["op_by_op"] / times["eager"], 1),
                        "eager_over_jit": round(
                            times["eager"] / times["jit"], 2)}), flush=True)

  # Input checks under jit: plain jit vs jit_checked.
  checked_methods = {**methods, "sloc": (attr.sloc, clf, {
      "key": key, "steps": args.sloc_steps, "chunk_size": 64})}
  if args.methods:
    checked_methods = {k: checked_methods[k]
                       for k in args.methods.split(",")}
  for name, (method, c, kw) in (checked_methods.items()
                                if "checks" in sections else ()):
    inputs = ((x[:args.single], t1[:args.single]) if name == "sloc"
              else (x, t1))
    f = functools.partial(method, c, **kw)
    times = timed_side_by_side({"plain": (jax.jit(f), inputs),
                                "checked": (checks.jit_checked(f), inputs)},
                               reps=args.reps)
    # XLA's own count of the work, immune to a busy machine's noise.
    cost = {k: _cost(g, inputs) for k, g in (
        ("plain", f), ("checked", checkify.checkify(
            f, errors=checkify.user_checks)))}
    print(json.dumps({"benchmark": "checks", "method": name,
                      "batch": len(inputs[0]),
                      "plain_ms": round(1e3 * times["plain"], 2),
                      "checked_ms": round(1e3 * times["checked"], 2),
                      "checked_over_plain": round(
                          times["checked"] / times["plain"], 3),
                      **{f"checked_over_plain_{k}": round(
                          cost["checked"][k] / cost["plain"][k], 4)
                         for k in ("flops", "bytes accessed")
                         if cost["plain"].get(k)}}),
          flush=True)

  # Integrated gradients: memory does not grow with steps.
  for steps in (50, 200) if "memory" in sections else ():
    f = jax.jit(functools.partial(attr.integrated_gradients, clf, steps=steps,
                                  chunk_size=16))
    mem = f.lower(x, t1).compile().memory_analysis()
    print(json.dumps({"benchmark": "ig_memory", "batch": args.batch,
                      "steps": steps, "chunk_size": 16,
                      "temp_mib": round(mem.temp_size_in_bytes / 2**20, 1),
                      "all_steps_at_once_input_mib": round(
                          steps * x.size * 4 / 2**20, 1)}), flush=True)

  # lax.scan over chunks vs a host loop over one jitted chunk.
  if "chunking" not in sections:
    return
  steps, chunk = 48, 16
  # Same work per pass: chunk path points of the whole batch.
  scan = jax.jit(functools.partial(attr.integrated_gradients, clf,
                                   steps=steps,
                                   chunk_size=chunk * args.batch))
  alphas = jnp.linspace(0, 1, steps)
  t = core.make_targets(t1, args.batch, 4)

  @jax.jit
  def chunk_grads(alpha_chunk, x):
    xs = alpha_chunk[:, None, None, None, None] * x
    return core.expanded_input_gradients(clf, xs, t.cotangents)[:, 0].sum(0)

  def host_loop(x):
    total = sum(chunk_grads(alphas[i:i + chunk], x)
                for i in range(0, steps, chunk))
    return (x * total / steps).sum(-1)

  with mock.patch.object(core.loop_convs, "canonical_convs", lambda f: f):
    plain = jax.jit(functools.partial(
        attr.integrated_gradients, clf, steps=steps,
        chunk_size=chunk * args.batch)).lower(x, t1).compile()
  times = timed_side_by_side({"scan": (scan, (x, t1)),
                              "host": (host_loop, (x,)),
                              "plain": (plain, (x, t1))}, reps=args.reps)
  s_scan, s_host, s_plain = times["scan"], times["host"], times["plain"]
  print(json.dumps({"benchmark": "chunking", "method": "integrated_gradients",
                    "model": args.model, "size": args.size,
                    "batch": args.batch, "steps": steps,
                    "points_per_pass": chunk,
                    "lax_scan_s": round(s_scan, 3),
                    "host_loop_s": round(s_host, 3),
                    "lax_scan_without_loop_convs_s": round(s_plain, 3),
                    "scan_over_host": round(s_scan / s_host, 2),
                    "without_over_with_loop_convs": round(s_plain / s_scan,
                                                          2)}),
        flush=True)


if __name__ == "__main__":
  main()
