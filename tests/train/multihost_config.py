"""The configs test_multihost.py runs in one and in several processes."""

import ml_collections

from configs import default


def train_config() -> ml_collections.ConfigDict:
  """The tiny run: 12 steps of 16 images (8 per process with two)."""
  return default.get_config("tiny")


def evaluation_config() -> ml_collections.ConfigDict:
  """The tiny run's evaluation on 32 images in batches of 8: methods of
  every kind (SmoothGrad's noise drawn on the sharded batch), the
  faithfulness table and the randomisation check."""
  config = default.get_config("tiny")
  config.evaluation.update({
      "methods": ("gradient", "smoothgrad", "guided_backprop", "grad_cam",
                  "occlusion"),
      "sanity_methods": ("grad_cam",), "sanity_keys": 1, "num_images": 32,
      "batch_size": 8, "faithfulness_images": 4, "figure_images": 2})
  return config
