"""Many devices and many processes compute what one device computes: the
streaming evaluation on 8 simulated CPU devices and in two processes on
localhost (``jax.distributed`` with gloo collectives), and training in two
processes (``config.multihost``), against one process on one device."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import default
from lapjax.evaluation.evaluate import evaluate
from lapjax.train import load_state, run_folder
from tests.multiprocess import assert_reports_close, run_workers
from tests.train import multihost_config

# XLA's optimisations on, as users run (without them XLA:CPU returns NaN
# for vmapped VJPs through max pooling: docs/xla-noopt-nan.md).
pytestmark = pytest.mark.xla_optimized
WORKER = "tests.train.multihost_worker"
TIMEOUT_S = 600          # every subprocess is killed after this


def _workers(mode, workdir, out, *, processes=1, devices=1):
  """``multihost_worker.py`` run as ``processes`` processes with
  ``devices`` devices each (``run_workers``)."""
  run_workers(WORKER, mode, str(workdir), str(out), processes=processes,
              devices=devices, timeout_s=TIMEOUT_S)


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
