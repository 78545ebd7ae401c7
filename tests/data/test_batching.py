"""Training order and padded evaluation batches."""

import numpy as np
import pytest

from lapjax.data import batching
from lapjax.data.sources import ArraySource


def test_train_order_is_a_pure_function_of_seed_and_step():
  per_epoch = 10 // 3
  epoch0 = np.concatenate([batching.train_indices(10, 3, s, 7)
                           for s in range(per_epoch)])
  assert len(set(epoch0.tolist())) == 9          # no repeats in an epoch
  np.testing.assert_array_equal(batching.train_indices(10, 3, 4, 7),
                                batching.train_indices(10, 3, 4, 7))
  assert not np.array_equal(batching.train_indices(10, 3, 0, 7),
                            batching.train_indices(10, 3, per_epoch, 7))
  with pytest.raises(ValueError, match="larger than the 10 training"):
    batching.train_indices(10, 11, 0, 0)


def test_eval_batches_pad_and_mark_valid_rows():
  src = ArraySource({"x": np.arange(7), "label": np.arange(7) % 2})
  batches = list(batching.eval_batches(src, 3))
  assert [len(b["x"]) for b in batches] == [3, 3, 3]
  np.testing.assert_array_equal(batches[-1]["valid"], [True, False, False])
  seen = np.concatenate([b["x"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(7))


def test_array_source_checks_lengths():
  with pytest.raises(ValueError, match="share their first axis"):
    ArraySource({"a": np.zeros(3), "b": np.zeros(4)})
