r"""A small Vision Transformer on the 4-class clue benchmark, from scratch.

Command::

  python train.py --config configs/vit.py --workdir runs/vit
  python evaluate.py --workdir runs/vit

The model is ``lapjax.models.VisionTransformer`` (``config.model.name =
'vit'``): 8 x 8 patches of the 64 x 64 images (an 8 x 8 token grid plus
the class token), width 64, 4 blocks of 4 heads, MLP width 128, exact
GELU, no pretrained weights. Its token taps come out of ``from_flax`` as
``[B, 8, 8, 64]`` grids, so every CNN-style method of the evaluation runs
unchanged; CAMs use ``block4/norm1``, the normalised input of the last
block (the last block's own patch tokens do not reach the class-token head,
docs/vit.md). Guided backprop and guided Grad-CAM are left out: a ViT is
not a ReLU network (``guided_classifier`` refuses it by name).

Measured (2026-11-30, 2-core CPU shared with other jobs): test accuracy
0.713 (validation 0.728) after the 2,000 steps, in 74 minutes at 17 to 86
images/s; it does not reach the 0.90 the issue asks for, the training
accuracy still rising when the learning rate reached zero (docs/vit.md).
Variants (``configs/vit.py:NAME``):

* ``restart``: a warm restart (Loshchilov & Hutter, "SGDR", ICLR 2017) of
  the 2,000-step run: its parameters (``init_from='runs/vit'``, optimiser
  state fresh), a second cosine cycle of 600 steps from a peak of 1e-3
  after 30 warm-up steps, checkpoints every 200 steps. Run once, stopped
  at step 300 of 600 for time: the training accuracy stayed at 0.69-0.74
  (docs/vit.md has the curve)::

    python train.py --config configs/vit.py:restart --workdir runs/vit_restart

* ``cycle2``: the same warm restart with a lower peak and a full decay:
  the 2,000-step run's parameters, a second cosine cycle of 1,500 steps
  from a peak of 5e-4 after 50 warm-up steps (3,500 steps, 224,000 images
  in all), checkpoints every 250 steps. Measured (2026-11-30, same
  machine, load average 10 to 12): test accuracy 0.742 (first cycle:
  0.713), validation 0.745 (0.728), training accuracy 0.73 -> 0.81 (means
  of the first and last 250 steps), 35 minutes at 24 to 67 images/s; the
  best clue ViT so far, still short of 0.90 (docs/vit.md)::

    python train.py --config configs/vit.py:cycle2 --workdir runs/vit2

* ``long``: the same ViT for an accelerator: 6,000 steps of batch 256
  (1.5 million images, 24 times the first run's), 50,000 training images,
  a peak of 1e-3 after 500 warm-up steps::

    python train.py --config configs/vit.py:long --workdir runs/vit_long

  Measured on an NVIDIA H200 (2026-11-30): under 3 minutes at 27,000
  images/s; training accuracy 0.97 at the end, validation 0.873, test
  0.8615: it now overfits its 50,000 training images (docs/vit.md).

* ``wide``: ``long`` with a wider, deeper ViT: width 128, 6 blocks of 4
  heads, MLP width 256 (CAMs at ``block6/norm1``)::

    python train.py --config configs/vit.py:wide --workdir runs/vit_wide

  Measured on the same H200, beside ``long``: 21,000 images/s, training
  accuracy 0.996, validation 0.884, test **0.878**, the best clue ViT,
  still short of 0.90.

* ``tiny``: 32 x 32 images (a 4 x 4 grid), 2 blocks, 12 steps, a few
  seconds; accuracy near chance: it proves the pipeline, for tests::

    python train.py --config configs/vit.py:tiny --workdir runs/vit_tiny

Every field is documented in ``lapjax/train/config.py``.
"""

import ml_collections

from configs import default
from lapjax.train.config import base_config

# The CNN-style methods of evaluation/methods.py (guided_backprop and
# guided_grad_cam need ReLU networks) and the transformer methods.
METHODS = ("gradient", "input_x_gradient", "integrated_gradients",
           "smoothgrad", "grad_cam", "grad_cam_plus_plus", "layer_cam",
           "score_cam", "occlusion", "rise", "lafam", "sloc",
           "attention_rollout", "grad_rollout", "t_attr", "bi_attn", "t_attn",
           "inflow")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The clue ViT config; ``arg`` is None, 'restart', 'cycle2', 'long',
  'wide' or 'tiny'."""
  if arg not in (None, "restart", "cycle2", "long", "wide", "tiny"):
    raise ValueError(f"unknown config variant {arg!r}; use 'restart', "
                     "'cycle2', 'long', 'wide' or 'tiny'")
  c = base_config()
  c.model.name = "vit"
  c.model.kwargs = ml_collections.ConfigDict({
      "patch_size": 8,          # 8 x 8 pixels per token
      "embed_dim": 64,          # token width D
      "depth": 4,               # blocks block1 .. block4
      "num_heads": 4,           # D / heads = 16 per head
      "mlp_dim": 128,           # MLP hidden width
      "image_size": (64, 64),   # the position embeddings' grid: 8 x 8
  })
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.05
  c.batch_size = 64
  c.num_steps = 2_000
  c.checkpoint_every = 500
  c.evaluation.layer = "block4/norm1"
  c.evaluation.methods = METHODS
  c.evaluation.sanity_methods = ("gradient", "grad_cam")

  if arg == "restart":
    c.init_from = "runs/vit"
    c.num_steps = 600
    c.optimizer.warmup_steps = 30
    c.checkpoint_every = 200
    c.log_every = 25
  if arg == "cycle2":
    c.init_from = "runs/vit"
    c.num_steps = 1_500
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 50
    c.checkpoint_every = 250
    c.log_every = 25
  if arg in ("long", "wide"):
    c.data.num_train = 50_000
    c.batch_size = 256
    c.num_steps = 6_000
    c.optimizer.warmup_steps = 500
    c.checkpoint_every = 1_000
    c.log_every = 100
  if arg == "wide":
    c.model.kwargs.update({"embed_dim": 128, "depth": 6, "mlp_dim": 256})
    c.evaluation.layer = "block6/norm1"
  if arg == "tiny":
    default.shrink_to_tiny(c)
    c.model.kwargs.embed_dim = 16
    c.model.kwargs.depth = 2
    c.model.kwargs.num_heads = 2
    c.model.kwargs.mlp_dim = 32
    c.model.kwargs.image_size = (32, 32)
    c.evaluation.layer = "block2/norm1"
  return c
