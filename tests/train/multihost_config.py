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
  layer) and the faithfulness table (on the maps gathered from every
  device and process). Every method costs each process a compilation;
  the methods' maps are checked elsewhere (tests/attribution,
  test_evaluate.py). No randomisation check: it runs on the first images
  held whole by every process, not on the mesh, and its programs (the
  re-initialisation and the maps) were a third of the evaluation's
  compilation time (docs/test-time.md, session 6); its report is checked
  in test_evaluate.py."""
  config = default.get_config("tiny")
  config.evaluation.update({
      "methods": ("smoothgrad", "guided_backprop", "grad_cam"),
      "sanity_methods": (), "num_images": 32, "batch_size": 8,
      "faithfulness_images": 4, "figure_images": 2})
  return config
