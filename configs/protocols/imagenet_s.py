r"""Localisation on ImageNet-S pixel masks (paper 002's LaFAM protocol).

Command (ImageNet-S from https://github.com/LUSSeg/ImageNet-S, its own
layout: ``ImageNetS919/validation/<wnid>/*.JPEG`` and
``ImageNetS919/validation-segmentation/<wnid>/*.png``; tfds has no
ImageNet-S; ``class_list``: ImageNet's 1,000 wnids in the model's class
order, one a line, e.g. the ``LOC_synset_mapping.txt`` of ImageNet)::

  python evaluate.py --config configs/protocols/imagenet_s.py \
      --config.model.checkpoint=/path/to/resnet50.pth \
      --config.data.root=/data/ImageNetS919 \
      --config.data.class_list=/data/LOC_synset_mapping.txt \
      --workdir runs/imagenet_s

What it measures, per method, on every validation image with a mask (the
card's transform for image and mask, nearest for the mask; object = every
pixel whose id is neither 0, "other", nor 1000, "ignored"), each image
explaining its true class: the localisation table of docs/evaluation.md
(pointing game, relevance mass and rank accuracy, top-k intersection, ROC
AUC, IoU, F1, region attribution, sparseness) and the pointing game with
a 15 px tolerance. Paper 002 reports on ImageNet-S (supervised ResNet-50):
Grad-CAM PG 0.940 vs LaFAM 0.907, top-k 0.751 vs 0.691, AUC 0.831 vs
0.805 (REFERENCE-NOTES; their top-k keeps 1,000 pixels, ours 5 %).
``:tiny``: a random-weight small CNN on a generated folder (tests). Not
measured on real ImageNet-S here.
"""

import ml_collections

from configs.protocols._tiny import make_tiny
from lapjax.evaluation.protocols import base_protocol_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """ImageNet-S localisation; ``arg`` None or 'tiny'."""
  c = base_protocol_config()
  c.protocol = "localization"
  c.model.name = "resnet50"
  c.layer = "stage4"
  c.data.source = "image_dir"
  c.data.split = "validation"
  c.data.root = ""                # required: the ImageNetS919 folder
  c.methods = ("grad_cam", "lafam", "integrated_gradients",
               "input_x_gradient")
  if arg == "tiny":
    make_tiny(c)
    c.methods = ("grad_cam", "lafam")
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny'")
  return c
