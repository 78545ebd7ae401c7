r"""Training throughput (images/s) of the default config and its ResNet-18.

  python benchmarks/train_throughput.py [--steps 30]

Times jitted training steps (compilation and 3 warm-up steps excluded) on the
default device(s), the batch already on device. Prints one JSON line per
config; record them in docs/benchmarks.md.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # noqa: E402

from configs import default  # noqa: E402
from lapjax.data import batching, sources  # noqa: E402
from lapjax.models import create_model  # noqa: E402
from lapjax.train import sharding  # noqa: E402
from lapjax.train.loop import make_optimizer, make_train_step  # noqa: E402
from lapjax.train.state import create_train_state  # noqa: E402


def measure(variant, steps):
  config = default.get_config(variant)
  config.data.num_train = config.batch_size * 4
  source, info = sources.make_source(config.data, "train")
  model = create_model(config.model.name, num_classes=info["num_classes"],
                       **config.model.kwargs)
  tx, _ = make_optimizer(config)
  mesh = sharding.make_mesh()
  state = jax.device_put(
      create_train_state(model, tx, jax.random.key(0), info["image_shape"]),
      sharding.replicated(mesh))
  step = make_train_step(model, tx, mesh)
  batches = []
  for s in range(4):
    b = batching.train_batch(source, config.batch_size, s, 0)
    batches.append(sharding.shard_batch(
        {"image": b["image"], "label": b["label"]}, mesh))
  for s in range(3):
    state, m = step(state, batches[s % 4])
  jax.block_until_ready(m)
  t = time.perf_counter()
  for s in range(steps):
    state, m = step(state, batches[s % 4])
  jax.block_until_ready(m)
  dt = time.perf_counter() - t
  n_params = sum(p.size for p in jax.tree.leaves(state.params))
  return {"benchmark": "train_throughput", "config": variant or "default",
          "model": config.model.name, "params": int(n_params),
          "image_size": list(config.data.image_size),
          "batch_size": config.batch_size, "steps": steps,
          "images_per_s": round(config.batch_size * steps / dt, 1),
          "device": jax.devices()[0].platform, "devices": jax.device_count()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=30)
  args = parser.parse_args()
  for variant in (None, "resnet18"):
    print(json.dumps(measure(variant, args.steps)), flush=True)


if __name__ == "__main__":
  main()
