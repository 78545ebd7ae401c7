"""Labels outside [0, num_classes) fail where they are read, by name."""

import numpy as np
import pytest

from configs import default
from lapjax.data import batching, sources


def _source(labels, num_classes=3):
  labels = np.asarray(labels)
  arrays = {"image": np.zeros((len(labels), 4, 4, 3), np.float32),
            "label": labels}
  return sources.LabelChecked(sources.ArraySource(arrays), num_classes,
                              dataset="toy (train)")


@pytest.mark.parametrize("bad, where", [(-1, 2), (3, 1), (7, 0)])
def test_out_of_range_labels_name_the_dataset_and_value(bad, where):
  labels = [0, 1, 2, 1]
  labels[where] = bad
  source = _source(labels)
  with pytest.raises(ValueError, match=rf"dataset 'toy \(train\)': label "
                     rf"{bad} of example {where} is outside \[0, 3\)"):
    source.get(np.arange(4))
  # Batches without the bad example are fine.
  ok = [i for i in range(4) if i != where]
  np.testing.assert_array_equal(source.get(np.array(ok))["label"],
                                np.asarray(labels)[ok])


def test_float_labels_are_refused():
  with pytest.raises(ValueError, match="labels must be integers; got dtype "
                     "float32"):
    _source(np.array([0.0, 1.0], np.float32)).get(np.arange(2))


def test_make_source_checks_every_training_batch():
  config = default.get_config("tiny")
  source, info = sources.make_source(config.data, "train")
  assert source.num_examples == config.data.num_train
  labels = source.source.get(np.arange(source.num_examples))["label"]
  assert labels.max() == info["num_classes"] - 1
  # Corrupt one label of the rendered split: the batch reading it fails.
  source.source._cache.arrays["label"][17] = info["num_classes"]
  step = next(s for s in range(100) if 17 in batching.train_indices(
      source.num_examples, config.batch_size, s, config.data.seed))
  with pytest.raises(ValueError, match=r"dataset 'clues \(train\)': label 4 "
                     r"of example 17 is outside \[0, 4\)"):
    batching.train_batch(source, config.batch_size, step, config.data.seed)
