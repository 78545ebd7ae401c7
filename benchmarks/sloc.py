r"""SLOC speed: the optimisation phase on both paths, and a whole explanation
against the forward passes it needs.

  python benchmarks/sloc.py [--size 224] [--reps 3] [--model resnet18]

One run, jitted functions, compile excluded, median of ``--reps``. Prints
JSON lines:

* ``fit``: ``sloc_fit`` for one image at ``--size``^2 with 1000 grid masks
  (500 at each of the default patch sizes, p = 0.5) and 501 Adam steps, on
  the structured path (summed-area tables) and the dense path (``[1000, H,
  W]`` masks), and the relative L-inf difference of the two maps.
* ``whole``: one SLOC explanation (p tuning: 2 x 13 x 50 masked passes;
  1000 masks; f(x) and f(b): 2302 images) against a jitted function running
  the same number of masked forward passes with the same ``chunk_size``
  (the cost SLOC cannot avoid); ratio = SLOC / forward passes.
"""

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.common import timed  # noqa: E402
from lapjax import attribution as attr  # noqa: E402
from lapjax import from_flax  # noqa: E402
from lapjax.attribution import core  # noqa: E402
from lapjax.attribution import grid_masks as gm  # noqa: E402

# The module; ``attr.sloc`` is the method.
S = importlib.import_module("lapjax.attribution.sloc")  # noqa: E402
from lapjax.models import create_model  # noqa: E402


def fit_section(size, reps):
  key = jax.random.key(0)
  hw = (size, size)
  masks = S.sample_masks(key, hw, S.default_patch_sizes(hw), 0.5, 500)
  dense = gm.to_dense(masks, hw)
  # Responses of a model whose class probability is a sigmoid of the
  # visible part of a region (1/16 of the image), on SLOC's scale C*H*W.
  region = jnp.zeros(hw).at[size // 4: size // 2, size // 3: size // 3
                            + size // 4].set(1.0)

  def prob(cover):
    return jax.nn.sigmoid(8 * (cover - 0.5))

  scale = 3 * size * size
  cover = gm.masked_sums(region, masks) / region.sum()
  responses = (prob(cover) - prob(0.0)) * scale
  init = S.initial_map(key, hw, (prob(1.0) - prob(0.0)) * scale)
  grid = jax.jit(lambda r, a: S.sloc_fit(masks, r, a))
  full = jax.jit(lambda m, r, a: S.sloc_fit(m, r, a))
  t_grid = timed(grid, responses, init, reps=reps)
  t_dense = timed(full, dense, responses, init, reps=reps)
  a, b = grid(responses, init), full(dense, responses, init)
  return {"section": "fit", "size": size, "masks": 1000, "steps": 501,
          "structured_s": round(t_grid, 3), "dense_s": round(t_dense, 3),
          "dense_over_structured": round(t_dense / t_grid, 1),
          "rel_linf_structured_vs_dense": float(
              jnp.abs(a - b).max() / jnp.abs(b).max())}


def whole_section(size, reps, model_name, chunk_size):
  model = create_model(model_name, num_classes=10,
                       **({"small_inputs": False}
                          if model_name.startswith("resnet") else {}))
  x = jax.random.uniform(jax.random.key(1), (1, size, size, 3))
  v = model.init(jax.random.key(0), x)
  clf = from_flax(model, v, layers=[])
  t = jnp.array([3])
  explain = jax.jit(lambda x: attr.sloc(clf, x, t, key=jax.random.key(2),
                                        chunk_size=chunk_size))
  n = 2 * 13 * 50 + 1000 + 2

  def forwards(x):
    def chunk(i):
      m = jax.random.bernoulli(jax.random.fold_in(jax.random.key(3), i[0]),
                               0.5, (i.shape[0], size, size, 1))
      return jax.nn.softmax(clf.apply((x * m).astype(jnp.float32))[0])[:, 3]
    return core.chunked_map(chunk, jnp.arange(n), chunk_size)

  t_sloc = timed(explain, x, reps=reps)
  t_fwd = timed(jax.jit(forwards), x, reps=reps)
  return {"section": "whole", "size": size, "model": model_name,
          "chunk_size": chunk_size, "forward_images": n,
          "sloc_s": round(t_sloc, 2), "forwards_s": round(t_fwd, 2),
          "ratio": round(t_sloc / t_fwd, 3)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--chunk_size", type=int, default=64)
  parser.add_argument("--sections", default="fit,whole")
  args = parser.parse_args()
  print(json.dumps({"devices": [str(d) for d in jax.devices()]}))
  sections = args.sections.split(",")
  if "fit" in sections:
    print(json.dumps(fit_section(args.size, args.reps)), flush=True)
  if "whole" in sections:
    print(json.dumps(whole_section(args.size, args.reps, args.model,
                                   args.chunk_size)), flush=True)


if __name__ == "__main__":
  main()
