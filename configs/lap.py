r"""LAP (paper 000) on the clue benchmark: vanilla, weakly supervised,
expert-supervised and detached LAPs, and the ablations of the paper's
Table 3.

``configs/lap.py:NAME[,multi][,tiny]``, NAME one of:

* ``vanilla``: the small CNN, no LAP (the baseline, and the backbone of
  ``lap_detached``).
* ``lap_wsl``: 4 LAP-Pools shallow to deep (``pool1 pool2 pool3
  global_pool``), weak supervision with the paper's RSNA setting
  (gamma_MinAR 0.1, gamma_MaxAR 0.5, gamma_IAR 0.1, weight 10 per LAP,
  concordance 1 per pair, Adam lr 1e-4 and weight decay 1e-6 in the paper;
  here AdamW with the default schedule, identical for every variant).
* ``lap_bbl``: the same model with the expert (box) loss of Eq. 8.
* ``lap_detached``: detached LAPs on ``block1 .. block4`` of the frozen
  ``vanilla`` run (``config.init_from``, default ``runs/lap_vanilla``).
* ``lap_finetune``: selective fine-tuning, the paper's third mode (Sec.
  2.3, App. D.1.3): the ``vanilla`` backbone with LAP-Pools where
  ``lap_detached`` has its LAPs (``block{i}`` feeds ``pool{i}``, the last
  block ``global_pool``), initialised from the ``lap_detached`` run
  (``config.init_from``, default ``runs/lap_det``; backbone and LAP heads,
  ``config.lap.heads_from``), then trained with cross-entropy and the LAP
  losses from the shallowest LAP-Pool on (the LAP-Pools, the blocks after
  it and the classifier), the earlier blocks frozen; a constant learning
  rate of a tenth of the default, and the checkpoint of the best
  validation accuracy kept (``config.best_checkpoint``).
* ``naive_v1``, ``naive_v2``, ``hybrid``: Table 3's ablations (MaxAR off,
  gamma_IAR 1; gamma_MinAR the top element / 1 / 0.1).

``binary`` (default: clue present / absent, one DC, like pneumonia) or
``multi`` (4 classes, 3 one-vs-others DCs; the multi-class LAP setting of
the paper uses 2 LAPs, ``pool3 global_pool``, MaxAR off and weight 0.1).
``tiny`` shrinks everything for tests. Commands::

  python train.py --config configs/lap.py:vanilla --workdir runs/lap_vanilla
  python train.py --config configs/lap.py:lap_wsl --workdir runs/lap_wsl
  python train.py --config configs/lap.py:lap_detached --workdir runs/lap_det
  python train.py --config configs/lap.py:lap_finetune --workdir runs/lap_ft
  python evaluate.py --workdir runs/lap_wsl

The multi-seed study (``studies/lap_study.py``) trains every variant and
writes ``docs/lap_study/``.
"""

import ml_collections

from configs import default

VARIANTS = ("vanilla", "lap_wsl", "lap_bbl", "lap_detached", "lap_finetune",
            "naive_v1", "naive_v2", "hybrid")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config of ``arg = 'NAME[,multi][,tiny]'``."""
  parts = (arg or "lap_wsl").split(",")
  name, flags = parts[0], set(parts[1:])
  if name not in VARIANTS or not flags <= {"multi", "binary", "tiny"}:
    raise ValueError(f"unknown lap config {arg!r}: use NAME[,multi][,tiny] "
                     f"with NAME in {VARIANTS}")
  c = default.get_config("tiny" if "tiny" in flags else None)
  multi = "multi" in flags
  c.data.binary = not multi
  blocks = len(c.model.kwargs.widths)
  pools = tuple(f"pool{i}" for i in range(1, blocks)) + ("global_pool",)
  c.evaluation.methods = ("gradient", "input_x_gradient",
                          "integrated_gradients", "guided_backprop",
                          "grad_cam", "guided_grad_cam", "lrp", "deeplift",
                          "relevance_cam")
  c.evaluation.lap_report = True
  if name == "vanilla":
    return c
  c.evaluation.methods += ("lap",)
  c.lap.mode = "plugged"
  c.lap.places = pools[-2:] if multi else pools
  if multi:
    c.lap.gamma_max = None
    c.lap.weight = 0.1
  if name == "lap_bbl":
    c.lap.supervision = "expert"
  elif name == "lap_detached":
    c.lap.mode = "detached"
    c.lap.places = tuple(f"block{i}" for i in range(1, blocks + 1))
    if multi:
      c.lap.places = c.lap.places[-2:]
    c.init_from = "runs/lap_vanilla" + ("_multi" if multi else "")
    c.evaluation.layer = f"backbone/{c.evaluation.layer}"
  elif name == "lap_finetune":
    detached = get_config(",".join(["lap_detached", *sorted(flags)]))
    layers = detached.lap.places
    c.lap.places = tuple(pools[int(layer[len("block"):]) - 1]
                         for layer in layers)
    c.lap.heads_from = tuple(zip(layers, c.lap.places))
    c.init_from = "runs/lap_det" + ("_multi" if multi else "")
    first = int(layers[0][len("block"):])
    c.trainable = (c.lap.places + tuple(
        f"block{i}" for i in range(first + 1, blocks + 1)) + ("head",))
    c.optimizer.schedule = "constant"
    c.optimizer.learning_rate /= 10
    c.best_checkpoint = "validation_accuracy"
  elif name in ("naive_v1", "naive_v2", "hybrid"):
    c.lap.gamma_max = None
    c.lap.gamma_iar = 1.0
    c.lap.gamma_min = {"naive_v1": 1e-9, "naive_v2": 1.0, "hybrid": 0.1}[name]
  return c
