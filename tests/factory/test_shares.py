"""Whole-number shares that add up: the one apportionment strata, domains and mixtures use."""

from __future__ import annotations

from factory.shares import apportion


def test_largest_remainder_and_caps():
    # 10 * (0.5, 0.3, 0.2) = 5, 3, 2; 7 * (...) = 3.5, 2.1, 1.4: floors 3, 2, 1, the seat left to a
    assert apportion(10, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 9, "b": 9, "c": 9}) == {
        "a": 5,
        "b": 3,
        "c": 2,
    }
    assert apportion(7, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 9, "b": 9, "c": 9}) == {
        "a": 4,
        "b": 2,
        "c": 1,
    }
    # a has only 2: it gives both, its other seats go to b and c by their weights (8 * 0.6, 8 * 0.4)
    assert apportion(10, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 2, "b": 9, "c": 9}) == {
        "a": 2,
        "b": 5,
        "c": 3,
    }
    assert apportion(50, {"a": 0.5, "b": 0.5}, {"a": 3, "b": 4}) == {"a": 3, "b": 4}


def test_ties_go_to_the_larger_weight_then_the_key_and_none_last():
    assert apportion(1, {"b": 1, "a": 1}) == {"a": 1, "b": 0}  # an exact tie: the key in order
    assert apportion(3, {"x": 2, "y": 2, None: 2}) == {"x": 1, "y": 1, None: 1}
    assert apportion(2, {"x": 1, "y": 1, None: 1}) == {"x": 1, "y": 1, None: 0}  # no key comes last
    assert apportion(5, {"small": 1, "large": 3}) == {"small": 1, "large": 4}  # 1.25 / 3.75: .75 wins
    assert apportion(4, {"a": 1, "b": 3}) == {"a": 1, "b": 3}
    assert apportion(10, {"a": 0, "b": 2}) == {"a": 0, "b": 10}  # no weight, no share
    assert apportion(10, {"a": 1, "b": 1}, {"a": 0}) == {"a": 0, "b": 0}  # a cap of none: b capped at 0
    assert sum(apportion(97, {k: k + 0.1 for k in range(13)}).values()) == 97
