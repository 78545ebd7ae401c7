r"""CAM family speed: Ablation-CAM against Score-CAM on the same layer.

  python benchmarks/cams.py [--model small_cnn|resnet18] [--size 64] \
      [--batch 8] [--reps 5] [--layer block3]

Both methods run the network once per channel of the layer for the whole
batch, ``chunk_size`` images per pass: Score-CAM from the input masked by
the channel's upsampled activation, Ablation-CAM from the layer on (the
channel zeroed through ``deltas``; the layers before it do not depend on
the channel, and XLA hoists them out of the loop over chunks: none of
their convolutions is in the compiled loop body). Timed side by side in
interleaved rounds (jitted, compile excluded, median of ``--reps``), so
the ratio holds on a shared machine. Grad-CAM, XGrad-CAM, HiResCAM (one
forward and backward pass) and FullGrad (one forward and backward pass to
the input and every bias layer) are timed in the same rounds for scale.
Prints one JSON line: seconds per call and ``ablation_over_score``.
"""

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.common import timed_side_by_side  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.attribution import cam  # noqa: E402
from lapjax.attribution.fullgrad import (  # noqa: E402
  fullgrad,
  fullgrad_classifier,
)
from lapjax.models import SmallCNN, create_model  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="small_cnn",
                      choices=("small_cnn", "resnet18"))
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--chunk-size", type=int, default=64)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--layer", default=None,
                      help="tap to explain (default: the last conv block, "
                      "block4 / stage4)")
  args = parser.parse_args()
  if args.model == "resnet18":
    model, layer = create_model("resnet18", num_classes=4), "stage4"
  else:
    model, layer = SmallCNN(4, widths=(16, 32, 64, 128)), "block4"
  layer = args.layer or layer
  x = jax.random.uniform(jax.random.key(0),
                         (args.batch, args.size, args.size, 3))
  v = model.init(jax.random.key(1), x[:1])
  clf = from_flax(model, v, layers=[layer])
  full = fullgrad_classifier(model, v, input_shape=x.shape[1:])
  t = jnp.arange(args.batch) % 4
  chunked = {"layer": layer, "chunk_size": args.chunk_size}
  calls = {
      "score_cam": (cam.score_cam, clf, chunked),
      "ablation_cam": (cam.ablation_cam, clf, chunked),
      "grad_cam": (cam.grad_cam, clf, {"layer": layer}),
      "xgrad_cam": (cam.xgrad_cam, clf, {"layer": layer}),
      "hires_cam": (cam.hires_cam, clf, {"layer": layer}),
      "fullgrad": (fullgrad, full, {}),
  }
  jitted = {name: (jax.jit(functools.partial(method, c, **kw)), (x, t))
            for name, (method, c, kw) in calls.items()}
  seconds = timed_side_by_side(jitted, reps=args.reps)
  channels = jax.eval_shape(clf.apply, x)[1][layer].shape[-1]
  print(json.dumps({
      "benchmark": "cams", "model": args.model, "size": args.size,
      "batch": args.batch, "layer": layer, "channels": channels,
      "chunk_size": args.chunk_size, "backend": jax.default_backend(),
      "bias_layers": len(full.layers),
      "seconds": {k: round(s, 4) for k, s in seconds.items()},
      "ablation_over_score": round(seconds["ablation_cam"]
                                   / seconds["score_cam"], 3)}))


if __name__ == "__main__":
  main()
