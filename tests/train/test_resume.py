"""A run killed part-way and resumed ends where an uninterrupted run ends;
resuming refuses what it cannot continue faithfully."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from lapjax.train import checkpoint, load_state, run_folder, train_and_evaluate
from lapjax.train.loop import KILL_AFTER_CHECKPOINT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STEPS, KILL_AT = 20, 10
FLAGS = [f"--config.num_steps={STEPS}", "--config.checkpoint_every=5",
         "--config.log_every=5", "--noprogress"]


def _train(workdir, *, kill_after=None):
  cmd = [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'configs', 'default.py')}:tiny",
         f"--workdir={workdir}", *FLAGS]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(KILL_AFTER_CHECKPOINT, None)
  if kill_after is not None:
    env[KILL_AFTER_CHECKPOINT] = str(kill_after)
  return subprocess.run(cmd, capture_output=True, text=True, env=env,
                        timeout=600, cwd=ROOT, check=False)


def _leaves(state):
  return jax.tree.leaves((state.params, state.batch_stats, state.opt_state))


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  out = _train(straight)
  assert out.returncode == 0, out.stderr[-3000:]

  # The process kills itself (SIGKILL) right after checkpoint KILL_AT.
  out = _train(interrupted, kill_after=KILL_AT)
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert checkpoint.latest_step(str(interrupted)) == KILL_AT
  # A kill may also leave a line past the checkpoint and one cut short.
  with open(interrupted / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": KILL_AT + 1, "loss": 1.0}) + "\n")
    f.write('{"step": 12, "lo')

  out = _train(interrupted)                 # resumes from KILL_AT
  assert out.returncode == 0, out.stderr[-3000:]
  config = default.get_config("tiny")
  config.num_steps = STEPS
  _, a, _ = load_state(config, str(straight))
  _, b, _ = load_state(config, str(interrupted))
  assert int(a.step) == int(b.step) == STEPS
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The metrics log has one line per logged step, without the killed run's
  # lines past its last checkpoint.
  steps = [json.loads(ln)["step"] for ln in
           (interrupted / "metrics.jsonl").read_text().splitlines()
           if "loss" in ln]
  assert steps == list(range(5, STEPS + 1, 5))


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  """A 4-step tiny run with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("short")
  config = _short_config()
  state = train_and_evaluate(config, str(workdir), progress=False)
  return workdir, state


def _short_config():
  config = default.get_config("tiny")
  config.num_steps = 4
  config.checkpoint_every = 2
  config.log_every = 2
  return config


def _copy(run, tmp_path):
  target = tmp_path / "run"
  shutil.copytree(run, target)
  return target


def test_resuming_with_a_different_config_is_refused(short_run, tmp_path):
  workdir = _copy(short_run[0], tmp_path)
  config = _short_config()
  # Evaluation settings do not change training: resuming keeps the run.
  evaluated_otherwise = copy.deepcopy(config)
  evaluated_otherwise.evaluation.baseline = "blur"
  evaluated_otherwise.on_nonfinite = "skip"
  run_folder.check_resume_config(str(workdir), evaluated_otherwise,
                                 has_checkpoint=True)
  config.optimizer.learning_rate = 0.5
  with pytest.raises(ValueError, match=r"different config.*optimizer"):
    train_and_evaluate(config, str(workdir), progress=False)


def test_a_changed_num_steps_is_refused_unless_the_schedule_is_constant(
    short_run, tmp_path):
  """The warm-up cosine schedule spans num_steps: resuming a 4-step run as
  an 8-step one would jump from the end of one schedule into the middle of
  another."""
  workdir = _copy(short_run[0], tmp_path)
  longer = _short_config()
  longer.num_steps = 8
  with pytest.raises(ValueError, match=r"num_steps 4 -> 8: the learning-rate"
                     " schedule spans num_steps"):
    train_and_evaluate(longer, str(workdir), progress=False)
  saved = json.loads((workdir / "config.json").read_text())
  saved["optimizer"]["schedule"] = "constant"
  (workdir / "config.json").write_text(json.dumps(saved))
  longer.optimizer.schedule = "constant"
  run_folder.check_resume_config(str(workdir), longer, has_checkpoint=True)


def test_checkpoints_without_config_json_are_refused(short_run, tmp_path):
  workdir = _copy(short_run[0], tmp_path)
  (workdir / "config.json").unlink()
  with pytest.raises(ValueError, match="holds checkpoints but no "
                     "config.json"):
    train_and_evaluate(_short_config(), str(workdir), progress=False)



# Reading the damaged checkpoint fails inside Orbax's TensorStore reads;
# TensorStore may then post a callback to the asyncio loop Orbax already
# closed, which Python reports as an unraisable RuntimeError ("Event loop is
# closed") at garbage collection. That is Orbax's clean-up, not lapjax's
# fallback, which the assertions below check.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    short_run, tmp_path):
  workdir = _copy(short_run[0], tmp_path)
  original = short_run[1]
  data = workdir / "checkpoints" / "4" / "default"
  damaged = [p for p in data.rglob("*") if p.is_file()
             and p.parent.name == "d"]
  assert damaged
  for p in damaged:                        # a half-written checkpoint
    p.write_bytes(b"\0" * 16)
  config = _short_config()
  # Evaluation reads the previous checkpoint, and says so.
  with pytest.warns(UserWarning, match="checkpoint step 4 .* cannot be read"
                    ".*falling back to step 2"):
    _, state, _ = load_state(config, str(workdir))
  assert int(state.step) == 2
  # Training resumes from it, sets the damaged one aside and ends where
  # the undamaged run ended.
  with pytest.warns(UserWarning) as warned:
    resumed = train_and_evaluate(config, str(workdir), progress=False)
  messages = " | ".join(str(w.message) for w in warned)
  assert "checkpoint step 4" in messages and "cannot be read" in messages
  assert "resuming from step 2" in messages
  assert int(resumed.step) == 4
  for x, y in zip(_leaves(original), _leaves(resumed)):
    np.testing.assert_array_equal(x, y)
  assert (workdir / "checkpoints-unreadable" / "4").is_dir()
  assert checkpoint.latest_step(str(workdir)) == 4


def test_metrics_log_tolerates_a_truncated_last_line_only(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (2, 4, 6)]
  path.write_text("\n".join(lines) + '\n{"step": 8, "lo')
  run_folder.truncate_metrics(str(path), after_step=4)
  assert path.read_text() == "\n".join(lines[:2]) + "\n"
  path.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
  with pytest.raises(ValueError, match="line 2 is not JSON"):
    run_folder.truncate_metrics(str(path), after_step=4)
