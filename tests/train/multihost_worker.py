"""Run in its own process by test_multihost.py: evaluates or trains the tiny
run on this process's devices, optionally as one of several processes.

  python multihost_worker.py evaluate|train WORKDIR OUT
      [--devices N] [--port P --process_id I --num_processes N]

``evaluate`` writes the report (process 0) as JSON to OUT; ``train`` trains
``configs/default.py:tiny`` with ``config.multihost=True`` (checkpoints in
WORKDIR). With ``--port``, ``jax.distributed.initialize`` joins the
processes on localhost with gloo CPU collectives.
"""

import argparse
import os
import sys

PARSER = argparse.ArgumentParser()
PARSER.add_argument("mode", choices=("evaluate", "train"))
PARSER.add_argument("workdir")
PARSER.add_argument("out")
PARSER.add_argument("--devices", type=int, default=1)
PARSER.add_argument("--port", type=int)
PARSER.add_argument("--process_id", type=int, default=0)
PARSER.add_argument("--num_processes", type=int, default=1)
ARGS = PARSER.parse_args()

os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count="
                           f"{ARGS.devices}")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

import jax  # noqa: E402

from tests.train import multihost_config  # noqa: E402


def main():
  if ARGS.port is not None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{ARGS.port}",
        num_processes=ARGS.num_processes, process_id=ARGS.process_id,
        initialization_timeout=120)
  if ARGS.mode == "train":
    from lapjax.train import train_and_evaluate
    config = multihost_config.train_config()
    config.multihost = True
    train_and_evaluate(config, ARGS.workdir, progress=False)
  else:
    from lapjax.evaluation.evaluate import evaluate
    from lapjax.train import run_folder
    report = evaluate(multihost_config.evaluation_config(), ARGS.workdir)
    if jax.process_index() == 0:
      with open(ARGS.out, "w") as f:
        f.write(run_folder.dumps(report))
  print("DONE", jax.process_index(), jax.process_count(), jax.device_count(),
        flush=True)
  if ARGS.port is not None:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
