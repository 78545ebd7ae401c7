r"""The accelerator benchmark: every speed figure the CPU could not settle,
in one command, within 8 minutes.

  python benchmarks/accelerator.py            # on a GPU / TPU machine
  python benchmarks/accelerator.py --small    # anywhere: shrunk, CPU-sized
  python benchmarks/accelerator.py --budget 400   # a shorter lease

Run from a checkout of the repository. It first makes sure that lapjax's
dependencies import, installing the repository (``pip install -e .``) only
if one is missing (nothing else; no internet is needed when they are
there), then runs these sections, each a benchmark script of this folder
in its own process with its own time limit (what a section printed before
its limit is kept):

1. ``vs_pytorch``: the side-by-side table (``vs_pytorch.py``, ResNet-50 at
   224x224, batch 4) against PyTorch on the same device when a Python with
   torch (``--torch-python``; default ``$LAPJAX_TORCH_PYTHON`` or this
   Python) sees CUDA, else lapjax alone with its floors;
2. ``batching``: batch of 64 against one image at a time, per image
   (``attribution.py --sections batching``: the >= 3x per-image bar);
3. ``lap``: the LAP training-step cost on ResNet-50 (``lap.py --model
   resnet50 --steps-only``);
4. ``sloc``: one SLOC explanation against the forward passes it needs
   (``sloc.py --sections whole``);
5. ``eval_throughput``: streaming evaluation, Grad-CAM with every
   localisation metric (``eval_throughput.py``);
6. ``transformer``: attention rollout and GAE against one forward (and
   backward) pass, and the Attribution Lens with C' = 4 around GAE against
   one GAE call, on ViT-B/16 at 224x224, batch 8 (``transformer.py``:
   the lens bar <= 1.5x one GAE call needs its C' backward passes to run
   side by side, which a CPU cannot do).

``--small`` shrinks every section (the default CNN at 64x64 or 32x32,
small batches, one repetition) and lifts the 8-minute budget (10 minutes
per section) so that the script runs end to end on a CPU: it proves the
script works, its numbers mean nothing. Prints each
section's JSON lines and tables as they come, then one summary line per
section (its exit status and seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDED = ("jax", "flax", "optax", "orbax.checkpoint", "chex", "numpy",
          "ml_collections", "safetensors", "skimage", "scipy", "tqdm")
BUDGET_S = 8 * 60


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


def sections(small: bool, torch_python: str | None,
             budget: float = BUDGET_S) -> list:
  """``(name, argv, time limit in seconds)`` of each section; on an
  accelerator the limits share ``budget`` seconds in fixed proportions."""
  bench = os.path.join(ROOT, "benchmarks")
  py = sys.executable
  if small:
    vs = ["--model", "cnn", "--reps", "1",
          "--methods", "forward,gradient,grad_cam,occlusion"]
    batching = ["--sections", "batching", "--batch", "4", "--single", "2",
                "--size", "32", "--reps", "2"]
    lap = ["--model", "small_cnn", "--batch", "8", "--reps", "1",
           "--steps-only"]
    sloc = ["--sections", "whole", "--model", "small_cnn", "--size", "32",
            "--reps", "1"]
    evaluation = ["--batch", "8", "--reps", "1"]
    transformer = ["--size", "64", "--batch", "2", "--embed-dim", "192",
                   "--depth", "2", "--heads", "3", "--reps", "1"]
  else:
    vs = ["--model", "resnet50", "--reps", "3",
          "--methods", "forward,gradient,grad_cam,integrated_gradients,"
          "occlusion,lrp"]
    batching = ["--sections", "batching", "--batch", "64", "--single",
                "8", "--reps", "6"]
    lap = ["--model", "resnet50", "--batch", "16", "--reps", "5",
           "--steps-only"]
    sloc = ["--sections", "whole", "--model", "resnet18", "--reps", "3"]
    evaluation = ["--batch", "32", "--reps", "5"]
    transformer = ["--reps", "5"]  # ViT-B/16, 224x224, batch 8
  if torch_python:
    vs += ["--torch-python", torch_python, "--device",
           "cpu" if small else "cuda"]
  else:
    vs += ["--torch-python", "none"]
  # A CPU (--small) gets 10 minutes per section instead of a share.
  shares = (140, 100, 70, 60, 50, 60)  # of the 8-minute budget
  limits = ((600,) * 6 if small
            else tuple(budget * share / sum(shares) for share in shares))
  return [
      ("vs_pytorch", [py, os.path.join(bench, "vs_pytorch.py"), *vs],
       limits[0]),
      ("batching", [py, os.path.join(bench, "attribution.py"), *batching],
       limits[1]),
      ("lap", [py, os.path.join(bench, "lap.py"), *lap], limits[2]),
      ("sloc", [py, os.path.join(bench, "sloc.py"), *sloc], limits[3]),
      ("eval_throughput", [py, os.path.join(bench, "eval_throughput.py"),
                           *evaluation], limits[4]),
      ("transformer", [py, os.path.join(bench, "transformer.py"),
                       *transformer], limits[5]),
  ]


def run_section(name: str, argv: list[str], limit: float) -> dict:
  """Runs one section, echoing its output; stops it at ``limit`` s."""
  print(f"\n## {name}\n$ {' '.join(argv)}", flush=True)
  start = time.perf_counter()
  proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True,
                          start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=limit)
    status = proc.returncode
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # the section and its workers
    out, _ = proc.communicate()
    status = "time limit"
  print(out, end="", flush=True)
  return {"section": name, "status": status,
          "seconds": round(time.perf_counter() - start, 1)}


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
  print(json.dumps({"devices": devices, "small": args.small,
                    "torch_python": torch_python}), flush=True)
  only = set(filter(None, args.only.split(",")))
  summary = []
  for name, argv, limit in sections(args.small, torch_python, args.budget):
    if only and name not in only:
      continue
    left = (float("inf") if args.small
            else args.budget - (time.perf_counter() - start))
    if left < 20:
      summary.append({"section": name, "status": "skipped: budget spent"})
      continue
    summary.append(run_section(name, argv, min(limit, left)))
  print("\n## summary", flush=True)
  for line in summary:
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
