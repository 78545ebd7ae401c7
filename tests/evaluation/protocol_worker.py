"""Run in its own process by test_protocols_sharded.py: the paper
protocols' ``:tiny`` configs on this process's devices, optionally as one
of several processes (tests/multiprocess.py).

  python -m tests.evaluation.protocol_worker OUT [--devices N]
      [--port P --process_id I --num_processes N]

Runs every protocol of ``CASES`` on ``tfds.testing.mock_data`` with its
workdir in ``OUT/<protocol>`` (process 0 writes its ``report.json``).
With ``--port``, ``jax.distributed.initialize`` joins the processes on
localhost with gloo CPU collectives. The test process imports ``CASES``
and ``run_case`` for the one-device reports (nothing here touches jax at
import).
"""

import argparse
import importlib
import os

from tests import multiprocess

# Protocol config: (mock examples, config overrides). One batch of 8 each,
# padded (6 images, 3 grids, 3 composites): 8 devices get one row each.
# One method (Grad-CAM): every method takes the same path. No SIC / AIC:
# it takes the path of the other perturbation scores at twice their cost,
# and a random-weight model's images are all skipped (no value to
# compare).
CASES = {
    "imagenet_faithfulness": (8, {"sic_aic": False}),
    "voc": (8, {}),
    "quad_grid": (16, {"data.num_images": 16}),
    "two_image": (16, {"data.num_images": 16}),
}
BATCH_SIZE = 8
METHODS = ("grad_cam",)


def run_case(name: str, workdir: str) -> dict:
  """``configs/protocols/<name>.py:tiny`` in batches of ``BATCH_SIZE`` on
  mock data; the report."""
  import tensorflow_datasets as tfds

  from lapjax.evaluation import protocols
  examples, overrides = CASES[name]
  config = importlib.import_module(f"configs.protocols.{name}").get_config(
      "tiny")
  config.batch_size = BATCH_SIZE
  config.methods = METHODS
  for field, value in overrides.items():
    *groups, last = field.split(".")
    target = config
    for g in groups:
      target = target[g]
    target[last] = value
  with tfds.testing.mock_data(num_examples=examples):
    return protocols.run_protocol(config, workdir)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  args = multiprocess.worker_arguments(parser)
  multiprocess.join_processes(args)
  for name in CASES:
    run_case(name, os.path.join(args.out, name))
  multiprocess.finish(args)


if __name__ == "__main__":
  main()
