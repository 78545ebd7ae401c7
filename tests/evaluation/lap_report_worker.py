"""Run in its own process by test_lap_report_sharded.py: the LAP report
section of a detached-LAP model on this process's devices, optionally as
one of several processes.

  python -m tests.evaluation.lap_report_worker RUN WORKDIR [--devices N]
      [--port P --process_id I --num_processes N]

``RUN`` is a trained ``configs/default.py:tiny`` run (the backbone);
the section's state lives in ``WORKDIR/eval`` and process 0 writes the
report to ``WORKDIR/lap_report.json``. The test process imports ``run``
for the one-device report (nothing here touches jax at import).

The tiny run classifies almost no clue image right (1 of the 48 in the
test split, none in the validation split), so the section scores every
clue image here (the predictions are still computed on the mesh, and
reported): every score, the learned thresholds and the paired tests have
values to compare.
"""

import argparse
import os
from unittest import mock

from tests import multiprocess

# Test images in three batches of 8 (8, 8, 4 padded), validation images in
# two (8, 4 padded): 8 devices get one row each. Grad-CAM and the LAP maps
# (lap, lap1, lap2).
EVALUATION = {"methods": ("grad_cam",), "lap_images": 20,
              "lap_val_images": 12, "batch_size": 8}
REPORT = "lap_report.json"


def run(run_dir: str, workdir: str, *, save_every: int = 20,
        test_source=None) -> dict:
  """The section of ``configs/lap.py:lap_detached,multi,tiny`` initialised
  from ``run_dir`` (key 0), with ``EVALUATION``, resumable from (and
  saving every ``save_every`` batches to) ``workdir/eval``; process 0
  writes the report to ``workdir/REPORT``. ``test_source`` replaces the
  config's test split (same images)."""
  import jax
  import numpy as np

  from lapjax.evaluation import lap_report, streaming
  from lapjax.train import run_folder
  from tests.evaluation import detached_lap

  lap = detached_lap.build(run_dir)
  evaluation = {**EVALUATION, "save_every": save_every}
  settings = lap.config.evaluation.copy_and_resolve_references()
  settings.update(evaluation)
  eval_state = streaming.EvaluationState(
      os.path.join(workdir, "eval"), {"evaluation": settings.to_dict()})
  eval_state.restore()
  correct = lap_report._correct_clue_images

  def every_clue_image(clf, batch, dcs):
    _, pred = correct(clf, batch, dcs)
    return np.flatnonzero(batch["label"] != dcs.bgo), pred

  with mock.patch.object(lap_report, "_correct_clue_images",
                         every_clue_image):
    report = lap.lap_evaluation(test=test_source, state=eval_state,
                                **evaluation)
  if jax.process_index() == 0:
    run_folder.atomic_write(os.path.join(workdir, REPORT),
                            run_folder.dumps(report, indent=1))
  eval_state.remove()
  return report


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("run_dir")
  parser.add_argument("workdir")
  args = multiprocess.worker_arguments(parser)
  multiprocess.join_processes(args)
  run(args.run_dir, args.workdir)
  multiprocess.finish(args)


if __name__ == "__main__":
  main()
