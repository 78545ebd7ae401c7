r"""Peak memory of the streaming evaluation against the number of images.

  python benchmarks/eval_memory.py [--images 1000 8000] [--workdir DIR]

Trains a 2-step default-config run in ``--workdir`` (the weights do not
matter for memory), then evaluates it in a fresh process per size, on
``--images`` clue test images (classification over all of them, Grad-CAM
and every localisation metric over all of them, the figure subset at its
default size) and prints one JSON line per size with the process's peak
resident memory (``VmHWM``). The faithfulness and randomisation subsets,
whose sizes do not depend on ``--images``, are left out
(``--with_subsets`` keeps them at their default sizes): what remains is
the streamed part, so its growth is not hidden under their fixed peak.

The clue split is rendered on the fly (``ClueSource(cache=False)``): the
default cached split holds 60 KB an image in memory by design, which is
the data source's choice, not the evaluator's.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def _config(images: int | None = None, *, subsets: bool = False):
  from configs import default
  c = default.get_config()
  c.data.num_train = 256
  c.data.num_validation = 64
  c.num_steps = 2
  c.checkpoint_every = 2
  if images is not None:
    c.data.num_test = images
    c.evaluation.num_images = images
    c.evaluation.methods = ("grad_cam",)
    c.evaluation.sanity_methods = ("grad_cam",)
    if not subsets:
      c.evaluation.sanity_methods = ()
      c.evaluation.faithfulness_images = 0
  return c


def _peak_rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


def child(workdir: str, images: int, subsets: bool) -> None:
  """One evaluation in this process; prints its JSON line."""
  from lapjax.data import sources
  from lapjax.evaluation.evaluate import evaluate
  # Render on the fly: memory is then the evaluator's (see the docstring).
  sources.ClueSource.__init__.__kwdefaults__["cache"] = False
  t = time.perf_counter()
  report = evaluate(_config(images, subsets=subsets), workdir)
  print(json.dumps({
      "images": images,
      "explained": report["explanations"]["n_images"],
      "seconds": round(time.perf_counter() - t, 1),
      "peak_rss_mb": round(_peak_rss_mb(), 1)}), flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, nargs="+", default=[1000, 8000])
  parser.add_argument("--workdir", default="runs/eval_memory")
  parser.add_argument("--with_subsets", action="store_true",
                      help="also the faithfulness and randomisation "
                      "subsets (fixed sizes)")
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.workdir, args.child, args.with_subsets)
    return
  from lapjax.train import checkpoint, train_and_evaluate
  if checkpoint.latest_step(os.path.abspath(args.workdir)) is None:
    train_and_evaluate(_config(), args.workdir, progress=False)
  rows = []
  for n in args.images:
    # A fresh evaluation each time, not a resume of an unfinished one.
    shutil.rmtree(os.path.join(args.workdir, "eval"), ignore_errors=True)
    out = subprocess.run([sys.executable, os.path.abspath(__file__),
                          f"--workdir={args.workdir}", f"--child={n}"]
                         + ["--with_subsets"] * args.with_subsets,
                         capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(rows[-1]), flush=True)
  low, high = rows[0]["peak_rss_mb"], rows[-1]["peak_rss_mb"]
  print(json.dumps({"growth": round(high / low - 1, 4)}))


if __name__ == "__main__":
  main()
