r"""Clue-benchmark rendering throughput (images/s) on one core.

  python benchmarks/data_throughput.py

Renders 4,096 images at 64x64 in chunks of 512 (as ``ClueSource`` does),
three times, and prints the best run as a JSON line. NumPy runs these
operations on one thread.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import numpy as np  # noqa: E402

from lapjax.data import clues  # noqa: E402


def main():
  for config in (clues.CluesConfig(), clues.CluesConfig(binary=True),
                 clues.CluesConfig(image_size=(128, 128))):
    n, chunk = 4096, 512
    best = float("inf")
    for _ in range(3):
      t = time.perf_counter()
      for start in range(0, n, chunk):
        clues.render(config, "train", np.arange(start, start + chunk))
      best = min(best, time.perf_counter() - t)
    print(json.dumps({"benchmark": "clue_rendering",
                      "image_size": list(config.image_size),
                      "binary": config.binary, "images": n,
                      "images_per_s": round(n / best)}), flush=True)


if __name__ == "__main__":
  main()
