r"""Two-image composite insertion / deletion (paper 003, Tables 2 and 12).

Command (images with object masks, for the paper's filter; ImageNet-S
here, PartImageNet in the paper; a source without masks skips the
filter)::

  python evaluate.py --config configs/protocols/two_image.py \
      --config.model.checkpoint=/path/to/resnet50.pth \
      --config.data.root=/data/ImageNetS919 \
      --config.data.class_list=/data/LOC_synset_mapping.txt \
      --workdir runs/two_image

What it measures (``lapjax.evaluation.composites``): 256 composites, each
the central halves (width) of two images of distinct classes whose object
lies for at least 80 % in that half, side by side (224 x 224, no resize);
each explained for both classes in one call, each map as it is and
refined by Attribution Lens over the two classes; insertion (reveal the
top pixels into the blurred composite) and deletion (blur them away), 21
points, the explained class's softmax probability, AUC in percent. Per
method: INS, DEL, IDD with and without the lens, and the mean paired
difference (lens - base) with its standard error and the relative change
(paper: +8 to +11 % insertion AUC for CNNs). ``:tiny``: random-weight
small CNN on mock ``tfds`` data (tests). On the clue benchmark:
``studies/two_image_insertion.py`` and docs/studies/two_image_insertion.md.
"""

import ml_collections

from configs.protocols._tiny import make_tiny
from lapjax.evaluation.protocols import base_protocol_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Two-image composites; ``arg`` None or 'tiny'."""
  c = base_protocol_config()
  c.protocol = "two_image"
  c.model.name = "resnet50"
  c.layer = "stage4"
  c.data.source = "image_dir"
  c.data.split = "validation"
  c.data.root = ""
  c.methods = ("integrated_gradients", "guided_backprop", "input_x_gradient",
               "guided_grad_cam", "grad_cam")
  c.num_composites = 256
  c.pool_images = 5_000
  c.batch_size = 8
  if arg == "tiny":
    make_tiny(c)
    c.data.source = "tfds:imagenet2012"
    c.methods = ("grad_cam", "input_x_gradient")
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny'")
  return c
