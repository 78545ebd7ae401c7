"""The configs test_multihost.py runs in one and in several processes."""

import ml_collections

from configs import default


def train_config() -> ml_collections.ConfigDict:
  """The tiny run: 12 steps of 16 images (8 per process with two)."""
  return default.get_config("tiny")


def evaluation_config() -> ml_collections.ConfigDict:
  """The tiny run's evaluation on 32 images in batches of 8: a method of
  each classifier kind and path (SmoothGrad: plain gradients, its noise
  drawn on the sharded batch; guided backprop; Grad-CAM at a tapped
  layer), the faithfulness table and the randomisation check. Every
  method costs each process a compilation; the methods' maps are checked
  elsewhere (tests/attribution, test_evaluate.py)."""
  config = default.get_config("tiny")
  config.evaluation.update({
      "methods": ("smoothgrad", "guided_backprop", "grad_cam"),
      "sanity_methods": ("grad_cam",), "sanity_keys": 1, "num_images": 32,
      "batch_size": 8, "faithfulness_images": 4, "figure_images": 2})
  return config
