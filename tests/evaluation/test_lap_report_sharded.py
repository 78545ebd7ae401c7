"""The LAP report section on many devices and many processes reports what
one device reports, and an interrupted section resumes to the report of
an uninterrupted one: a detached-LAP model on the tiny run's backbone
(``lap_report_worker``: Grad-CAM and the LAP maps, three padded test
batches, two validation batches) on 8 simulated CPU devices and as two
processes on localhost (``jax.distributed`` with gloo collectives),
against this process on one device."""

import json
import os

import jax
import numpy as np
import pytest

from lapjax.evaluation import lap_report
from lapjax.train import run_folder
from tests import multiprocess
from tests.evaluation import lap_report_worker

WORKER = "tests.evaluation.lap_report_worker"
TIMEOUT_S = 300          # every worker is killed after this


def _plain(report: dict) -> dict:
  """The report as its JSON file holds it."""
  return json.loads(run_folder.dumps(report))


@pytest.fixture(scope="module")
def one_device(tiny_run_dir, tmp_path_factory) -> dict:
  """The section in this process, on one device."""
  assert jax.device_count() == 1
  report = lap_report_worker.run(str(tiny_run_dir),
                                 str(tmp_path_factory.mktemp("one")))
  # Something to compare: images scored, LAP tested against Grad-CAM.
  assert report["n_images"] >= 2
  assert "grad_cam" in report["significance"]["scores"]["srg"]
  return _plain(report)


def _sharded(run_dir, workdir, **placement) -> dict:
  """The report of the workers placed as ``placement`` (``devices``,
  ``processes``); the state removed by process 0 at the end."""
  multiprocess.run_workers(
      WORKER, str(run_dir), str(workdir), timeout_s=TIMEOUT_S,
      # The workers compile in this process's XLA mode (conftest.py).
      env={"JAX_DISABLE_MOST_OPTIMIZATIONS": str(
          jax.config.read("jax_disable_most_optimizations"))},
      **placement)
  assert not os.path.exists(os.path.join(workdir, "eval", "state.npz"))
  with open(os.path.join(workdir, lap_report_worker.REPORT)) as f:
    return json.load(f)


def test_eight_devices_give_the_one_device_report(one_device, tiny_run_dir,
                                                  tmp_path):
  got = _sharded(tiny_run_dir, tmp_path, devices=8)
  multiprocess.assert_reports_close(got, one_device)


def test_two_processes_give_the_one_process_report(one_device, tiny_run_dir,
                                                   tmp_path):
  got = _sharded(tiny_run_dir, tmp_path, processes=2)
  multiprocess.assert_reports_close(got, one_device)


class _Interrupted(Exception):
  pass


class _CountingSource:
  """A data source that counts its ``get`` calls and fails on call
  ``fail_at`` (never when 0)."""

  def __init__(self, source, fail_at: int = 0):
    self.source, self.fail_at, self.calls = source, fail_at, 0
    self.num_examples = source.num_examples

  def get(self, indices):
    self.calls += 1
    if self.calls == self.fail_at:
      raise _Interrupted
    return self.source.get(indices)


def test_an_interrupted_section_resumes_to_the_same_report(
    one_device, tiny_run_dir, tmp_path):
  from configs import lap as lap_configs
  from lapjax.data import sources

  test, _ = sources.make_source(
      lap_configs.get_config("lap_detached,multi,tiny").data, "test")
  # get 1 reads the first image; gets 2 and 3 the test batches 0 and 1
  # (a state saved after each); get 4, batch 2, fails.
  with pytest.raises(_Interrupted):
    lap_report_worker.run(str(tiny_run_dir), str(tmp_path), save_every=1,
                          test_source=_CountingSource(test, fail_at=4))
  with np.load(tmp_path / "eval" / "state.npz") as f:
    assert json.loads(str(f["meta"]))["next_batch"] == {lap_report.PHASE: 2}
    assert "array/lap/val/threshold/grad_cam" in f.files
  counting = _CountingSource(test)
  resumed = lap_report_worker.run(str(tiny_run_dir), str(tmp_path),
                                  save_every=1, test_source=counting)
  assert counting.calls == 2               # the first image, batch 2
  np.testing.assert_equal(_plain(resumed), one_device)        # exactly
  assert not os.path.exists(tmp_path / "eval" / "state.npz")
