"""Tests in many processes: a worker module run as several processes on
this machine's CPU, joined by ``jax.distributed`` on localhost.

Both sides of the protocol live here. The test calls ``run_workers``,
which starts ``python -m <worker> ... --devices=N [--port=P --process_id=I
--num_processes=K]`` from the repository root, one process each. The
worker calls ``worker_arguments`` before it imports jax (it sets the
simulated device count and the CPU platform), ``join_processes`` to join
the others, and ``finish`` last, which prints the line ``DONE <process
index> <process count> <device count>`` that ``run_workers`` checks.
Nothing here imports jax at import time.
"""

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Mapping

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  """A localhost port nobody listens on now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_workers(worker: str, *args: str, processes: int = 1,
                devices: int = 1, timeout_s: float,
                env: Mapping[str, str] | None = None) -> list[str]:
  """Runs ``python -m worker *args --devices=devices`` as ``processes``
  processes (joined on a free port when more than one), from the
  repository root.

  The workers inherit this process's environment without ``XLA_FLAGS``
  (each sets its own device count), with ``env`` added.

  Returns:
    The workers' standard outputs, by process index.

  Raises:
    Failed (``pytest.fail``): not all ended within ``timeout_s`` (then
      all are killed).
    AssertionError: one failed (its output and the end of its standard
      error in the message) or did not print its ``DONE`` line.
  """
  cmd = [sys.executable, "-m", worker, *args, f"--devices={devices}"]
  port = free_port()
  cmds = [cmd + ([f"--port={port}", f"--process_id={i}",
                  f"--num_processes={processes}"] if processes > 1 else [])
          for i in range(processes)]
  worker_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  worker_env.update(env or {})
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=worker_env) for c in cmds]
  try:
    outs = [p.communicate(timeout=timeout_s) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.communicate()
    pytest.fail(f"{worker} {' '.join(args)} in {processes} processes did "
                f"not end within {timeout_s} s")
  for i, (p, (stdout, stderr)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}:\n{stdout}\n{stderr[-4000:]}"
    assert f"DONE {i} {processes} {devices * processes}" in stdout, stdout
  return [stdout for stdout, _ in outs]


def worker_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
  """The worker's command line (``parser``'s arguments and those of
  ``run_workers``); points jax, not yet imported, at ``--devices``
  simulated CPU devices.

  Raises:
    RuntimeError: jax is imported already (the device count is read once,
      when its backend starts).
  """
  if "jax" in sys.modules:
    raise RuntimeError("worker_arguments must run before jax is imported")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--port", type=int)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count="
                             f"{args.devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  return args


def join_processes(args: argparse.Namespace) -> None:
  """With ``--port``, joins the other processes (``jax.distributed`` on
  localhost, gloo CPU collectives) and makes the devices' communicator."""
  if args.port is None:
    return
  import jax
  from jax.experimental import multihost_utils
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{args.port}",
      num_processes=args.num_processes, process_id=args.process_id,
      initialization_timeout=120)
  # The processes are in step here (initialize waits for all): make the
  # gloo communicator of the devices now. Its rendezvous waits 30 s at
  # most, and later, on a loaded machine, one process's compilation may
  # run that much longer than the other's before the first collective.
  multihost_utils.sync_global_devices("join_processes")


def finish(args: argparse.Namespace) -> None:
  """Prints the ``DONE`` line ``run_workers`` checks; with ``--port``,
  leaves ``jax.distributed``."""
  import jax
  print("DONE", jax.process_index(), jax.process_count(), jax.device_count(),
        flush=True)
  if args.port is not None:
    jax.distributed.shutdown()


def assert_reports_close(got, expect, path: str = "report") -> None:
  """Equal structure and counts; floats within 1e-6 (reduction order);
  the ``devices`` entries (which differ by design) are not compared."""
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
