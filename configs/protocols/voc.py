r"""Localisation on PASCAL VOC 2007 / 2012 with boxes (papers 002, 003).

Command (VOC prepared by tfds; the model must predict VOC's 20 classes,
e.g. a zoo backbone fine-tuned with ``configs/finetune.py`` on
``--config.data.name=tfds:voc/2007``, passed as its run folder)::

  tfds build voc/2007 --data_dir ~/tensorflow_datasets \
      --file_format array_record
  python evaluate.py --config configs/protocols/voc.py \
      --config.model.run=runs/voc_finetune --workdir runs/voc_loc
  # VOC 2012: --config.data.source=tfds:voc/2012 --config.data.split=validation

What it measures, per method, over the test split (224 x 224, shorter side
to 256 then centre crop; boxes follow): every class present in an image is
explained, one map each (multi-label targets: ``[B, L]``, at most 8
classes an image), against the union of that class's boxes: the pointing
game with a 15 px tolerance (a hit when a maximal pixel lies within 15
pixels of a box, papers 002/003), and the localisation table of
``docs/evaluation.md`` (pointing game without tolerance, relevance mass
and relevance rank accuracy, top-k intersection, ROC AUC, IoU and F1 of
the positive part binarised at mean + std, region attribution,
sparseness). Mean, std and count per method and metric in
``runs/voc_loc/report.md``. ``:tiny``: a random-weight small CNN on mock
data (tests). Not measured on real VOC here.
"""

import ml_collections

from configs.protocols._tiny import make_tiny
from lapjax.evaluation.protocols import base_protocol_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """VOC localisation; ``arg`` None or 'tiny'."""
  c = base_protocol_config()
  c.protocol = "localization"
  c.model.checkpoint = ""
  c.model.run = "runs/voc_finetune"   # a run trained on VOC's classes
  c.model.num_classes = 20
  c.data.source = "tfds:voc/2007"
  c.data.split = "test"
  c.data.multi_label = True
  c.methods = ("grad_cam", "lafam", "guided_backprop", "integrated_gradients",
               "input_x_gradient")
  c.pointing_tolerance = 15
  if arg == "tiny":
    make_tiny(c)
    c.model.run = ""
    c.model.num_classes = 20
    c.methods = ("grad_cam", "lafam")
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny'")
  return c
