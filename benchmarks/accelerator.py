r"""The accelerator benchmark: every speed figure the CPU could not settle,
in one command.

  python benchmarks/accelerator.py            # on a GPU / TPU machine
  python benchmarks/accelerator.py --small    # anywhere: shrunk, CPU-sized
  python benchmarks/accelerator.py --budget 590   # one 10-minute call
  python benchmarks/accelerator.py --only lap,sloc  # the rows not reached

Run from a checkout of the repository. It first makes sure that lapjax's
dependencies import, installing the repository (``pip install -e .``) only
if one is missing (nothing else; no internet is needed when they are
there), then runs these sections, most important first, each a benchmark
script of this folder in its own process (or a few, its parts) with a time
limit:

1. ``vs_pytorch``: the side-by-side table (``vs_pytorch.py --row-by-row``,
   ResNet-50 at 224x224, batch 4; forward, gradient, Grad-CAM, LRP,
   integrated gradients, occlusion, in that order) against PyTorch on the
   same device when a Python with torch (``--torch-python``; default
   ``$LAPJAX_TORCH_PYTHON`` or this Python) sees CUDA, else lapjax alone
   with its floors;
2. ``batching``: batch of 64 against one image at a time, per image
   (``attribution.py --sections batching``: the >= 3x per-image bar);
3. ``lap``: the LAP training-step cost on ResNet-50 (``lap.py --model
   resnet50 --steps-only``), in two parts: the paper's 4-LAP step with
   the vanilla step, then the 2-LAP step with the vanilla step;
4. ``sloc``: one SLOC explanation against the forward passes it needs
   (``sloc.py --sections whole``);
5. ``eval_throughput``: streaming evaluation, Grad-CAM with every
   localisation metric (``eval_throughput.py``), at batch 32 and 512;
6. ``transformer``: attention rollout and GAE against one forward (and
   backward) pass, and the Attribution Lens with C' = 4 around GAE against
   one GAE call, on ViT-B/16 at 224x224, batch 8 (``transformer.py``:
   the lens bar <= 1.5x one GAE call needs its C' backward passes to run
   side by side, which a CPU cannot do).

On a fresh accelerator compiling the ResNet-50 programs, not running them,
takes most of the time (the first H200 lease: no row from ``vs_pytorch``
in 104 s, ``lap`` in 146 s, ``sloc`` in 45 s). So:

* each section's output is echoed line by line as it comes (a section
  stopped at its limit keeps every row it printed, and so does a run
  whose own command is killed), and ``vs_pytorch`` prints each method's
  row as soon as its rounds end (``--row-by-row``), each row with each
  side's first call (compilation included) beside the medians;
* the time limits follow the cold-GPU cost of each section (``SHARE``,
  seconds measured or estimated on the H200) and are re-shared over what
  is left before each section starts, so a section that ends early leaves
  its time to the next ones; a section is started only with at least its
  ``MINIMUM`` seconds (its compilations) left;
* every section's summary line gives its status, its seconds, the seconds
  until its first row (set-up and compilation, mostly) and the rows it
  printed; the last lines list, per section, the expected rows that were
  not reached (``not_reached``; empty: every row printed);
* JAX's persistent compilation cache (``--compile-cache``, a directory
  kept between runs on the same machine) lets a second call, e.g.
  ``--only`` the sections not reached, skip the compilations of the
  first (the vanilla ResNet-50 step of both ``lap`` parts is compiled
  once).

``--budget`` (default 8 minutes) is shared among the sections selected;
the first lease showed that a cold H200 needs about 10 minutes for all of
them (``sum(SHARE)``: ``--budget 590``, or two calls with ``--only``).
``--small`` shrinks every section (the default CNN at 64x64 or 32x32,
small batches, one repetition) and gives each section 10 minutes instead
of a share, so that the script runs end to end on a CPU: it proves the
script works, its numbers mean nothing. Each section's stderr goes to a
log file (``--log-dir``), whose last lines are printed when the section
fails or is stopped.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDED = ("jax", "flax", "optax", "orbax.checkpoint", "chex", "numpy",
          "ml_collections", "safetensors", "skimage", "scipy", "tqdm")
BUDGET_S = 8 * 60
SMALL_LIMIT_S = 600  # per section with --small (a CPU)
# Seconds each section needs on a cold H200 (compilation included): the
# first lease's run (batching 38 s; transformer 122 s; eval_throughput
# printed its row within 37 s, now 60 for two batch sizes) and lower
# bounds where it printed no row (vs_pytorch > 104 s, lap > 146 s, sloc
# > 45 s), rounded up. The limits share the budget in these proportions.
SHARE = {"vs_pytorch": 150, "batching": 45, "lap": 150, "sloc": 60,
         "eval_throughput": 60, "transformer": 125}
# Below this many seconds left a section is not started: about what its
# first row needs on a cold device.
MINIMUM = {"vs_pytorch": 60, "batching": 30, "lap": 90, "sloc": 45,
           "eval_throughput": 30, "transformer": 60}
VS_METHODS = ("forward", "gradient", "grad_cam", "lrp",
              "integrated_gradients", "occlusion")
BATCHING_METHODS = ("gradient", "input_x_gradient", "integrated_gradients",
                    "smoothgrad", "guided_backprop", "grad_cam",
                    "grad_cam_plus_plus", "layer_cam", "guided_grad_cam",
                    "score_cam", "occlusion", "rise", "lafam", "relax")

Row = tuple[str, Callable[[dict], bool]]  # (label, does a JSON line match)


class Part(NamedTuple):
  """One process of a section and the rows it should print."""
  label: str
  argv: list[str]
  rows: tuple[Row, ...]


class Section(NamedTuple):
  name: str
  parts: tuple[Part, ...]


def _missing_modules() -> list[str]:
  return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def ensure_installed() -> None:
  """``pip install -e <repo>`` when a dependency does not import."""
  missing = _missing_modules()
  if not missing:
    return
  print(json.dumps({"installing": missing}), flush=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ROOT],
                 check=True)
  still = _missing_modules()
  if still:
    raise SystemExit(f"could not install {still}; install lapjax's "
                     "dependencies (pyproject.toml) and rerun")


def torch_cuda(python: str) -> bool:
  """Whether ``python`` imports torch and sees a CUDA device."""
  try:
    out = subprocess.run(
        [python, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True, text=True, timeout=120)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return out.returncode == 0 and out.stdout.strip().endswith("True")


def _has(**fields) -> Callable[[dict], bool]:
  """A row test: the JSON line has these fields with these values (a value
  ``...``: the field is there)."""
  return lambda line: all(
      k in line and (v is ... or line[k] == v) for k, v in fields.items())


def sections(small: bool, torch_python: str | None) -> list[Section]:
  """Every section, most important first, with its parts' commands and
  the rows each part should print."""
  bench = os.path.join(ROOT, "benchmarks")

  def script(name, *args):
    return [sys.executable, os.path.join(bench, name), *args]

  if small:
    vs_methods = ("forward", "gradient", "grad_cam", "occlusion")
    vs = ["--model", "cnn", "--reps", "1"]
    batching = ["--batch", "4", "--single", "2", "--size", "32", "--reps",
                "2"]
    lap = ["--model", "small_cnn", "--batch", "8", "--reps", "1"]
    sloc = ["--model", "small_cnn", "--size", "32", "--reps", "1"]
    evaluation = (("--batch", "8", "--reps", "1"),
                  ("--batch", "32", "--reps", "1"))
    transformer = ["--size", "64", "--batch", "2", "--embed-dim", "192",
                   "--depth", "2", "--heads", "3", "--reps", "1"]
  else:
    vs_methods = VS_METHODS
    vs = ["--model", "resnet50", "--reps", "3"]
    batching = ["--batch", "64", "--single", "8", "--reps", "6"]
    lap = ["--model", "resnet50", "--batch", "16", "--reps", "5"]
    sloc = ["--model", "resnet18", "--reps", "3"]
    # Batch 32 on the H200 was launch-bound (1.5 ms a batch): 512 shows
    # the metrics' share once the device is busy.
    evaluation = (("--batch", "32", "--reps", "5"),
                  ("--batch", "512", "--reps", "5"))
    transformer = ["--reps", "5"]  # ViT-B/16, 224x224, batch 8
  vs += ["--row-by-row", "--methods", ",".join(vs_methods)]
  if torch_python:
    vs += ["--torch-python", torch_python, "--device",
           "cpu" if small else "cuda"]
  else:
    vs += ["--torch-python", "none"]

  def lap_part(setting):
    return Part(f"vanilla and {setting}",
                script("lap.py", *lap, "--steps-only", "--only", setting),
                ((f"{setting} step", _has(setting=setting, ms=...)),
                 ("vanilla step", _has(setting="vanilla", ms=...))))

  return [
      Section("vs_pytorch", (Part("", script("vs_pytorch.py", *vs), tuple(
          (m, _has(benchmark="vs_pytorch", method=m))
          for m in vs_methods)),)),
      Section("batching", (Part("", script(
          "attribution.py", "--sections", "batching", *batching), tuple(
              (m, _has(benchmark="batching", method=m))
              for m in BATCHING_METHODS)),)),
      Section("lap", (lap_part("4 LAPs"), lap_part("2 LAPs"))),
      Section("sloc", (Part("", script("sloc.py", "--sections", "whole",
                                       *sloc),
                            (("whole", _has(section="whole")),)),)),
      Section("eval_throughput", tuple(
          Part(f"batch {args[1]}", script("eval_throughput.py", *args),
               (("images per second", _has(ratio=...)),
                ("seconds per metric", _has(seconds_per_batch=...))))
          for args in evaluation)),
      Section("transformer", (Part("", script(
          "transformer.py", *transformer),
          (("seconds and ratios", _has(seconds=..., ratios=...)),)),)),
  ]


def _echo(stream, lines: list) -> None:
  """Prints each line of ``stream`` as it comes, keeping it in ``lines``."""
  for line in stream:
    lines.append(line)
    print(line, end="", flush=True)


def _json_lines(lines: list) -> list[dict]:
  out = []
  for line in lines:
    if line.startswith("{"):
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out


class _RowClock(list):
  """A list of output lines that notes when the first expected row came
  (seconds since ``start``: set-up and compilation, mostly)."""

  def __init__(self, start: float, first: list, rows: tuple):
    super().__init__()
    self.start, self.first, self.rows = start, first, rows

  def append(self, line: str) -> None:
    super().append(line)
    if not self.first and any(test(row) for row in _json_lines([line])
                              for _, test in self.rows):
      self.first.append(round(time.perf_counter() - self.start, 1))


def run_part(name: str, part: Part, limit: float, env: dict,
             log_dir: str) -> dict:
  """Runs one part, echoing its output as it comes; stops it (and its
  workers) at ``limit`` seconds. Returns its summary line."""
  label = f"{name} ({part.label})" if part.label else name
  print(f"\n## {label}: at most {limit:.0f} s\n$ {' '.join(part.argv)}",
        flush=True)
  log = os.path.join(log_dir, f"{name}{'_' if part.label else ''}"
                     f"{part.label.replace(' ', '_')}.stderr")
  start = time.perf_counter()
  first_row = []
  lines = _RowClock(start, first_row, part.rows)
  with open(log, "w") as err:
    proc = subprocess.Popen(part.argv, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=err, text=True, env=env,
                            start_new_session=True)
    reader = threading.Thread(target=_echo, args=(proc.stdout, lines))
    reader.start()
    try:
      status = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      status = "time limit"
    except _Stopped as stop:  # SIGTERM / SIGINT of this script
      status = f"stopped by {stop}"
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and its workers
        proc.wait()
      reader.join()
  printed = _json_lines(lines)
  reached = [label for label, test in part.rows
             if any(test(line) for line in printed)]
  if status != 0:
    with open(log) as err:
      tail = collections.deque(err, maxlen=12)
    print(f"# {label}: {status}; "
          + (f"last lines of {log}:\n" + "".join(tail) if tail
             else f"nothing on stderr ({log})\n"), end="", flush=True)
  return {"section": name, "part": part.label or None, "status": status,
          "seconds": round(time.perf_counter() - start, 1),
          "first_row_s": first_row[0] if first_row else None,
          "rows": reached,
          "not_reached": [label for label, _ in part.rows
                          if label not in reached]}


class _Stopped(Exception):
  """SIGTERM or SIGINT: the running part is stopped, the summary printed."""


def _stop(signum, frame):
  raise _Stopped(signal.Signals(signum).name)


def limits_left(names: list[str], left: float) -> dict:
  """Each section's share of ``left`` seconds, in ``SHARE`` proportions."""
  total = sum(SHARE[n] for n in names)
  return {n: left * SHARE[n] / total for n in names}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--small", action="store_true",
                      help="shrink every section to run on a CPU")
  parser.add_argument("--torch-python",
                      default=os.environ.get("LAPJAX_TORCH_PYTHON",
                                             sys.executable),
                      help="a Python with torch for the side-by-side table")
  parser.add_argument("--budget", type=float, default=BUDGET_S,
                      help="seconds for all sections on an accelerator")
  parser.add_argument("--only", default="",
                      help="comma-separated subset of the sections")
  parser.add_argument("--compile-cache",
                      default=os.path.join(tempfile.gettempdir(),
                                           "lapjax-accelerator-jax-cache"),
                      help="JAX's persistent compilation cache for the "
                      "sections ('' for none; $JAX_COMPILATION_CACHE_DIR "
                      "wins when set)")
  parser.add_argument("--log-dir", default=None,
                      help="where each section's stderr goes (default: a "
                      "new temporary directory)")
  args = parser.parse_args()
  start = time.perf_counter()
  ensure_installed()
  import jax

  devices = [str(d) for d in jax.devices()]
  torch_python = args.torch_python
  if not args.small and not torch_cuda(torch_python):
    torch_python = None  # no torch with CUDA: lapjax alone
  elif args.small and subprocess.run(
      [torch_python, "-c", "import torch, captum"],
      capture_output=True).returncode != 0:
    torch_python = None
  all_sections = sections(args.small, torch_python)
  only = set(filter(None, args.only.split(",")))
  unknown = only - {s.name for s in all_sections}
  if unknown:
    raise SystemExit(f"--only: unknown sections {sorted(unknown)}; known: "
                     f"{[s.name for s in all_sections]}")
  chosen = [s for s in all_sections if not only or s.name in only]
  env = dict(os.environ)
  if args.compile_cache and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = args.compile_cache
  log_dir = args.log_dir or tempfile.mkdtemp(prefix="lapjax-accelerator-")
  os.makedirs(log_dir, exist_ok=True)
  print(json.dumps({"devices": devices, "small": args.small,
                    "torch_python": torch_python,
                    "budget_s": None if args.small else args.budget,
                    "sections": [s.name for s in chosen],
                    "compile_cache": env.get("JAX_COMPILATION_CACHE_DIR"),
                    "log_dir": log_dir}), flush=True)
  summary = []
  signal.signal(signal.SIGTERM, _stop)
  signal.signal(signal.SIGINT, _stop)
  try:
    _run_sections(chosen, args, start, env, log_dir, summary)
  except _Stopped:  # the parts not run yet
    done = {(line["section"], line.get("part")) for line in summary}
    for section in chosen:
      for part in section.parts:
        if (section.name, part.label or None) not in done:
          summary.append({"section": section.name,
                          "part": part.label or None,
                          "status": "not started: the script was stopped",
                          "not_reached": [r for r, _ in part.rows]})
  _print_summary(summary)


def _run_sections(chosen: list, args, start: float, env: dict, log_dir: str,
                  summary: list) -> None:
  """Runs each section's parts within its time limit, appending their
  summary lines to ``summary``."""
  for i, section in enumerate(chosen):
    if args.small:
      limit = SMALL_LIMIT_S
    else:
      left = args.budget - (time.perf_counter() - start)
      if left < MINIMUM[section.name]:
        summary += [{"section": section.name, "part": part.label or None,
                     "status": f"not started: {max(0, left):.0f} s left of "
                     f"the budget, the section needs "
                     f"{MINIMUM[section.name]} s",
                     "not_reached": [r for r, _ in part.rows]}
                    for part in section.parts]
        continue
      share = limits_left([s.name for s in chosen[i:]], left)[section.name]
      limit = min(left, max(share, MINIMUM[section.name]))
    section_end = time.perf_counter() + limit
    for part in section.parts:
      part_left = section_end - time.perf_counter()
      if part_left < 1:
        summary.append({"section": section.name,
                        "part": part.label or None,
                        "status": "not started: the section's time was "
                        "spent", "not_reached": [r for r, _ in part.rows]})
        continue
      summary.append(run_part(section.name, part, part_left, env, log_dir))
      if str(summary[-1]["status"]).startswith("stopped by"):
        raise _Stopped(summary[-1]["status"])


def _print_summary(summary: list) -> None:
  """One line per part, then the rows not reached."""
  print("\n## summary", flush=True)
  for line in summary:
    print(json.dumps(line), flush=True)
  missed = {}
  for line in summary:
    if line["not_reached"]:
      key = line["section"] + (f" ({line['part']})" if line.get("part")
                               else "")
      missed[key] = line["not_reached"]
  print(json.dumps({"not_reached": missed}), flush=True)
  print("every expected row was printed" if not missed else
        "rows not reached: " + "; ".join(f"{k}: {', '.join(v)}"
                                         for k, v in missed.items()),
        flush=True)


if __name__ == "__main__":
  main()
