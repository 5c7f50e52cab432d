"""Cheaper Python stack capture for Playwright 1.44's sync API.

Playwright 1.44 calls ``inspect.stack()`` on every API call (twice for sync calls) to name the API in
error messages and traces. ``inspect.stack()`` resolves the source file and reads source lines for every
frame, which measured about half of the service's Python CPU per browser step (30 ms of 67 ms over all
processes, see benchmarks/RESULTS.md). Later Playwright releases stopped doing this (playwright-python
#2835 and #3147), but browsergym 0.14.3 pins playwright 1.44, so the same shortcut is applied here: the
frames are walked directly and only the fields Playwright reads (frame, file name, line, function) are
filled in. Nothing else about Playwright changes.
"""

from __future__ import annotations

import inspect
import sys
import types

PATCHED_PLAYWRIGHT_VERSIONS = ("1.44.0",)


def fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` without source lookups: same frames, file names, lines and functions."""
    frame = sys._getframe(1)
    frames = []
    while frame is not None:
        code = frame.f_code
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
        frame = frame.f_back
    return frames


def install() -> bool:
    """Route Playwright's stack captures through :func:`fast_stack`; True when applied."""
    from importlib.metadata import version

    from playwright._impl import _connection, _sync_base

    if version("playwright") not in PATCHED_PLAYWRIGHT_VERSIONS:
        return False  # newer releases capture stacks cheaply themselves
    shim = types.SimpleNamespace(**{name: getattr(inspect, name) for name in dir(inspect)
                                    if not name.startswith("__")})
    shim.stack = fast_stack
    _connection.inspect = shim
    _sync_base.inspect = shim
    return True
