r"""Superpixel methods: SLIC on the host, then model evaluations per second.

  python benchmarks/superpixel.py [--batch 16] [--segments 50] [--reps 3]

Clue-benchmark test images (64 x 64), the default SmallCNN (random weights;
speed does not depend on them), SLIC superpixels (``slic_segments``,
``--segments``), padded to the batch's largest count. Every method is
jitted with the segments as an argument (compile excluded) and timed side
by side with occlusion (8 x 8 windows, stride 4) in interleaved rounds,
median of ``--reps``. Prints JSON lines: ``slic`` (host seconds per
image) and, per method, seconds per batch, model evaluations per image
and evaluated images per second (the cost is the forward passes: the
least-squares solves are small).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import timed_side_by_side  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.attribution import superpixel as sp  # noqa: E402
from lapjax.attribution.perturbation import occlusion  # noqa: E402
from lapjax.data import clues  # noqa: E402
from lapjax.models import SmallCNN  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--segments", type=int, default=50)
  parser.add_argument("--samples", type=int, default=256)
  parser.add_argument("--shapley-samples", type=int, default=25)
  parser.add_argument("--chunk-size", type=int, default=256)
  parser.add_argument("--reps", type=int, default=3)
  args = parser.parse_args()

  batch = clues.render(clues.CluesConfig(), "test", np.arange(args.batch))
  x = jnp.asarray(batch["image"])
  t = jnp.asarray(batch["label"])
  model = SmallCNN(4)
  clf = from_flax(model, model.init(jax.random.key(0), x[:1]), layers=[])
  sp.slic_segments(np.asarray(x[:1]), n_segments=args.segments)  # imports
  start = time.perf_counter()
  segments = sp.slic_segments(np.asarray(x), n_segments=args.segments)
  slic_s = (time.perf_counter() - start) / args.batch
  s = int(segments.max()) + 1
  counts = segments.reshape(args.batch, -1).max(-1) + 1
  print(json.dumps({"section": "slic", "seconds_per_image": round(slic_s, 4),
                    "segments_mean": float(counts.mean()),
                    "segments_max": s}))
  key = jax.random.key(0)
  common = {"num_segments": s, "chunk_size": args.chunk_size}
  methods = {
      "feature_ablation": (sp.feature_ablation, {}, s + 1),
      "shapley_sampling": (sp.shapley_sampling,
                           {"key": key, "samples": args.shapley_samples},
                           args.shapley_samples * s + 1),
      "kernel_shap": (sp.kernel_shap, {"key": key, "samples": args.samples},
                      args.samples + 2),
      "lime": (sp.lime, {"key": key, "samples": args.samples}, args.samples),
  }
  calls, evaluations = {}, {}
  for name, (fn, kw, n) in methods.items():
    f = jax.jit(lambda x, t, seg, fn=fn, kw=kw: fn(
        clf, x, t, segments=seg, **common, **kw))
    calls[name] = (f, (x, t, jnp.asarray(segments)))
    evaluations[name] = n
  windows = len(range(0, 64 - 8 + 1, 4)) ** 2
  calls["occlusion"] = (jax.jit(lambda x, t: occlusion(
      clf, x, t, window=(8, 8), stride=(4, 4),
      chunk_size=args.chunk_size)), (x, t))
  evaluations["occlusion"] = windows + 1
  seconds = timed_side_by_side(calls, reps=args.reps)
  for name, sec in seconds.items():
    print(json.dumps({
        "section": "method", "method": name, "batch": args.batch,
        "seconds": round(sec, 3), "evaluations_per_image": evaluations[name],
        "images_per_second": round(evaluations[name] * args.batch / sec)}))


if __name__ == "__main__":
  main()
