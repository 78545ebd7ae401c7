"""Many devices and many processes compute what one device computes: the
streaming evaluation on 8 simulated CPU devices and in two processes on
localhost (``jax.distributed`` with gloo collectives), and training in two
processes (``config.multihost``), against one process on one device."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from lapjax.evaluation.evaluate import evaluate
from lapjax.train import load_state, run_folder
from tests.train import multihost_config

# XLA's optimisations on, as users run (without them XLA:CPU returns NaN
# for vmapped VJPs through max pooling: docs/xla-noopt-nan.md).
pytestmark = pytest.mark.xla_optimized
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TIMEOUT_S = 600          # every subprocess is killed after this


def free_port() -> int:
  """A localhost port nobody listens on now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _workers(mode, workdir, out, *, processes=1, devices=1):
  """Runs ``multihost_worker.py`` as ``processes`` processes (joined on a
  free port when more than one); fails with their output unless all end
  well within ``TIMEOUT_S``."""
  cmd = [sys.executable, os.path.join(HERE, "multihost_worker.py"), mode,
         str(workdir), str(out), f"--devices={devices}"]
  port = free_port()
  cmds = [cmd + ([f"--port={port}", f"--process_id={i}",
                  f"--num_processes={processes}"] if processes > 1 else [])
          for i in range(processes)]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env) for c in cmds]
  try:
    outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.communicate()
    pytest.fail(f"{mode} in {processes} processes did not end within "
                f"{TIMEOUT_S} s")
  for i, (p, (stdout, stderr)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}:\n{stdout}\n{stderr[-4000:]}"
    assert f"DONE {i} {processes} {devices * processes}" in stdout, stdout


def assert_reports_close(got, expect, path="report"):
  """Equal structure and counts; floats within 1e-6 (reduction order)."""
  if isinstance(expect, dict):
    assert set(got) == set(expect), path
    for k in expect:
      if k != "devices":
        assert_reports_close(got[k], expect[k], f"{path}.{k}")
  elif isinstance(expect, list):
    assert len(got) == len(expect), path
    for i, (a, b) in enumerate(zip(got, expect)):
      assert_reports_close(a, b, f"{path}[{i}]")
  elif isinstance(expect, float):
    assert got == pytest.approx(expect, abs=1e-6), path
  else:
    assert got == expect, path


@pytest.fixture(scope="module")
def one_process(tiny_run_dir, tmp_path_factory):
  """The tiny run (trained in one process on one device, conftest.py)
  evaluated in this process."""
  assert multihost_config.train_config() == default.get_config("tiny")
  workdir = shutil.copytree(tiny_run_dir, tmp_path_factory.mktemp("o") / "r")
  _, state, _ = load_state(multihost_config.train_config(), str(workdir))
  report = evaluate(multihost_config.evaluation_config(), str(workdir))
  assert report["devices"] == {"devices": 1, "processes": 1}
  return workdir, state, json.loads(run_folder.dumps(report))


def test_eight_devices_give_the_one_device_report(one_process, tmp_path):
  workdir, _, expect = one_process
  out = tmp_path / "report.json"
  _workers("evaluate", workdir, out, devices=8)
  got = json.loads(out.read_text())
  assert got["devices"] == {"devices": 8, "processes": 1}
  assert_reports_close(got, expect)


def test_two_processes_give_the_one_process_report(one_process, tmp_path):
  workdir, _, expect = one_process
  out = tmp_path / "report.json"
  (workdir / "report.json").unlink()
  _workers("evaluate", workdir, out, processes=2)
  got = json.loads(out.read_text())
  assert got["devices"] == {"devices": 2, "processes": 2}
  assert_reports_close(got, expect)
  # Process 0 alone wrote the run folder's report.
  assert json.loads((workdir / "report.json").read_text()) == got


def test_two_processes_train_the_one_process_parameters(one_process,
                                                        tmp_path):
  _, state, _ = one_process
  workdir = tmp_path / "two"
  _workers("train", workdir, tmp_path / "unused", processes=2)
  _, two, _ = load_state(multihost_config.train_config(), str(workdir))
  assert int(two.step) == int(state.step)
  for a, b in zip(jax.tree.leaves((state.params, state.batch_stats)),
                  jax.tree.leaves((two.params, two.batch_stats))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  # One metrics line per logged step and the final validation line: no
  # process but 0 wrote (or truncated) metrics.jsonl.
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  config = multihost_config.train_config()
  logged = list(range(config.log_every, config.num_steps + 1,
                      config.log_every))
  if logged[-1] != config.num_steps:
    logged.append(config.num_steps)
  assert [json.loads(ln)["step"] for ln in lines] == [*logged,
                                                      config.num_steps]
