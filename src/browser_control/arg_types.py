"""argparse types for numbers with a lower bound, with messages that say what was expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _bounded(parse: type[int] | type[float], minimum: float, inclusive: bool) -> Callable[[str], int | float]:
    noun = "a whole number" if parse is int else "a number"
    relation = ">=" if inclusive else ">"

    def convert(text: str) -> int | float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum:g}, got {value}")
        return value

    convert.__name__ = f"{parse.__name__} {relation} {minimum:g}"  # argparse names the type in errors
    return convert


positive_int = _bounded(int, 1, inclusive=True)
non_negative_int = _bounded(int, 0, inclusive=True)
positive_float = _bounded(float, 0, inclusive=False)
non_negative_float = _bounded(float, 0, inclusive=True)
