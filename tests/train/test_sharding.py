"""Sharded (8 simulated CPU devices) vs single-device training."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_eight_device_steps_equal_single_device_steps(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(HERE, "sharded_equivalence.py"),
       str(tmp_path / "run")],
      capture_output=True, text=True, timeout=600, check=False)
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
  assert lines, out.stdout + out.stderr
  r = json.loads(lines[0][len("RESULT "):])
  assert r["devices"] == 8
  assert r["batch_devices"] == 8 and r["batch_shard_rows"] == 2  # 16 / 8
  assert r["param_change"] > 1e-3          # the steps really trained
  assert r["loss_diff"] <= 1e-5
  assert r["param_diff"] <= 1e-5
  assert r["stats_diff"] <= 1e-5
  assert "batch_size=12 is not divisible by the 8 devices" in (
      r["indivisible_error"])
