"""DC systems: builders and the completeness condition (Eq. 2)."""

import numpy as np
import pytest

from lapjax import lap
from lapjax.data.clues import CluesConfig


def test_one_vs_others_with_bgo():
  s = lap.one_vs_others(4, bgo=0)
  assert s.bgo == 0 and s.num_dcs == 3 and s.num_classes == 4
  np.testing.assert_array_equal(s.membership, [[-1, 1, -1, -1],
                                               [-1, -1, 1, -1],
                                               [-1, -1, -1, 1]])
  w = s.class_weights()
  np.testing.assert_array_equal(w[0], 0)                  # BGO: no map
  np.testing.assert_array_equal(w[1:], np.eye(3))


def test_clue_data_membership_is_complete():
  for binary in (False, True):
    m = CluesConfig(binary=binary).dc_membership
    s = lap.dc_system(m)
    assert s.bgo == 0
  assert lap.binary().membership.tolist() == [[-1, 1]]


def test_custom_system_with_shared_dcs():
  # classes 0..3; DC0 promotes {1, 3}, DC1 {2, 3}: 3 = DC0 & DC1; DC2 and
  # DC3 single out 1 and 2.
  s = lap.custom([[1, 3], [2, 3], [1], [2]],
                 [[0, 2], [0, 1], [0, 2, 3], [0, 1, 3]], 4)
  assert s.bgo == 0
  np.testing.assert_allclose(s.class_weights()[3], [0.5, 0.5, 0, 0])


@pytest.mark.parametrize("membership, match", [
    ([[1, -1, -1]], "classes \\[1, 2\\] are in no DC\\+"),
    ([[1, 1, -1], [0, 0, 1]], "cannot tell class 0 apart"),
    ([[0, -1]], "promote no class"),
    ([[2, -1]], "entries must be"),
    ([1, -1], "\\[M, N\\]"),
])
def test_incomplete_or_malformed_systems_are_refused(membership, match):
  with pytest.raises(ValueError, match=match):
    lap.dc_system(membership)


def test_custom_refuses_overlapping_sets():
  with pytest.raises(ValueError, match="both DC\\+ and DC-"):
    lap.custom([[1]], [[1, 0]], 2)


def test_labels_outside_the_system_are_refused():
  with pytest.raises(ValueError, match="labels must be classes"):
    lap.dcs.check_labels(np.array([0, 2]), lap.binary())
