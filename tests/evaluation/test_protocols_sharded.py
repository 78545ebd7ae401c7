"""The paper protocols on many devices and many processes report what one
device reports: every protocol's ``:tiny`` config (faithfulness with SIC /
AIC, multi-label VOC localisation, quad grids, two-image composites; one
padded batch each) on 8 simulated CPU devices and in two processes on
localhost (``jax.distributed`` with gloo collectives), against this
process on one device."""

import json
import os

import jax
import pytest

from tests.evaluation import protocol_worker
from tests.multiprocess import assert_reports_close, run_workers

TIMEOUT_S = 300          # every worker is killed after this


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


@pytest.mark.parametrize(("processes", "devices"), [(1, 8), (2, 1)],
                         ids=["eight_devices", "two_processes"])
def test_many_devices_give_the_one_device_reports(one_device, tmp_path,
                                                  processes, devices):
  run_workers(
      "tests.evaluation.protocol_worker", str(tmp_path), processes=processes,
      devices=devices, timeout_s=TIMEOUT_S,
      # The workers compile in this process's XLA mode (conftest.py: the
      # fast one; Grad-CAM has no vmapped VJP through max pooling, where
      # it errs).
      env={"JAX_DISABLE_MOST_OPTIMIZATIONS": str(
          jax.config.read("jax_disable_most_optimizations"))})
  got = _reports(tmp_path)
  for name, expect in one_device.items():
    assert got[name]["devices"] == {"devices": processes * devices,
                                    "processes": processes}, name
    assert_reports_close(got[name], expect, name)
    # The state was removed (process 0) once the report was written.
    assert not os.path.exists(tmp_path / name / "eval" / "state.npz")
