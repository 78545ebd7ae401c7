"""A run killed part-way and resumed ends where an uninterrupted run ends."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import default
from lapjax.train import checkpoint, load_state, loop, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STEPS = 150
FLAGS = ["--config.num_steps=150", "--config.checkpoint_every=5",
         "--config.log_every=5", "--noprogress"]


def _train(workdir, *, wait=True):
  cmd = [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'configs', 'default.py')}:tiny",
         f"--workdir={workdir}", *FLAGS]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if wait:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         timeout=600, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out
  return subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env, cwd=ROOT)


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  _train(straight)

  proc = _train(interrupted, wait=False)
  deadline = time.time() + 300
  ckpt_dir = interrupted / "checkpoints"
  while time.time() < deadline:
    steps = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()] \
        if ckpt_dir.exists() else []
    if steps and max(steps) >= 10:
      proc.send_signal(signal.SIGKILL)
      break
    assert proc.poll() is None, "training ended before it could be killed"
    time.sleep(0.02)
  proc.wait()
  killed_at = checkpoint.latest_step(str(interrupted))
  assert killed_at is not None and 10 <= killed_at < STEPS

  _train(interrupted)                       # resumes from killed_at
  config = default.get_config("tiny")
  config.num_steps = STEPS
  _, a, _ = load_state(config, str(straight))
  _, b, _ = load_state(config, str(interrupted))
  assert int(a.step) == int(b.step) == STEPS
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats, a.opt_state)),
                  jax.tree.leaves((b.params, b.batch_stats, b.opt_state))):
    np.testing.assert_array_equal(x, y)
  # The metrics log has one line per logged step, without the killed run's
  # lines past its last checkpoint.
  steps = [json.loads(ln)["step"] for ln in
           (interrupted / "metrics.jsonl").read_text().splitlines()
           if "loss" in ln]
  assert steps == list(range(5, STEPS + 1, 5))


def test_resuming_with_a_different_config_is_refused(tmp_path):
  config = default.get_config("tiny")
  config.num_steps = 2
  train_and_evaluate(config, str(tmp_path), progress=False)
  # Evaluation settings do not change training: resuming keeps the run.
  evaluated_otherwise = copy.deepcopy(config)
  evaluated_otherwise.evaluation.baseline = "blur"
  evaluated_otherwise.num_steps = 3
  loop._check_resume_config(str(tmp_path), evaluated_otherwise)
  config.optimizer.learning_rate = 0.5
  with pytest.raises(ValueError, match=r"different config.*optimizer"):
    train_and_evaluate(config, str(tmp_path), progress=False)
