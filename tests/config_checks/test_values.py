"""The shared value checks of the farm's settings."""

from __future__ import annotations

import pytest

from buildbot_farm.config_checks.values import is_number, is_positive, is_whole, is_whole_at_least


@pytest.mark.parametrize("value", [0, 1, -3, 2**70])
def test_whole_numbers_are_ints(value: int) -> None:
    """Any int is whole, also when negative or large."""
    assert is_whole(value)
    assert is_number(value)


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1]])
def test_bools_floats_and_text_are_not_whole(value: object) -> None:
    """True/False, floats and strings of digits are not whole numbers."""
    assert not is_whole(value)


@pytest.mark.parametrize(("value", "expected"), [
    (0.5, True), (30, True), (0, False), (-1.5, False), (True, False), ("5", False),
    (None, False),
])
def test_positive_means_a_number_above_zero(value: object, expected: bool) -> None:
    """Seconds must be a number > 0; a bool or a string is not one."""
    assert is_positive(value) is expected


@pytest.mark.parametrize(("value", "least", "expected"), [
    (1, 1, True), (0, 1, False), (4 << 20, 4 << 20, True), (1.5, 1, False), (True, 1, False),
])
def test_whole_at_least_has_a_lower_bound(value: object, least: int, expected: bool) -> None:
    """A count is a whole number no smaller than its least value."""
    assert is_whole_at_least(value, least) is expected


@pytest.mark.parametrize(("value", "expected"), [
    (1.5, True), (-2, True), (float("inf"), True), (float("nan"), False), (True, False),
    ("1.5", False),
])
def test_a_number_is_an_int_or_a_float_but_never_nan(value: object, expected: bool) -> None:
    """NaN is no number to check against a bound; infinity is (the bounds refuse it)."""
    assert is_number(value) is expected
