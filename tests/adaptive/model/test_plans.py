"""Plan validation and enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adaptive.errors import PlanError
from adaptive.model.plans import (
    count_plans,
    count_splits,
    enumerate_plans,
    enumerate_splits,
    validate_splits,
)


@pytest.mark.parametrize(("L", "M"), [(0, 1), (1, 1), (5, 1), (4, 2), (6, 3), (3, 4)])
def test_enumerate_splits_is_all_non_decreasing_vectors_in_order(L, M):
    expected = list(itertools.combinations_with_replacement(range(L + 1), M))
    got = [tuple(r) for r in enumerate_splits(L, M).tolist()]
    assert got == expected
    assert len(got) == count_splits(L, M) == count_plans(L, M + 1)


def test_plan_space_sizes_of_the_benchmark_cases():
    assert count_splits(55, 2) == 1596
    assert count_splits(55, 3) == 30856


def test_codec_expansion_only_on_splits_that_feed_a_stage():
    L = 3
    allowed = np.ones((2, L + 1), dtype=bool)
    plans = enumerate_plans(L, 2, allowed)
    rows = set(zip(map(tuple, plans.splits.tolist()), map(tuple, plans.codecs.tolist()), strict=True))
    # split 3 = device-only: the second device's stage is empty, so no codec variant
    assert ((3,), (1,)) not in rows and ((3,), (0,)) in rows
    assert ((1,), (1,)) in rows and ((1,), (0,)) in rows
    assert len(plans) == count_plans(L, 2, allowed) == 4 + 3


@pytest.mark.parametrize(
    ("splits", "message"),
    [([1], "expected 2 split"), ([1, 9], "out of range 0..5"), ([3, 2], "non-decreasing"),
     ([-1, 2], "out of range")],
)
def test_validate_splits_messages(splits, message):
    with pytest.raises(PlanError, match=message):
        validate_splits(splits, 5, 3)
