import argparse

import pytest

from browser_control.arg_types import non_negative_float, non_negative_int, positive_float, positive_int


@pytest.mark.parametrize(
    ("convert", "text", "expected"),
    [(positive_int, "3", 3), (non_negative_int, "0", 0), (positive_float, "0.5", 0.5), (non_negative_float, "0", 0.0)],
)
def test_accepts_values_in_range(convert, text: str, expected: float) -> None:
    assert convert(text) == expected


@pytest.mark.parametrize(
    ("convert", "text", "message"),
    [
        (positive_int, "0", "must be >= 1, got 0"),
        (positive_int, "1.5", "expected a whole number"),
        (non_negative_int, "-1", "must be >= 0"),
        (positive_float, "0", "must be > 0"),
        (non_negative_float, "x", "expected a number, got 'x'"),
    ],
)
def test_refuses_with_a_message(convert, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        convert(text)
