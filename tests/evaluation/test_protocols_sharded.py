"""The paper protocols on many devices and many processes report what one
device reports: every protocol's ``:tiny`` config (faithfulness with SIC /
AIC, multi-label VOC localisation, quad grids, two-image composites; one
padded batch each) on 8 simulated CPU devices and in two processes on
localhost (``jax.distributed`` with gloo collectives), against this
process on one device."""

import json
import os
import subprocess
import sys

import jax
import pytest

from tests.evaluation import protocol_worker
from tests.train.test_multihost import assert_reports_close, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_S = 300          # every worker is killed after this


def _workers(out, *, processes=1, devices=1):
  """Runs ``protocol_worker.py`` as ``processes`` processes (joined on a
  free port when more than one); fails with their output unless all end
  well within ``TIMEOUT_S``."""
  cmd = [sys.executable, os.path.join(HERE, "protocol_worker.py"), str(out),
         f"--devices={devices}"]
  port = free_port()
  cmds = [cmd + ([f"--port={port}", f"--process_id={i}",
                  f"--num_processes={processes}"] if processes > 1 else [])
          for i in range(processes)]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # The workers compile in this process's XLA mode (conftest.py: the fast
  # one; Grad-CAM has no vmapped VJP through max pooling, where it errs).
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = str(
      jax.config.read("jax_disable_most_optimizations"))
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            cwd=protocol_worker.ROOT, env=env) for c in cmds]
  try:
    outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.communicate()
    pytest.fail(f"the protocols in {processes} processes did not end "
                f"within {TIMEOUT_S} s")
  for i, (p, (stdout, stderr)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}:\n{stdout}\n{stderr[-4000:]}"
    assert f"DONE {i} {processes} {devices * processes}" in stdout, stdout


def _reports(out) -> dict[str, dict]:
  """Each protocol's report.json under ``out``, without its workdir."""
  reports = {}
  for name in protocol_worker.CASES:
    with open(os.path.join(out, name, "report.json")) as f:
      reports[name] = json.load(f)
    reports[name].pop("workdir")
  return reports


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  """Every case run in this process, on one device."""
  assert jax.device_count() == 1
  out = tmp_path_factory.mktemp("one")
  for name in protocol_worker.CASES:
    report = protocol_worker.run_case(name, str(out / name))
    assert report["devices"] == {"devices": 1, "processes": 1}
  return _reports(out)


def test_eight_devices_give_the_one_device_reports(one_device, tmp_path):
  _workers(tmp_path, devices=8)
  got = _reports(tmp_path)
  for name, expect in one_device.items():
    assert got[name]["devices"] == {"devices": 8, "processes": 1}, name
    assert_reports_close(got[name], expect, name)


def test_two_processes_give_the_one_process_reports(one_device, tmp_path):
  _workers(tmp_path, processes=2)
  got = _reports(tmp_path)
  for name, expect in one_device.items():
    assert got[name]["devices"] == {"devices": 2, "processes": 2}, name
    assert_reports_close(got[name], expect, name)
    # The state was removed (process 0) once the report was written.
    assert not os.path.exists(tmp_path / name / "eval" / "state.npz")
