"""argparse types for numbers with bounds, choices and flags, with messages that say what was expected.

An option whose default comes from an environment variable gets that value through :func:`env_default`
as a string, and argparse converts it with the option's type only when the option is not given. A bad
value (``PORT=abc``) therefore fails only the command that uses it, with one line naming the variable,
instead of a traceback from every command while the parser is being built.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable


class EnvValue(str):
    """A default read from an environment variable: conversion errors name the variable."""

    variable: str

    def __new__(cls, value: str, variable: str) -> EnvValue:
        obj = super().__new__(cls, value)
        obj.variable = variable
        return obj


def env_default(variable: str, default: str | None) -> str | None:
    """The environment's value of ``variable`` (as an :class:`EnvValue`), else ``default``."""
    value = os.environ.get(variable)
    if value is None or value == "":
        return default
    return EnvValue(value, variable)


ENV_VALUE_MARK = " in the environment: "  # lets the parser tell a bad environment value from a bad flag


def _problem(text: str, message: str) -> argparse.ArgumentTypeError:
    if isinstance(text, EnvValue):
        return argparse.ArgumentTypeError(f"{text.variable}={str(text)!r}{ENV_VALUE_MARK}{message}")
    return argparse.ArgumentTypeError(message)


def _bounded(
    parse: type[int] | type[float], minimum: float, inclusive: bool, maximum: float | None = None
) -> Callable[[str], int | float]:
    noun = "a whole number" if parse is int else "a number"
    relation = ">=" if inclusive else ">"

    def convert(text: str) -> int | float:
        try:
            value = parse(text)
        except ValueError:
            raise _problem(text, f"expected {noun}, got {str(text)!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise _problem(text, f"must be from {minimum:g} to {maximum:g}, got {value}")
        if value < minimum or (value == minimum and not inclusive):
            raise _problem(text, f"must be {relation} {minimum:g}, got {value}")
        return value

    # argparse names the type in errors
    convert.__name__ = (
        f"{parse.__name__} {relation} {minimum:g}" if maximum is None else f"{parse.__name__} {minimum:g}..{maximum:g}"
    )
    return convert


positive_int = _bounded(int, 1, inclusive=True)
non_negative_int = _bounded(int, 0, inclusive=True)
positive_float = _bounded(float, 0, inclusive=False)
non_negative_float = _bounded(float, 0, inclusive=True)
# A TCP port: a larger number is not a port (some stacks would silently bind it modulo 65536).
port_number = _bounded(int, 1, inclusive=True, maximum=65535)


def one_of(*choices: str) -> Callable[[str], str]:
    """A case-insensitive choice; use with ``choices=`` too so --help lists them."""

    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise _problem(text, f"expected one of {', '.join(choices)}, got {str(text)!r}")
        return value

    convert.__name__ = "choice"
    return convert


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off; anything else is an error rather than a silent false."""
    value = text.strip().lower()
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise _problem(text, f"expected 1/true/yes/on or 0/false/no/off, got {str(text)!r}")
