"""The reduced settings every protocol's ``tiny`` variant shares."""

import ml_collections


def make_tiny(c: ml_collections.ConfigDict) -> None:
  """Random-weight small CNN on 32 x 32 images, a handful of images and
  the cheapest method settings: runs a protocol end to end in seconds
  (on ``tfds.testing.mock_data`` in the tests)."""
  c.model.name = "small_cnn"
  c.model.kwargs = ml_collections.ConfigDict({"widths": (8, 16)})
  c.model.checkpoint = ""
  c.model.random_init = True
  c.layer = "block2"
  c.data.image_size = (32, 32)
  c.data.resize_size = 36
  c.data.num_images = 6
  c.batch_size = 4
  c.save_every = 1
  c.ig_steps = 4
  c.faithfulness_steps = 4
  c.pool_images = 12
  c.num_grids = 3
  c.num_composites = 3
