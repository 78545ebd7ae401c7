"""Run in its own process by test_multihost.py: evaluates or trains the tiny
run on this process's devices, optionally as one of several processes
(tests/multiprocess.py).

  python -m tests.train.multihost_worker evaluate|train WORKDIR OUT
      [--devices N] [--port P --process_id I --num_processes N]

``evaluate`` writes the report (process 0) as JSON to OUT; ``train`` trains
``configs/default.py:tiny`` with ``config.multihost=True`` (checkpoints in
WORKDIR). With ``--port``, ``jax.distributed.initialize`` joins the
processes on localhost with gloo CPU collectives.
"""

import argparse

from tests import multiprocess


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=("evaluate", "train"))
  parser.add_argument("workdir")
  parser.add_argument("out")
  args = multiprocess.worker_arguments(parser)
  import jax

  from tests.train import multihost_config
  multiprocess.join_processes(args)
  if args.mode == "train":
    from lapjax.train import train_and_evaluate
    config = multihost_config.train_config()
    config.multihost = True
    train_and_evaluate(config, args.workdir, progress=False)
  else:
    from lapjax.evaluation.evaluate import evaluate
    from lapjax.train import run_folder
    report = evaluate(multihost_config.evaluation_config(), args.workdir)
    if jax.process_index() == 0:
      with open(args.out, "w") as f:
        f.write(run_folder.dumps(report))
  multiprocess.finish(args)


if __name__ == "__main__":
  main()
