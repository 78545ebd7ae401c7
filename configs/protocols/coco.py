r"""Localisation on MS-COCO val2017 with instance masks (paper 003).

Command (COCO as it ships: ``val2017/`` and
``annotations/instances_val2017.json``; tfds's ``coco`` builder needs
TensorFlow, so lapjax reads the files, ``lapjax.data.coco``; the model must
predict COCO's 80 categories, e.g. a zoo backbone fine-tuned on them,
passed as its run folder)::

  python evaluate.py --config configs/protocols/coco.py \
      --config.model.run=runs/coco_finetune \
      --config.data.root=/data/coco/val2017 \
      --config.data.annotations=/data/coco/annotations/instances_val2017.json \
      --workdir runs/coco_loc

What it measures, per method, over the whole validation set (224 x 224,
shorter side to 256 then centre crop; masks follow, nearest): every
category present in an image is explained, one map each, against the
union of its instance masks (polygons rasterised; crowd annotations left
out); as paper 003, objects under 1 % of the image and (image, class)
pairs the model gives a probability under 1e-4 are left out. Metrics: the
pointing game with a 15 px tolerance and the localisation table of
docs/evaluation.md (relevance mass, relevance rank, IoU, F1, region
attribution (paper 003's RA), ...). ``:tiny``: a random-weight small CNN on
a generated COCO folder (tests). Not measured on real COCO here.
"""

import ml_collections

from configs.protocols._tiny import make_tiny
from lapjax.evaluation.protocols import base_protocol_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """COCO localisation; ``arg`` None or 'tiny'."""
  c = base_protocol_config()
  c.protocol = "localization"
  c.model.checkpoint = ""
  c.model.run = "runs/coco_finetune"   # a run trained on COCO's classes
  c.model.num_classes = 80
  c.data.source = "coco"
  c.data.root = ""                   # required: .../val2017
  c.data.annotations = ""            # required: instances_val2017.json
  c.data.min_object_fraction = 0.01
  c.min_confidence = 1e-4
  c.methods = ("grad_cam", "guided_backprop", "guided_grad_cam",
               "input_x_gradient", "integrated_gradients")
  c.pointing_tolerance = 15
  if arg == "tiny":
    make_tiny(c)
    c.model.run = ""
    c.model.num_classes = 3
    c.min_confidence = 0.0
    c.methods = ("grad_cam",)
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny'")
  return c
