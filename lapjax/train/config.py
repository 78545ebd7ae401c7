"""The training config schema: every field lapjax understands, documented.

Config files (``configs/*.py``) start from ``base_config()`` and override
values; ``validate`` rejects fields the schema does not have (a typo such as
``config.optimiser`` would otherwise be silently ignored).
"""

from __future__ import annotations

import difflib
import json
import os

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

  c.probabilities = "softmax"   # 'softmax' (cross-entropy) or 'sigmoid': one
  #   sigmoid per class, trained with binary cross-entropy on one-hot labels
  #   (paper 001's two-output BCE head); explain_loss prob_* scores use it
  c.batch_size = 64             # global batch, divisible by the device count
  c.balanced_batches = False    # draw every training batch with batch_size
  #   / num_classes examples of each class (paper 000's 32/32 batches of
  #   its binary setting): each class cycles through its own permutations,
  #   so rare classes repeat within an epoch; batch_size must be divisible
  #   by the class count (lapjax.data.batching.balanced_train_indices)
  c.num_steps = 1_000           # optimiser steps
  c.log_every = 50              # steps between metrics.jsonl lines
  c.checkpoint_every = 500      # steps between Orbax checkpoints (+ at end)
  c.eval_batch_size = 250       # evaluation batch (padded, masked)
  c.best_checkpoint = "off"     # also keep the checkpoint with the best
  #   validation metric, in workdir/checkpoints-best (one, atomic, as Orbax
  #   saves): 'validation_accuracy' (highest: paper 000's models) or
  #   'validation_loss' (lowest training objective on the validation split
  #   in inference mode: the paper's detached LAPs); measured whenever a
  #   checkpoint is saved. evaluate.py --checkpoint=best reads it.
  c.multihost = False           # call jax.distributed.initialize() first
  c.on_nonfinite = "stop"       # a step whose loss, gradients or new state
  #   are NaN/inf: 'stop' raises NonFiniteError naming the step and the last
  #   good checkpoint (non-finite states are never saved); 'skip' keeps the
  #   state of such steps unchanged and counts them (metrics.jsonl
  #   'nonfinite_steps'). The flag is read when logging or saving, not per
  #   step. May change on resume.

  c.init_from = ml_collections.config_dict.placeholder(str)  # a run folder:
  #   its newest parameters initialise every matching parameter (the whole
  #   backbone of a detached LAP model); selective fine-tuning / post-hoc LAPs
  c.pretrained = ml_collections.ConfigDict()  # fine-tuning a zoo backbone
  c.pretrained.path = ml_collections.config_dict.placeholder(str)  # a
  #   checkpoint file (.pth / .pt / .bin / .safetensors / .npz) of the zoo
  #   model config.model.name built with config.model.kwargs; a fresh run
  #   starts from its variables (lapjax.models.load_pretrained), the head
  #   re-initialised for the data's classes; a resumed run ignores it.
  #   Setting it also feeds the model images normalised with the card's
  #   mean and std (lapjax.train.pretrained.Normalized): the model, and so
  #   evaluate.py and every attribution method, still takes images in [0, 1]
  c.pretrained.layout = ml_collections.config_dict.placeholder(str)  # the
  #   checkpoint's naming, a name in the card's layouts ('torchvision',
  #   'timm', 'hf'); None: the layout that names the checkpoint
  c.trainable = ()              # parameter path prefixes to train (e.g.
  #   ('pool3', 'global_pool', 'block4', 'head')); () trains everything.
  #   Frozen parameters and their BatchNorm statistics stay bit-identical.

  c.lap = ml_collections.ConfigDict()  # LAP (paper 000, lapjax.lap)
  c.lap.mode = "off"            # 'off', 'plugged' (LAP-Pools), 'detached'
  c.lap.places = ("pool3", "global_pool")  # plugged: pooling places
  #   replaced by LAP-Pools; detached: backbone layers explained; shallow
  #   to deep
  c.lap.supervision = "weak"    # 'weak' (Eq. 4-5) or 'expert' (Eq. 8, boxes)
  c.lap.gamma_min = 0.1         # gamma_MinAR, expected DC size, (0, 1]
  c.lap.gamma_max = ml_collections.FieldReference(0.5, field_type=float)
  #   gamma_MaxAR, largest DC size, (0, 1); None switches MaxAR off
  c.lap.gamma_iar = 0.1         # gamma_IAR, (0, 1]
  c.lap.expert_gamma_iar = ml_collections.config_dict.placeholder(float)
  #   expert loss K_IAR / n_e; None: mean box fraction of 512 train images
  c.lap.weight = 10.0           # lambda per LAP of the supervision loss
  c.lap.concordance_weight = 1.0  # Eq. 9, per consecutive pair (0: off)
  c.lap.reference = "sum"       # Top-K ranking: 'sum' over LAPs or 'self'
  c.lap.discriminative = True   # discriminative scoring modules (App. C.5)
  c.lap.head_widths = (64,)     # hidden widths of each LAP head
  c.lap.aggregation = "sum"     # LAP-Pool A: 'sum', 'max', 'mean', 'weighted'
  c.lap.alpha_init = 2.0        # LAP-Pool alpha at initialisation
  c.lap.eps = 1e-4              # LAP-Pool weight floor
  c.lap.decay = 0.8             # depth aggregation decay (Algorithm 1)
  c.lap.heads_from = ()         # selective fine-tuning (paper 000, Sec.
  #   2.3): with mode 'plugged' and init_from a detached LAP run, pairs
  #   (detached layer, LAP-Pool place), e.g. (('block3', 'pool3'),
  #   ('block4', 'global_pool')): the head laps/<layer> (and laps/
  #   <layer>_disc) of that run initialises <place>/head (and <place>/
  #   disc_head), its backbone the same-named layers here. Every detached
  #   head of the run must be named; (layer, '') leaves one out

  c.explain_loss = ml_collections.ConfigDict()  # paper 001 (explain_loss)
  c.explain_loss.type = "cross_entropy"  # or a score in explain_loss.SCORES
  c.explain_loss.alpha = 0.5    # L = L_ce + alpha * L_exp, alpha >= 0
  c.explain_loss.layer = "block4"   # Grad-CAM layer (the last conv block)
  c.explain_loss.top_k = 0.5    # fraction of heatmap cells kept, (0, 1]
  c.explain_loss.reading = "mask_values"  # differentiable top-k reading
  c.explain_loss.temperature = 0.05   # 'sigmoid' / 'straight_through' only
  # BatchNorm in the in-loss Grad-CAM: 'batch' (the training forward pass,
  # as the paper's create_graph Grad-CAM) or 'running' (inference mode).
  c.explain_loss.statistics = "batch"

  c.evaluation = ml_collections.ConfigDict()   # evaluate.py's explanations
  c.evaluation.layer = "block4"       # CAM / LaFAM layer (the last block)
  c.evaluation.methods = (            # names in evaluation/methods.py
      "gradient", "input_x_gradient", "integrated_gradients", "smoothgrad",
      "guided_backprop", "grad_cam", "grad_cam_plus_plus", "layer_cam",
      "guided_grad_cam", "score_cam", "occlusion", "rise", "lafam", "sloc")
  c.evaluation.num_images = 128       # test images explained and scored
  #   (a number >= the split's size scores the whole split, streamed)
  c.evaluation.batch_size = 32        # images per explanation batch (global)
  c.evaluation.save_every = 20        # batches between saved states
  #   (workdir/eval/state.npz; a killed evaluation resumes from it)
  c.evaluation.write_maps = False     # maps to workdir/eval/maps/ (shards)
  c.evaluation.figure_images = 6      # rows of explanations.png
  c.evaluation.ig_steps = 32          # integrated gradients path points
  c.evaluation.rise_masks = 500       # RISE masks
  c.evaluation.smoothgrad_samples = 16
  c.evaluation.sloc_masks = 500       # SLOC masks per patch size
  c.evaluation.sloc_steps = 501       # SLOC Adam steps
  c.evaluation.sloc_calibration_images = 64  # validation images, sloc_xp
  c.evaluation.faithfulness_images = 64  # clue images (true class)
  c.evaluation.faithfulness_steps = 20   # insertion / deletion steps
  # Perturbation baseline, 'zero' (black for images in [0, 1]) or 'blur',
  # of the methods that take one (integrated gradients, Score-CAM,
  # occlusion, RISE, SLOC) and of POS / NEG / DEL / INS.
  c.evaluation.baseline = "zero"
  c.evaluation.sanity_methods = ("gradient", "grad_cam", "guided_backprop")
  c.evaluation.sanity_images = 16     # images of the randomisation check
  c.evaluation.sanity_keys = 3        # randomisation draws, averaged
  c.evaluation.seed = 0               # keys of the stochastic methods
  c.evaluation.lap_report = False     # the LAP paper's tables (always on
  #   for LAP runs): binarised IoU, SRG, keep-top-k, standalone LAPs
  c.evaluation.saliency_report = False  # paper 001's saliency metrics at
  #   explain_loss.layer (always on for runs trained with explain_loss)
  c.evaluation.lap_images = 256       # test images (correct clue images used)
  c.evaluation.lap_val_images = 128   # validation images (learned threshold)
  c.evaluation.grid_games = 24        # grids per set (studies/grid_game)
  c.evaluation.grid_seeds = 3         # independent grid sets (noise)
  return c


def _paths(config, prefix=""):
  for key, value in config.items():
    path = f"{prefix}{key}"
    yield path
    if isinstance(value, ml_collections.ConfigDict) and path not in FREE_FORM:
      yield from _paths(value, path + ".")


# config.evaluation.baseline -> the methods' and metrics' ``baseline``.
BASELINES = {"zero": 0.0, "blur": "blur"}
ON_NONFINITE = ("stop", "skip")
# config.best_checkpoint -> whether a higher value is better.
BEST_CHECKPOINTS = ("off", "validation_accuracy", "validation_loss")
# config.evaluation sizes and their smallest values.
EVALUATION_SIZES = {"num_images": 1, "batch_size": 1, "save_every": 1,
                    "figure_images": 0, "ig_steps": 1,
                    "rise_masks": 1, "smoothgrad_samples": 1,
                    "sloc_masks": 1, "sloc_steps": 1,
                    "sloc_calibration_images": 1, "faithfulness_images": 0,
                    "faithfulness_steps": 1, "sanity_images": 1,
                    "sanity_keys": 1, "lap_images": 1, "lap_val_images": 1,
                    "grid_games": 1, "grid_seeds": 1}


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
  from lapjax.explain_loss import PROBABILITIES
  if config.probabilities not in PROBABILITIES:
    raise ValueError(f"config.probabilities must be one of {PROBABILITIES}; "
                     f"got {config.probabilities!r}")
  for name in ("batch_size", "num_steps", "log_every", "checkpoint_every",
               "eval_batch_size"):
    if int(config[name]) < 1:
      raise ValueError(f"config.{name} must be >= 1; got {config[name]}")
  for name in ("num_train", "num_validation", "num_test"):
    if int(config.data[name]) < 1:
      raise ValueError(f"config.data.{name} must be >= 1 (every split is "
                       f"used: train, validation accuracy after training, "
                       f"test report); got {config.data[name]}")
  if config.best_checkpoint not in BEST_CHECKPOINTS:
    raise ValueError(f"config.best_checkpoint must be one of "
                     f"{BEST_CHECKPOINTS}; got {config.best_checkpoint!r}")
  if not isinstance(config.balanced_batches, bool):
    raise ValueError(f"config.balanced_batches must be True or False; got "
                     f"{config.balanced_batches!r}")
  if config.on_nonfinite not in ON_NONFINITE:
    raise ValueError(f"config.on_nonfinite must be one of {ON_NONFINITE}; "
                     f"got {config.on_nonfinite!r}")
  _validate_evaluation(config.evaluation)
  _validate_explain_loss(config.explain_loss)
  _validate_lap(config)
  _validate_pretrained(config)
  if config.evaluation.baseline not in BASELINES:
    raise ValueError(f"config.evaluation.baseline must be one of "
                     f"{tuple(BASELINES)}; got {config.evaluation.baseline!r}")



def _validate_evaluation(e: ml_collections.ConfigDict) -> None:
  """Sizes and method lists of ``config.evaluation`` (the method names are
  checked against the method table by ``lapjax.evaluation``)."""
  for name, least in EVALUATION_SIZES.items():
    value = e[name]
    if int(value) < least:
      raise ValueError(f"config.evaluation.{name} must be >= "
                       f"{least}; got {value!r}")
  if not e.methods:
    raise ValueError("config.evaluation.methods must name at least one "
                     "method")


def _validate_pretrained(config: ml_collections.ConfigDict) -> None:
  """``config.pretrained`` needs a zoo model with a card, and excludes
  ``init_from`` and LAP models (their variables have other paths)."""
  p = config.pretrained
  if p.path is None:
    if p.layout is not None:
      raise ValueError("config.pretrained.layout is set but "
                       "config.pretrained.path is not")
    return
  if not p.path:
    raise ValueError("config.pretrained.path is empty: give the checkpoint "
                     "file of config.model.name, e.g. "
                     "--config.pretrained.path=/path/to/resnet50.pth")
  if config.init_from:
    raise ValueError("config.pretrained and config.init_from both set the "
                     "initial weights; keep one")
  if config.lap.mode != "off":
    raise ValueError("config.pretrained fine-tunes a plain zoo model; it "
                     "does not combine with config.lap.mode="
                     f"{config.lap.mode!r}")
  from lapjax.models import get_card

  try:
    card = get_card(config.model.name)
  except ValueError as e:
    raise ValueError(f"config.pretrained needs a zoo model: {e}") from None
  if p.layout is not None and p.layout not in card.layouts:
    raise ValueError(f"config.pretrained.layout must be one of "
                     f"{sorted(card.layouts)} for model {card.name!r}; got "
                     f"{p.layout!r}")


LAP_MODES = ("off", "plugged", "detached")


def _validate_lap(config: ml_collections.ConfigDict) -> None:
  lap = config.lap
  if lap.mode not in LAP_MODES:
    raise ValueError(f"config.lap.mode must be one of {LAP_MODES}; got "
                     f"{lap.mode!r}")
  if lap.heads_from and (lap.mode != "plugged" or not config.init_from):
    raise ValueError("config.lap.heads_from seeds LAP-Pool heads from a "
                     "detached LAP run: it needs config.lap.mode='plugged' "
                     "and config.init_from=<that run>; got mode "
                     f"{lap.mode!r}, init_from {config.init_from!r}")
  if lap.mode == "off":
    return
  if lap.heads_from:
    heads_from_pairs(config)
  if lap.mode == "detached" and not config.init_from:
    raise ValueError("config.lap.mode='detached' explains a trained model: "
                     "set config.init_from to its run folder")
  if not lap.places:
    raise ValueError("config.lap.places must name at least one layer")
  lap_objective(config, membership=((1, -1),), expert_gamma_iar=0.1
                ).validate()


def heads_from_pairs(config: ml_collections.ConfigDict
                     ) -> tuple[tuple[str, str], ...]:
  """``config.lap.heads_from`` as ``((detached layer, place or ''), ...)``.

  Raises:
    ValueError: an entry that is not a pair of strings, a layer named
      twice, or a place that is not in ``config.lap.places`` or is named
      twice.
  """
  pairs = []
  for entry in config.lap.heads_from:
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2
        or not all(isinstance(v, str) for v in entry) or not entry[0]):
      raise ValueError("config.lap.heads_from must hold (detached layer, "
                       "LAP-Pool place) pairs of strings, e.g. (('block3', "
                       f"'pool3'),); got the entry {entry!r}")
    pairs.append((entry[0], entry[1]))
  layers = [layer for layer, _ in pairs]
  places = [place for _, place in pairs if place]
  twice = sorted({n for n in layers if layers.count(n) > 1}
                 | {n for n in places if places.count(n) > 1})
  if twice:
    raise ValueError(f"config.lap.heads_from names {twice} more than once; "
                     "one detached head per LAP-Pool")
  unknown = [p for p in places if p not in config.lap.places]
  if unknown:
    raise ValueError(f"config.lap.heads_from places {unknown} are not LAP-"
                     f"Pools of this run: config.lap.places is "
                     f"{list(config.lap.places)}")
  return tuple(pairs)


def lap_objective(config: ml_collections.ConfigDict, membership,
                  expert_gamma_iar: float | None = None):
  """The ``LAPObjective`` of ``config.lap`` for a DC ``membership``."""
  from lapjax.lap import LAPObjective

  lap = config.lap
  return LAPObjective(
      membership=tuple(tuple(int(v) for v in row) for row in membership),
      supervision=lap.supervision, gamma_min=float(lap.gamma_min),
      gamma_max=None if lap.gamma_max is None else float(lap.gamma_max),
      gamma_iar=float(expert_gamma_iar if lap.supervision == "expert"
                      else lap.gamma_iar),
      weights=(float(lap.weight),),
      concordance_weight=float(lap.concordance_weight),
      reference=lap.reference)


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
  if e.statistics not in explain_loss.STATISTICS:
    raise ValueError(f"config.explain_loss.statistics must be one of "
                     f"{explain_loss.STATISTICS}; got {e.statistics!r}")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved beside its checkpoints (``config.json``).

  Fields added to the schema after the run was trained take their defaults
  (``lapjax.train.config.base_config``).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir} is not a lapjax run folder (train "
        "first, or pass --config)")
  with open(path) as f:
    saved = json.load(f)
  return _merge(base_config(), saved)


def _merge(base: ml_collections.ConfigDict, saved: dict
           ) -> ml_collections.ConfigDict:
  for key, value in saved.items():
    current = base.get(key)
    if isinstance(value, dict):
      if not isinstance(current, ml_collections.ConfigDict):
        base[key] = ml_collections.ConfigDict()
      _merge(base[key], value)
    else:
      base[key] = tuple(value) if isinstance(value, list) else value
  return base
