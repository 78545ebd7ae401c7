r"""The small CNN on the 4-class clue benchmark (the README's main job).

Command (what ``make demo`` runs)::

  python train.py --config configs/default.py --workdir runs/default
  python evaluate.py --workdir runs/default

Expected on a 2-core CPU without GPU: training about 4 minutes at about 400
images/s; test accuracy 0.9735 (validation 0.971) on the 2,000 test images
(measured 2026-11-22, see docs/benchmarks.md). Variants, chosen with
``configs/default.py:NAME``:

* ``tiny``: 32x32 images, 12 steps, about 15 s; accuracy near chance (0.25 to
  0.4): it proves the pipeline runs end to end, for tests and CI::

    python train.py --config configs/default.py:tiny --workdir runs/tiny

* ``resnet18``: ResNet-18 (small-image stem, width 32) instead of the CNN;
  about 17 images/s on that CPU (some 95 minutes for 1,500 steps), meant for
  an accelerator; its accuracy has not been measured yet.

Every field is documented in ``lapjax/train/config.py``.
"""

import ml_collections

from lapjax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the default config; ``arg`` is None, 'tiny' or 'resnet18'."""
  c = base_config()
  c.model.kwargs.widths = (16, 32, 64, 128)
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 75
  c.batch_size = 64
  c.num_steps = 1_500
  c.checkpoint_every = 500

  if arg == "tiny":
    shrink_to_tiny(c)
    c.model.kwargs.widths = (8, 16)
    c.evaluation.layer = "block2"
  elif arg == "resnet18":
    c.model.name = "resnet18"
    c.model.kwargs = ml_collections.ConfigDict(
        {"small_inputs": True, "width": 32})
    c.evaluation.layer = "stage4"
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny' or "
                     "'resnet18'")
  return c


def shrink_to_tiny(c: ml_collections.ConfigDict) -> None:
  """The test-sized settings every clue config's ``tiny`` variant shares:
  32 x 32 images, 256 training images, 12 steps, small evaluation."""
  c.data.image_size = (32, 32)
  c.data.min_clue_fraction = 0.04
  c.data.max_clue_fraction = 0.2
  c.data.num_train = 256
  c.data.num_validation = 64
  c.data.num_test = 64
  c.batch_size = 16
  c.num_steps = 12
  c.log_every = 4
  c.checkpoint_every = 4
  c.optimizer.warmup_steps = 2
  c.eval_batch_size = 32
  c.evaluation.num_images = 16
  c.evaluation.figure_images = 3
  c.evaluation.ig_steps = 4
  c.evaluation.rise_masks = 16
  c.evaluation.smoothgrad_samples = 2
  c.evaluation.sanity_images = 4
  c.evaluation.sanity_keys = 2
  c.evaluation.sloc_masks = 16
  c.evaluation.sloc_steps = 20
  c.evaluation.sloc_calibration_images = 4
  c.evaluation.faithfulness_images = 8
  c.evaluation.faithfulness_steps = 4
