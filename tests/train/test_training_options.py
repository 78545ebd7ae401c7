"""Paper 000's training options: class-balanced batches and keeping the
checkpoint of the best validation metric."""

import json
import shutil

import jax
import numpy as np
import optax
import pytest

from configs import default
from lapjax.data import batching, sources
from lapjax.train import load_state, loop, sharding, train_and_evaluate
from lapjax.train.validation import validation_metric

# 90 examples of class 0, 10 of class 1, shuffled.
LABELS = np.random.default_rng(0).permutation(np.repeat([0, 1], [90, 10]))


def test_balanced_batches_hold_equal_counts_per_class():
  for step in range(30):
    idx = batching.balanced_train_indices(LABELS, 2, 8, step, seed=3)
    assert idx.shape == (8,)
    np.testing.assert_array_equal(np.bincount(LABELS[idx], minlength=2),
                                  [4, 4])


def test_balanced_batches_walk_through_each_class_before_repeating():
  # Class 1 has 10 examples and 4 places per batch: batches 0-4 take 20
  # of its examples, permutation after permutation, so each one twice;
  # batches 0-1 (8 draws) repeat none, batches 0-2 (12 draws) hold all.
  rare = np.flatnonzero(LABELS == 1)
  draws = [[i for i in batching.balanced_train_indices(LABELS, 2, 8, s,
                                                       seed=3)
            if LABELS[i] == 1] for s in range(5)]
  values, counts = np.unique(np.concatenate(draws), return_counts=True)
  np.testing.assert_array_equal(values, rare)
  np.testing.assert_array_equal(counts, 2)
  assert len(set(draws[0] + draws[1])) == 8
  assert set(draws[0] + draws[1] + draws[2]) == set(rare.tolist())


def test_balanced_batches_are_a_function_of_seed_and_step():
  a = [batching.balanced_train_indices(LABELS, 2, 8, s, seed=3)
       for s in range(4)]
  b = [batching.balanced_train_indices(LABELS, 2, 8, s, seed=3)
       for s in (3, 2, 1, 0)][::-1]            # any order: resumable
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  other = batching.balanced_train_indices(LABELS, 2, 8, 0, seed=4)
  assert not np.array_equal(a[0], other)
  assert len({tuple(x) for x in a}) == 4        # batches differ


def test_balanced_batches_refuse_what_cannot_be_balanced():
  with pytest.raises(ValueError, match="divisible by the 3 classes.*use 6 "
                     "or 9"):
    batching.balanced_train_indices(LABELS, 3, 8, 0, seed=0)
  with pytest.raises(ValueError, match=r"classes \[2\] have none"):
    batching.balanced_train_indices(LABELS, 3, 9, 0, seed=0)


def test_clue_labels_are_the_rendered_labels():
  config = default.get_config("tiny")
  source, _ = sources.make_source(config.data, "train")
  np.testing.assert_array_equal(
      sources.all_labels(source),
      source.get(np.arange(source.num_examples))["label"])
  plain = sources.ArraySource({"label": LABELS, "x": np.zeros((100, 1))})
  np.testing.assert_array_equal(sources.all_labels(plain, chunk_size=7),
                                LABELS)


def _config():
  config = default.get_config("tiny")
  config.num_steps = 6
  config.checkpoint_every = 2
  config.balanced_batches = True
  config.best_checkpoint = "validation_loss"
  return config


def _records(workdir, name):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if name in r]


def test_best_checkpoint_is_the_best_and_survives_resume(tmp_path):
  config = _config()
  straight = tmp_path / "straight"
  final = train_and_evaluate(config, str(straight), progress=False)
  records = _records(straight, "validation_loss")
  steps = [r["step"] for r in records]      # every checkpoint's step
  assert steps == sorted(steps) and {2, 4, 6} <= set(steps)
  values = [r["validation_loss"] for r in records]
  best_step = records[int(np.argmin(values))]["step"]   # first of ties
  _, best, _ = load_state(config, str(straight), which="best")
  assert int(best.step) == best_step

  # The kept state has the recorded loss: softmax cross-entropy in
  # inference mode over the two full validation batches of 32.
  model, _, _ = load_state(config, str(straight))
  source, _ = sources.make_source(config.data, "validation")
  losses = []
  for start in (0, 32):
    batch = source.get(np.arange(start, start + 32))
    logits = model.apply({"params": best.params,
                          "batch_stats": best.batch_stats}, batch["image"])
    losses.append(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean())
  np.testing.assert_allclose(np.mean(losses), min(values), rtol=1e-5)

  # Resume from step 4: the run ends as the straight one, the best kept.
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "6")
  again = train_and_evaluate(config, str(resumed), progress=False)
  for a, b in zip(jax.tree.leaves((final.params, final.batch_stats)),
                  jax.tree.leaves((again.params, again.batch_stats))):
    np.testing.assert_array_equal(a, b)
  assert _records(resumed, "validation_loss") == records
  _, best_again, _ = load_state(config, str(resumed), which="best")
  assert int(best_again.step) == best_step
  for a, b in zip(jax.tree.leaves(best.params),
                  jax.tree.leaves(best_again.params)):
    np.testing.assert_array_equal(a, b)


def test_validation_accuracy_counts_every_example_once():
  config = default.get_config("tiny")
  config.data.num_validation = 40          # a padded last batch of 32
  source, info = sources.make_source(config.data, "validation")
  model = loop.build_model(config, info)
  tx, _ = loop.make_optimizer(config)
  from lapjax.train.state import create_train_state
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  metric = validation_metric("validation_accuracy", model=model,
                             source=source, batch_size=32,
                             mesh=sharding.make_mesh(), data_name="clues")
  logits, labels = loop.predict(state, model, source, batch_size=32)
  assert len(labels) == 40
  assert metric(state) == float(np.mean(logits.argmax(-1) == labels))


def test_best_checkpoint_needs_a_kept_one(tmp_path):
  config = default.get_config("tiny")
  config.num_steps = config.checkpoint_every = 1
  train_and_evaluate(config, str(tmp_path), progress=False)
  with pytest.raises(FileNotFoundError, match="best_checkpoint='off'"):
    load_state(config, str(tmp_path), which="best")
  config.best_checkpoint = "validation_los"
  with pytest.raises(ValueError, match="best_checkpoint must be one of"):
    load_state(config, str(tmp_path))
