"""Paper 000's comparison with relevance methods: one LAP-study seed.

  python studies/lap_study_relevance.py vanilla lap_wsl

Trains (or resumes) ``studies/lap_study.py``'s variants for seed 0 at 600
steps in ``runs/lap_relevance`` and scores them with ``lap_evaluation``,
whose methods now include LRP (epsilon-plus-flat), DeepLIFT and
Relevance-CAM beside Grad-CAM and LAP; one JSON row per variant in
``runs/lap_relevance/rows.jsonl`` (docs/studies/lap_study.md, "Relevance
methods").
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from studies import lap_study  # noqa: E402

RUNS = os.path.join(lap_study.ROOT, "runs", "lap_relevance")


def main() -> None:
  os.makedirs(RUNS, exist_ok=True)
  for variant in sys.argv[1:] or ["vanilla", "lap_wsl"]:
    start = time.time()
    row = lap_study.run(variant, 0, 600, RUNS)
    row["wall_s"] = time.time() - start
    with open(os.path.join(RUNS, "rows.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("variant", "seed",
                                           "test_accuracy")}), flush=True)


if __name__ == "__main__":
  main()
