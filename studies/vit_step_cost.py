r"""What one training step of a clue ViT costs, by model size.

  python studies/vit_step_cost.py --sizes 64,4,4,128 128,4,4,512 \
    --batch 64 --reps 5

For each ``width,depth,heads,mlp`` it builds ``lapjax.models.
VisionTransformer`` (patch 8, 64 x 64 input, 4 classes, as
``configs/vit.py``), jits one AdamW step (softmax cross-entropy, the
update applied) on a fixed random batch, so no data pipeline is timed,
and prints one JSON line: parameters, the first call's seconds (compile
plus one step) and the median of ``--reps`` further steps. The sizes run
one after another in one process: on a shared machine only the ratios
between lines of one run mean something.
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
import optax  # noqa: E402

from lapjax.models.vit import VisionTransformer  # noqa: E402


def step_cost(width: int, depth: int, heads: int, mlp: int, *, batch: int,
              reps: int) -> dict[str, float]:
  """Parameters, first-call seconds and median step seconds of one size."""
  model = VisionTransformer(num_classes=4, patch_size=8, embed_dim=width,
                            depth=depth, num_heads=heads, mlp_dim=mlp,
                            image_size=(64, 64))
  keys = jax.random.split(jax.random.key(0), 2)
  images = jax.random.uniform(keys[0], (batch, 64, 64, 3))
  labels = jnp.arange(batch) % 4
  params = model.init(keys[1], images[:1])["params"]
  tx = optax.adamw(1e-3, weight_decay=0.05)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits = model.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  def timed(params, opt_state):
    start = time.perf_counter()
    params, opt_state, value = step(params, opt_state)
    value.block_until_ready()
    return params, opt_state, time.perf_counter() - start

  params, opt_state, first = timed(params, opt_state)
  seconds = []
  for _ in range(reps):
    params, opt_state, t = timed(params, opt_state)
    seconds.append(t)
  return {"width": width, "depth": depth, "heads": heads, "mlp": mlp,
          "batch": batch,
          "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
          "first_call_s": first, "step_s": float(np.median(seconds))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", nargs="+", default=["64,4,4,128"],
                      help="width,depth,heads,mlp per model")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  for size in args.sizes:
    width, depth, heads, mlp = (int(v) for v in size.split(","))
    print(json.dumps(step_cost(width, depth, heads, mlp, batch=args.batch,
                               reps=args.reps)), flush=True)


if __name__ == "__main__":
  main()
