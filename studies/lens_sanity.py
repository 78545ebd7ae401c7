r"""Attribution Lens under cascading randomisation (paper 003, Fig. 6).

  python studies/lens_sanity.py --workdir runs/default [--images 32]

For each base method, the Spearman correlation between maps of the trained
model and maps after randomising layers cumulatively from the output, for
the base method and for its lens (top-2 classes of the trained model, the
paper's choice for randomisation tests; maps of the top class), averaged
over ``--keys`` randomisation keys: one draw is not enough, since a random
head flips each class's gradient map to about plus or minus a common
pattern, so signed correlations after one draw mostly measure sign luck.
Both signed maps (``preprocess='none'``) and magnitudes (``'abs'``, as
Adebayo et al. also report) are compared. Prints JSON lines and Markdown
tables; a method that explains the model decorrelates.
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

from lapjax import attribution as attr  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.data import sources  # noqa: E402
from lapjax.evaluation.evaluate import load_run  # noqa: E402
from lapjax.metrics.sanity import cascading_randomization  # noqa: E402

LAYER = "block4"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/default")
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--keys", type=int, default=3)
  args = parser.parse_args()
  config, model, variables = load_run(args.workdir)
  src, _ = sources.make_source(config.data, "test")
  x = jnp.asarray(src.get(np.arange(args.images))["image"])
  logits = from_flax(model, variables, layers=[]).apply(x)[0]
  class_set = attr.top_k_classes(logits, 2)
  top = class_set[:, 0]

  def lens_of(base):
    def method(clf, x, t, **kw):
      return attr.attribution_lens(base, clf, x, class_set, target=t, **kw)
    return method

  rows = {}
  for preprocess in ("none", "abs"):
    for name, base, kw, guided in (
        ("gradient", attr.gradient, {}, False),
        ("input_x_gradient", attr.input_x_gradient, {}, False),
        ("guided_backprop", attr.guided_backprop, {}, True),
        ("grad_cam", attr.grad_cam, {"layer": LAYER}, False)):
      module = model.clone(act=attr.guided_relu) if guided else model
      for label, method in ((name, base), (name + "+AL", lens_of(base))):
        curves = []
        for k in range(args.keys):
          r = cascading_randomization(
              module, variables, x, top, method, key=jax.random.key(k),
              classifier_layers=[LAYER], similarities=("spearman",),
              preprocess=preprocess, **kw)
          curves.append(np.nanmean(np.asarray(r["similarity"]["spearman"]),
                                   1))
        curve = np.mean(curves, 0)
        rows[(preprocess, label)] = (r["layers"], curve, np.std(curves, 0))
        print(json.dumps({"benchmark": "lens_sanity", "method": label,
                          "preprocess": preprocess, "keys": args.keys,
                          "layers": r["layers"],
                          "spearman": [round(float(v), 4) for v in curve],
                          "std_over_keys": [round(float(v), 4) for v in
                                            np.std(curves, 0)]}),
              flush=True)
  for preprocess in ("none", "abs"):
    layers = rows[(preprocess, "gradient")][0]
    print(f"\npreprocess={preprocess}: mean over {args.keys} keys "
          "(std over keys)\n")
    print("| method | " + " | ".join(["trained"] + layers) + " |")
    print("|---" * (len(layers) + 2) + "|")
    for (pre, label), (_, curve, std) in rows.items():
      if pre == preprocess:
        print(f"| {label} | " + " | ".join(
            f"{v:.2f} ({s:.2f})" for v, s in zip(curve, std)) + " |")

if __name__ == "__main__":
  main()
