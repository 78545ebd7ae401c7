r"""SLOC and the faithfulness table of paper 004 on the default clue run.

The model and data are ``configs/default.py``'s, so this config evaluates
the checkpoint ``make demo`` trains (no new training)::

  python train.py --config configs/default.py --workdir runs/default  # once
  python evaluate.py --config configs/sloc.py --workdir runs/default

``report.md`` then holds, besides the localisation table, POS, NEG, DEL,
INS, NPD, IDD, AIC and SIC for every method below on the first 64 clue
images (explaining the true class), SLOC's three versions included
(``sloc_xp``'s p is calibrated on 64 validation images). Results and timings:
docs/benchmarks.md ("SLOC"). Variant ``tiny`` (``configs/sloc.py:tiny``)
runs the same path in seconds on the tiny run of ``configs/default.py:tiny``.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config (``arg``: None or 'tiny') with SLOC evaluation."""
  c = default.get_config(arg)
  c.evaluation.methods = (
      "gradient", "input_x_gradient", "integrated_gradients",
      "guided_backprop", "grad_cam", "grad_cam_plus_plus", "layer_cam",
      "score_cam", "occlusion", "rise", "lafam", "sloc", "sloc_xp",
      "sloc_m")
  return c
