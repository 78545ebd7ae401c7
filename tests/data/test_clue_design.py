"""The benchmark's design claim: the clue is the only class evidence.

A CNN trained on images rendered with their clues erased (the same
backgrounds, distractors and noise) stays at chance on held-out images, while
the same training on the normal images learns the task (positive control).
"""

import functools

import jax
import numpy as np
import optax
import pytest

from lapjax.data import batching, clues
from lapjax.data.sources import ClueSource
from lapjax.models import SmallCNN
from lapjax.train import train_step
from lapjax.train.state import create_train_state

CFG = clues.CluesConfig(image_size=(32, 32), min_clue_fraction=0.04,
                        max_clue_fraction=0.2)
NUM_TEST = 512


def _test_accuracy(draw_clues: bool) -> float:
  train = ClueSource(CFG, "train", 4096, draw_clues=draw_clues)
  test = ClueSource(CFG, "test", NUM_TEST, draw_clues=draw_clues)
  model = SmallCNN(CFG.num_classes, widths=(16, 32, 32))
  tx = optax.adam(3e-3)
  state = create_train_state(model, tx, jax.random.key(0), (32, 32, 3))
  step = jax.jit(functools.partial(train_step, model=model, tx=tx))
  for s in range(500):
    b = batching.train_batch(train, 32, s, seed=0)
    state, _ = step(state, {"image": b["image"], "label": b["label"]})
  b = test.get(np.arange(NUM_TEST))
  logits = model.apply({"params": state.params,
                        "batch_stats": state.batch_stats}, b["image"])
  return float(np.mean(np.argmax(logits, -1) == b["label"]))


@pytest.mark.parametrize("draw_clues", [False, True])
def test_only_the_clues_carry_class_information(draw_clues):
  chance = 1 / CFG.num_classes
  four_sigma = 4 * np.sqrt(chance * (1 - chance) / NUM_TEST)
  accuracy = _test_accuracy(draw_clues)
  if draw_clues:
    assert accuracy > chance + 0.3, accuracy           # it can learn
  else:
    assert accuracy < chance + four_sigma, accuracy    # nothing to learn
