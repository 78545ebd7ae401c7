r"""Quad-ImageNet-style 2x2 grids from any classification dataset (paper 003).

Command (ImageNet val as in ``imagenet_faithfulness.py``; any tfds
classification dataset works, e.g. ``--config.data.source=tfds:cifar10``
with a model trained on it)::

  python evaluate.py --config configs/protocols/quad_grid.py \
      --config.model.checkpoint=/path/to/resnet50.pth --workdir runs/quad

What it measures (paper 003, Sec. 4.1, Table 1): 256 grids, each of four
validation images of four distinct classes (drawn from the first 2,000
images), every image resized to half size into its quadrant (224 x 224
grids of 112 x 112 tiles); each grid explained for its four classes in one
call, each map with and without Attribution Lens (``C'`` = the four
classes); per map, after ReLU and an 11 x 11 Gaussian blur (sigma 2): RA
(the map's mass in its quadrant; chance 0.25), and IoU and F1 of the map
binarised at mean + std against the quadrant. Mean, std and count per
method (``<method>`` and ``<method>+AL``) in ``runs/quad/report.md``.
``:tiny``: random-weight small CNN on mock data (tests). Not measured on
real ImageNet here; the clue-benchmark grid game is in
docs/studies/grid_game.md.
"""

import ml_collections

from configs.protocols._tiny import make_tiny
from lapjax.evaluation.protocols import base_protocol_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Quad grids; ``arg`` None or 'tiny'."""
  c = base_protocol_config()
  c.protocol = "quad_grid"
  c.model.name = "resnet50"
  c.layer = "stage4"
  c.data.source = "tfds:imagenet2012"
  c.data.split = "validation"
  c.methods = ("grad_cam", "guided_backprop", "guided_grad_cam",
               "input_x_gradient", "integrated_gradients", "lrp")
  c.num_grids = 256
  c.pool_images = 2_000
  c.batch_size = 8
  if arg == "tiny":
    make_tiny(c)
    c.methods = ("grad_cam", "input_x_gradient")
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny'")
  return c
