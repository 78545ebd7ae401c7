r"""Fine-tunes a pretrained ImageNet ResNet-50 on the 4-class clue benchmark.

Command (the checkpoint is a local file; lapjax downloads nothing)::

  python train.py --config configs/finetune.py --workdir runs/finetune \
      --config.pretrained.path=/path/to/resnet50.pth
  python evaluate.py --workdir runs/finetune

What it does: builds torchvision's ResNet-50 (``lapjax.models``), loads the
state dict (torchvision or Hugging Face names, ``.pth`` / ``.safetensors``
/ ``.npz``), re-initialises the 1000-class head for the benchmark's 4
classes (``load_pretrained`` logs which variables), and trains every layer
with AdamW at a fine-tuning learning rate on 128x128 clue images. The model
takes images in [0, 1] and normalises them with the card's ImageNet mean
and std itself (``lapjax.train.pretrained.Normalized``), so the evaluation
and the attribution methods see the same images as for the other configs.
Grad-CAM and the other CAMs explain ``stage4`` (the card's CAM layer).
``--config.trainable="('head',)"`` trains the head alone (a linear probe:
the backbone and its BatchNorm statistics stay bit-identical). Meant for an
accelerator (ResNet-50 at 128x128); its accuracy has not been measured.

Variants, chosen with ``configs/finetune.py:NAME``:

* ``tiny``: the reduced-size torchvision WideResNet (bottlenecks of
  ``wide_resnet50_2``, stages of 1, 2, 1, 1 blocks, 8-channel stem) of
  ``tests/fixtures/zoo/resnet_wide.pth`` (``tools/fixtures/make_resnet.py``)
  on 32x32 images for 4 steps (training well under a minute on a 2-core
  CPU; accuracy at chance): it proves the fine-tuning pipeline runs end to
  end, for tests and CI::

    python train.py --config configs/finetune.py:tiny --workdir runs/ft_tiny

Every field is documented in ``lapjax/train/config.py``.
"""

import os

import ml_collections

from lapjax.train.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CHECKPOINT = os.path.join(ROOT, "tests", "fixtures", "zoo",
                               "resnet_wide.pth")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the fine-tuning config; ``arg`` is None or 'tiny'."""
  c = base_config()
  c.model.name = "resnet50"
  c.pretrained.path = ""        # required: --config.pretrained.path=...
  c.data.image_size = (128, 128)
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.batch_size = 64
  c.num_steps = 1_000
  c.checkpoint_every = 250
  c.evaluation.layer = "stage4"
  c.explain_loss.layer = "stage4"

  if arg == "tiny":
    c.model.name = "wide_resnet50_2"
    c.model.kwargs = ml_collections.ConfigDict({
        "stage_sizes": (1, 2, 1, 1), "width": 8,
        "stage_widths": (4, 4, 8, 8)})
    c.pretrained.path = TINY_CHECKPOINT
    c.data.image_size = (32, 32)
    c.data.min_clue_fraction = 0.04
    c.data.max_clue_fraction = 0.2
    c.data.num_train = 64
    c.data.num_validation = 16
    c.data.num_test = 16
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 1
    c.batch_size = 8
    c.num_steps = 4
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval_batch_size = 16
    c.evaluation.num_images = 4
    c.evaluation.figure_images = 2
    c.evaluation.ig_steps = 2
    c.evaluation.rise_masks = 8
    c.evaluation.smoothgrad_samples = 2
    c.evaluation.sanity_images = 2
    c.evaluation.sanity_keys = 1
    c.evaluation.sloc_masks = 8
    c.evaluation.sloc_steps = 4
    c.evaluation.sloc_calibration_images = 2
    c.evaluation.faithfulness_images = 2
    c.evaluation.faithfulness_steps = 2
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny'")
  return c
