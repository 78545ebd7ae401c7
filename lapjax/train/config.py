"""The training config schema: every field lapjax understands, documented.

Config files (``configs/*.py``) start from ``base_config()`` and override
values; ``validate`` rejects fields the schema does not have (a typo such as
``config.optimiser`` would otherwise be silently ignored).
"""

from __future__ import annotations

import difflib

import ml_collections

# Sub-trees whose keys are free-form (passed through to a constructor).
FREE_FORM = ("model.kwargs",)


def base_config() -> ml_collections.ConfigDict:
  """All fields with their defaults; see the comments for their meaning."""
  c = ml_collections.ConfigDict()
  c.seed = 0                    # parameter init and per-step keys
  c.data = ml_collections.ConfigDict()
  c.data.name = "clues"         # 'clues' or 'tfds:<name>' (e.g. 'tfds:cifar10')
  c.data.seed = 0               # dataset seed (images from (seed, split, i))
  c.data.image_size = (64, 64)  # (H, W)
  c.data.num_clue_classes = 3   # K clue classes, plus background-only
  c.data.binary = False         # clue present / absent instead of K + 1
  c.data.min_clue_fraction = 0.01  # clue box area / image area, smallest
  c.data.max_clue_fraction = 0.15  # ... and largest
  c.data.box_padding = 0.0      # > 0: coarse, merged boxes (annotation noise)
  c.data.num_train = 20_000     # images per split (at most, for tfds)
  c.data.num_validation = 1_000
  c.data.num_test = 2_000
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds only
  c.data.tfds_splits = ml_collections.ConfigDict(  # tfds split per split
      {"train": "train", "validation": "test[:50%]", "test": "test[50%:]"})

  c.model = ml_collections.ConfigDict()
  c.model.name = "small_cnn"    # a name in lapjax.models.MODELS
  c.model.kwargs = ml_collections.ConfigDict()  # model attributes

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"    # 'adamw', 'adam' or 'sgd'
  c.optimizer.learning_rate = 3e-3  # peak learning rate
  c.optimizer.schedule = "warmup_cosine"  # 'warmup_cosine' or 'constant'
  c.optimizer.warmup_steps = 0  # linear warm-up (warmup_cosine only)
  c.optimizer.weight_decay = 1e-4   # adamw only
  c.optimizer.momentum = 0.9        # sgd only (0 = plain SGD)

  c.batch_size = 64             # global batch, divisible by the device count
  c.num_steps = 1_000           # optimiser steps
  c.log_every = 50              # steps between metrics.jsonl lines
  c.checkpoint_every = 500      # steps between Orbax checkpoints (+ at end)
  c.eval_batch_size = 250       # evaluation batch (padded, masked)
  c.multihost = False           # call jax.distributed.initialize() first

  c.explain_loss = ml_collections.ConfigDict()  # paper 001 (explain_loss)
  c.explain_loss.type = "cross_entropy"  # or a score in explain_loss.SCORES
  c.explain_loss.alpha = 0.5    # L = L_ce + alpha * L_exp, alpha >= 0
  c.explain_loss.layer = "block4"   # Grad-CAM layer (the last conv block)
  c.explain_loss.top_k = 0.5    # fraction of heatmap cells kept, (0, 1]
  c.explain_loss.reading = "mask_values"  # differentiable top-k reading
  c.explain_loss.temperature = 0.05   # 'sigmoid' / 'straight_through' only

  c.evaluation = ml_collections.ConfigDict()   # evaluate.py's explanations
  c.evaluation.layer = "block4"       # CAM / LaFAM layer (the last block)
  c.evaluation.methods = (            # names in evaluation/methods.py
      "gradient", "input_x_gradient", "integrated_gradients", "smoothgrad",
      "guided_backprop", "grad_cam", "grad_cam_plus_plus", "layer_cam",
      "guided_grad_cam", "score_cam", "occlusion", "rise", "lafam", "sloc")
  c.evaluation.num_images = 128       # test images explained and scored
  c.evaluation.figure_images = 6      # rows of explanations.png
  c.evaluation.ig_steps = 32          # integrated gradients path points
  c.evaluation.rise_masks = 500       # RISE masks
  c.evaluation.smoothgrad_samples = 16
  c.evaluation.sloc_masks = 500       # SLOC masks per patch size
  c.evaluation.sloc_steps = 501       # SLOC Adam steps
  c.evaluation.sloc_calibration_images = 64  # validation images, sloc_xp
  c.evaluation.faithfulness_images = 64  # clue images (true class)
  c.evaluation.faithfulness_steps = 20   # insertion / deletion steps
  c.evaluation.sanity_methods = ("gradient", "grad_cam", "guided_backprop")
  c.evaluation.sanity_images = 16     # images of the randomisation check
  c.evaluation.sanity_keys = 3        # randomisation draws, averaged
  c.evaluation.seed = 0               # keys of the stochastic methods
  c.evaluation.grid_games = 24        # grids per set (benchmarks/grid_game)
  c.evaluation.grid_seeds = 3         # independent grid sets (noise)
  return c


def _paths(config, prefix=""):
  for key, value in config.items():
    path = f"{prefix}{key}"
    yield path
    if isinstance(value, ml_collections.ConfigDict) and path not in FREE_FORM:
      yield from _paths(value, path + ".")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming any field that ``base_config`` does not have."""
  known = set(_paths(base_config()))
  unknown = [p for p in _paths(config) if p not in known]
  if unknown:
    hints = []
    for p in unknown:
      close = difflib.get_close_matches(p, known, n=1)
      hints.append(f"{p}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ValueError(f"unknown config field(s): {', '.join(hints)}; the "
                     "fields are documented in lapjax/train/config.py")
  for name in ("batch_size", "num_steps", "log_every", "checkpoint_every",
               "eval_batch_size"):
    if int(config[name]) < 1:
      raise ValueError(f"config.{name} must be >= 1; got {config[name]}")
  _validate_explain_loss(config.explain_loss)


def _validate_explain_loss(e: ml_collections.ConfigDict) -> None:
  from lapjax import explain_loss

  types = ("cross_entropy", *explain_loss.SCORES)
  if e.type not in types:
    raise ValueError(f"config.explain_loss.type must be one of {types}; got "
                     f"{e.type!r}")
  if not e.alpha >= 0:
    raise ValueError(f"config.explain_loss.alpha must be >= 0; got "
                     f"{e.alpha}")
  if not 0 < e.top_k <= 1:
    raise ValueError(f"config.explain_loss.top_k (fraction of heatmap cells "
                     f"kept) must be in (0, 1]; got {e.top_k}")
  if e.reading not in explain_loss.READINGS:
    raise ValueError(f"config.explain_loss.reading must be one of "
                     f"{explain_loss.READINGS}; got {e.reading!r}")
