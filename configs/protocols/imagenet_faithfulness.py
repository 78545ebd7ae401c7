r"""Faithfulness on ImageNet val (paper 004 Sec. 4.1; keep-top-k, paper 000).

Command (ImageNet prepared once by tfds from the two archives you
download yourself; lapjax downloads nothing)::

  tfds build imagenet2012 --data_dir ~/tensorflow_datasets \
      --manual_dir ~/imagenet_archives --file_format array_record
  python evaluate.py --config configs/protocols/imagenet_faithfulness.py \
      --config.model.checkpoint=/path/to/resnet50.pth --workdir runs/in_faith

What it measures, per method, over the 50,000 validation images (the
card's transform: shorter side to 256, centre crop 224, bilinear; the
model normalises with the card's mean and std), each image explaining the
model's prediction (``--config.target=label`` for the true class): POS and
NEG (AUC of top-1 accuracy as 0-90 % of the pixels, most / least relevant
first, are set to black; lower / higher is better), NPD = NEG - POS, INS
and DEL (AUC of the class probability over 21 points, insertion from black
/ deletion to black), IDD = INS - DEL, SIC and AIC (blurred reveal curves
against WebP information, Kapishnikov et al. 2019), and keep-top-k: the
fraction of images still classified as the prediction with only the top
10 / 30 / 50 / 70 / 90 % of their pixels kept. Mean, std and count of
each in ``runs/in_faith/report.md``; resumable (``runs/in_faith/eval``).

A ``manual_dir`` without the archives fails with tfds's message plus the
two files (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``) and
where they go. ``:tiny`` runs the pipeline on a random-weight small CNN
(tests, with ``tfds.testing.mock_data``). Not measured on real ImageNet
here (no ImageNet on the development machine).
"""

import ml_collections

from configs.protocols._tiny import make_tiny
from lapjax.evaluation.protocols import base_protocol_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """ImageNet val faithfulness; ``arg`` None or 'tiny'."""
  c = base_protocol_config()
  c.protocol = "faithfulness"
  c.model.name = "resnet50"        # any zoo name; its card's cam_layer:
  c.layer = "stage4"
  c.data.source = "tfds:imagenet2012"
  c.data.split = "validation"
  c.data.image_size = (224, 224)
  c.data.resize_size = 256
  c.methods = ("grad_cam", "integrated_gradients", "input_x_gradient",
               "guided_backprop", "rise", "sloc")
  c.target = "prediction"
  c.batch_size = 32
  if arg == "tiny":
    make_tiny(c)
    c.methods = ("grad_cam", "input_x_gradient")
  elif arg is not None:
    raise ValueError(f"unknown config variant {arg!r}; use 'tiny'")
  return c
