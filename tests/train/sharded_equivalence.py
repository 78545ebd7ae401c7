"""Run in its own process with 8 simulated CPU devices (see test_sharding).

Trains a few SGD steps of the tiny config on a mesh of 8 devices and on a
mesh of 1 device from the same state and batches; prints the largest
differences of the losses and parameters as JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from lapjax.data import batching, sources  # noqa: E402
from lapjax.models import create_model  # noqa: E402
from lapjax.train import sharding  # noqa: E402
from lapjax.train.loop import (  # noqa: E402
  make_optimizer,
  make_train_step,
  train_and_evaluate,
)
from lapjax.train.state import create_train_state  # noqa: E402


def main():
  config = default.get_config("tiny")
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  source, info = sources.make_source(config.data, "train")
  model = create_model(config.model.name, num_classes=info["num_classes"],
                       **config.model.kwargs)
  tx, _ = make_optimizer(config)
  results = {"devices": jax.device_count()}
  runs = {}
  for name, devices in (("eight", jax.devices()), ("one", jax.devices()[:1])):
    mesh = sharding.make_mesh(devices)
    state = create_train_state(model, tx, jax.random.key(0),
                               info["image_shape"])
    state = jax.device_put(state, sharding.replicated(mesh))
    step = make_train_step(model, tx, mesh)
    losses = []
    for s in range(4):
      batch = batching.train_batch(source, config.batch_size, s, 0)
      arrays = sharding.shard_batch(
          {"image": batch["image"], "label": batch["label"]}, mesh)
      if name == "eight" and s == 0:
        results["batch_devices"] = len(arrays["image"].sharding.device_set)
        results["batch_shard_rows"] = arrays["image"].addressable_shards[
            0].data.shape[0]
      state, metrics = step(state, arrays)
      losses.append(float(metrics["loss"]))
    runs[name] = (np.array(losses), jax.device_get(state))
  (l8, s8), (l1, s1) = runs["eight"], runs["one"]
  results["loss_diff"] = float(np.abs(l8 - l1).max())
  results["param_diff"] = max(
      float(np.abs(a - b).max())
      for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)))
  results["stats_diff"] = max(
      float(np.abs(a - b).max()) for a, b in zip(
          jax.tree.leaves(s8.batch_stats), jax.tree.leaves(s1.batch_stats)))
  results["param_change"] = max(
      float(np.abs(a - b).max()) for a, b in zip(
          jax.tree.leaves(s8.params), jax.tree.leaves(create_train_state(
              model, tx, jax.random.key(0), info["image_shape"]).params)))
  config.batch_size = 12
  try:
    train_and_evaluate(config, sys.argv[1], progress=False)
    results["indivisible_error"] = None
  except ValueError as e:
    results["indivisible_error"] = str(e)
  print("RESULT " + json.dumps(results))


if __name__ == "__main__":
  main()
