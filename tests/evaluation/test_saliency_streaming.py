"""Paper 001's saliency section streamed: the in-memory numbers on the same
images, over padded batches, undefined values counted, resumable state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from lapjax import from_flax
from lapjax.classifier import Classifier
from lapjax.data import sources
from lapjax.evaluation import saliency_report, streaming
from lapjax.train import sharding
from lapjax.train.loop import build_model
from lapjax.train.state import create_train_state

LAYER = "block2"
NUM_IMAGES = 40          # batches of 16: the last one is padded (8 of 16)


class _BlankedSource:
  """The test split with every fifth image (from the second) blanked."""

  def __init__(self, source):
    self.source = source
    self.num_examples = source.num_examples

  def get(self, index):
    batch = dict(self.source.get(index))
    blank = np.asarray(index) % 5 == 1
    batch["image"] = np.where(blank[:, None, None, None], 0.0,
                              batch["image"]).astype(np.float32)
    return batch


def _blind_to_blank_images(clf):
  """``clf`` whose logits are 0 on all-zero images: their Grad-CAM is a
  constant map, with no mass (all-saliency precision undefined, NaN)."""
  def apply(x, deltas=None):
    logits, features = clf.apply(x, deltas)
    seen = (jnp.abs(x).max(axis=(1, 2, 3)) > 0)[:, None]
    return logits * seen, features
  return Classifier(apply, clf.layers)


@pytest.fixture(scope="module")
def setup():
  config = default.get_config("tiny")
  config.data.num_test = NUM_IMAGES
  source, info = sources.make_source(config.data, "test")
  model = build_model(config, info)
  state = create_train_state(model, optax.sgd(0.1), jax.random.key(3),
                             info["image_shape"])
  mesh = sharding.make_mesh()
  variables = sharding.put_replicated(
      {"params": state.params, "batch_stats": state.batch_stats}, mesh)
  clf = _blind_to_blank_images(from_flax(model, variables, layers=[LAYER]))
  return _BlankedSource(source), clf, mesh


def _stream(setup, folder, batch_size, **kwargs):
  source, clf, mesh = setup
  state = streaming.EvaluationState(str(folder), {"test": 1})
  state.restore()
  batches = streaming.batch_slices(NUM_IMAGES, batch_size)
  bar = streaming.Progress(len(batches), 0, enabled=False)
  section = saliency_report.stream_saliency(
      state, clf, source, batches, mesh, bar, batch_size=batch_size,
      layer=LAYER, fraction=0.5, save_every=1, **kwargs)
  return section, state


def test_streamed_saliency_equals_the_in_memory_section(setup, tmp_path):
  source, clf, _ = setup
  batch = source.get(np.arange(NUM_IMAGES))
  want = saliency_report.saliency_evaluation(clf, batch, layer=LAYER,
                                             fraction=0.5)
  got, _ = _stream(setup, tmp_path / "a", 16)
  assert got["n_images"] == NUM_IMAGES
  assert list(got["scores"]) == list(want["scores"])
  scored = int(np.sum((batch["label"] > 0)
                      & batch["boxes_valid"].any(-1)))
  assert 0 < scored < NUM_IMAGES      # background images are left out
  # Blanked images with a clue have no saliency mass: NaN, counted.
  blank = np.arange(NUM_IMAGES) % 5 == 1
  no_mass = int(np.sum(blank & (batch["label"] > 0)
                       & batch["boxes_valid"].any(-1)))
  assert no_mass > 0 and want["scores"]["all_precision"]["nan"] == no_mass
  for metric, w in want["scores"].items():
    g = got["scores"][metric]
    assert (g["n"], g["nan"]) == (w["n"], w["nan"]), metric
    assert g["n"] + g["nan"] == scored, metric
    np.testing.assert_allclose([g["mean"], g["std"]], [w["mean"], w["std"]],
                               rtol=1e-6, atol=1e-6, err_msg=metric)


def test_streamed_saliency_resumes(setup, tmp_path):
  """A state saved after the first batch resumes to the numbers of an
  uninterrupted run."""
  source, clf, mesh = setup
  full, _ = _stream(setup, tmp_path / "full", 8)
  # The first of the 5 batches only, then a fresh state from its file.
  state = streaming.EvaluationState(str(tmp_path / "part"), {"test": 1})
  batches = streaming.batch_slices(NUM_IMAGES, 8)
  bar = streaming.Progress(1, 0, enabled=False)
  saliency_report.stream_saliency(state, clf, source, batches[:1], mesh, bar,
                                  batch_size=8, layer=LAYER, fraction=0.5,
                                  save_every=1)
  resumed, state = _stream(setup, tmp_path / "part", 8)
  assert state.next_batch["saliency"] == len(batches)
  for metric, f in full["scores"].items():
    r = resumed["scores"][metric]
    assert (r["n"], r["nan"]) == (f["n"], f["nan"])
    np.testing.assert_allclose([r["mean"], r["std"]], [f["mean"], f["std"]],
                               rtol=1e-9)
