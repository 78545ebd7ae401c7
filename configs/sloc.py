r"""SLOC and the faithfulness table of paper 004 on the default clue run.

The model and data are ``configs/default.py``'s, so this config evaluates
the checkpoint ``make demo`` trains (no new training)::

  python train.py --config configs/default.py --workdir runs/default  # once
  python evaluate.py --config configs/sloc.py --workdir runs/default

``report.md`` then holds, besides the localisation table, POS, NEG, DEL,
INS, NPD, IDD, AIC and SIC for every method below on the first 64 clue
images (explaining the true class), SLOC's three versions included
(``sloc_xp``'s p is calibrated on 64 validation images). Results:
docs/studies/sloc_variants.md; timings: docs/benchmarks.md ("SLOC").
Variants (``configs/sloc.py:NAME``):

* ``blur``: every perturbation, the methods' (SLOC's masked inputs, the
  integrated-gradients path, Score-CAM, occlusion, RISE) and the metrics'
  (POS to INS), goes towards the Gaussian-blurred image instead of black
  (``config.evaluation.baseline``)::

    python evaluate.py --config configs/sloc.py:blur --workdir runs/default

* ``tiny``: the same path in seconds on the tiny run of
  ``configs/default.py:tiny``.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config with SLOC evaluation; ``arg``: None, 'blur' or
  'tiny'."""
  if arg not in (None, "blur", "tiny"):
    raise ValueError(f"unknown config variant {arg!r}; use 'blur' or 'tiny'")
  c = default.get_config("tiny" if arg == "tiny" else None)
  if arg == "blur":
    c.evaluation.baseline = "blur"
  c.evaluation.methods = (
      "gradient", "input_x_gradient", "integrated_gradients",
      "guided_backprop", "grad_cam", "grad_cam_plus_plus", "layer_cam",
      "score_cam", "occlusion", "rise", "lafam", "sloc", "sloc_xp",
      "sloc_m")
  return c
