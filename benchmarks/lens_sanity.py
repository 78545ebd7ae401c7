r"""Attribution Lens under cascading randomisation (paper 003, Fig. 6).

  python benchmarks/lens_sanity.py --workdir runs/default [--images 32]

For each base method, the Spearman correlation between maps of the trained
model and maps after randomising layers cumulatively from the output, for
the base method and for its lens (top-2 classes of the trained model, the
paper's choice for randomisation tests; maps of the top class). Prints JSON
lines and a Markdown table; a method that explains the model decorrelates.
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
from lapjax.evaluation.evaluate import load_config  # noqa: E402
from lapjax.metrics.sanity import cascading_randomization  # noqa: E402
from lapjax.train import load_state  # noqa: E402

LAYER = "block4"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/default")
  parser.add_argument("--images", type=int, default=32)
  args = parser.parse_args()
  config = load_config(args.workdir)
  model, state, _ = load_state(config, args.workdir)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
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
  for name, base, kw, guided in (
      ("gradient", attr.gradient, {}, False),
      ("input_x_gradient", attr.input_x_gradient, {}, False),
      ("guided_backprop", attr.guided_backprop, {}, True),
      ("grad_cam", attr.grad_cam, {"layer": LAYER}, False)):
    module = model.clone(act=attr.guided_relu) if guided else model
    for label, method in ((name, base), (name + "+AL", lens_of(base))):
      r = cascading_randomization(
          module, variables, x, top, method, key=jax.random.key(0),
          classifier_layers=[LAYER], similarities=("spearman",), **kw)
      curve = np.nanmean(np.asarray(r["similarity"]["spearman"]), 1)
      rows[label] = (r["layers"], curve)
      print(json.dumps({"benchmark": "lens_sanity", "method": label,
                        "layers": r["layers"],
                        "spearman": [round(float(v), 4) for v in curve]}),
            flush=True)
  layers = next(iter(rows.values()))[0]
  print("\n| method | " + " | ".join(["trained"] + layers) + " |")
  print("|---" * (len(layers) + 2) + "|")
  for label, (_, curve) in rows.items():
    print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")


if __name__ == "__main__":
  main()
