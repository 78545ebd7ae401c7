"""A streaming evaluation killed part-way (SIGKILL) resumes from its saved
state and ends with the report of an uninterrupted one; a resume with other
settings is refused, naming them."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from configs import default
from lapjax.evaluation.evaluate import evaluate
from lapjax.evaluation.streaming import KILL_AFTER_SAVE
from lapjax.train import run_folder

# XLA's optimisations on, as users run (without them XLA:CPU returns NaN
# for vmapped VJPs through max pooling: docs/xla-noopt-nan.md).
pytestmark = pytest.mark.xla_optimized
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# 64 test images: 2 classification batches of 32 (one save), then 8
# explanation batches of 8 with a save every 2: saves 2 to 5. A stochastic
# gradient method (SmoothGrad's noise key per batch must resume) and a CAM.
EVALUATION = {"methods": ("smoothgrad", "grad_cam"),
              "sanity_methods": (), "num_images": 64, "batch_size": 8,
              "save_every": 2, "faithfulness_images": 4,
              "figure_images": 2}
KILL_AFTER = 3          # after explanation batch 4 of 8


def _config():
  config = default.get_config("tiny")
  config.evaluation.update(EVALUATION)
  return config


def _evaluate_killed(workdir):
  """evaluate.py in a subprocess that kills itself after save
  KILL_AFTER."""
  flags = [f"--config.evaluation.{k}={v!r}" if isinstance(v, tuple)
           else f"--config.evaluation.{k}={v}" for k, v in EVALUATION.items()]
  cmd = [sys.executable, os.path.join(ROOT, "evaluate.py"),
         f"--config={os.path.join(ROOT, 'configs', 'default.py')}:tiny",
         f"--workdir={workdir}", "--noprogress", *flags]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             **{KILL_AFTER_SAVE: str(KILL_AFTER)})
  return subprocess.run(cmd, capture_output=True, text=True, env=env,
                        timeout=600, cwd=ROOT, check=False)


def test_killed_evaluation_resumes_to_the_uninterrupted_report(tiny_run_dir,
                                                              tmp_path):
  workdir = shutil.copytree(tiny_run_dir, tmp_path / "run")
  straight = json.loads(run_folder.dumps(evaluate(_config(), str(workdir))))
  assert not (workdir / "eval" / "state.npz").exists()

  out = _evaluate_killed(workdir)
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert (workdir / "eval" / "state.npz").exists()

  other = _config()
  other.evaluation.methods = ("gradient", "grad_cam")
  other.evaluation.batch_size = 16
  with pytest.raises(ValueError, match=r"holds an unfinished evaluation "
                     r"with other settings \(fields \['evaluation.batch_size"
                     r"', 'evaluation.methods'\] differ\)"):
    evaluate(other, str(workdir))

  resumed = json.loads(run_folder.dumps(evaluate(_config(), str(workdir))))
  assert resumed == straight
  assert not (workdir / "eval" / "state.npz").exists()
