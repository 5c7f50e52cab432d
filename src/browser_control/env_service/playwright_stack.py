"""Cheaper Python stack capture for Playwright 1.44's sync API.

Playwright 1.44 calls ``inspect.stack()`` on every API call (twice for sync calls) to name the API in
error messages and traces. ``inspect.stack()`` resolves the source file and reads source lines for every
frame, which measured about half of the service's Python CPU per browser step (30 ms of 67 ms over all
processes, see benchmarks/RESULTS.md). Later Playwright releases stopped doing this (playwright-python
#2835 and #3147), but browsergym 0.14.3 pins playwright 1.44, so the same shortcut is applied here: the
frames are walked directly and only the fields Playwright reads (frame, file name, line, function) are
filled in. Nothing else about Playwright changes.

The same calls also keep a ``traceback.extract_stack()`` (twice per sync call: once per API call, once
per protocol message), only ever formatted when the driver answers with an error. ``extract_stack``
stats every source file of the stack (``linecache.checkcache``) and reads its lines: with 16 sessions
that was about a seventh of the service's Python samples (py-spy). :func:`fast_extract_stack` records
the same frames and reads a source line only if the stack is formatted.
"""

from __future__ import annotations

import inspect
import sys
import traceback
import types
from typing import Any

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


def fast_extract_stack(f: types.FrameType | None = None, limit: int | None = None) -> traceback.StackSummary:
    """``traceback.extract_stack()`` without touching source files until the summary is formatted."""
    frame = sys._getframe(1) if f is None else f
    frames = []
    while frame is not None and (limit is None or len(frames) < limit):
        code = frame.f_code
        frames.append(traceback.FrameSummary(code.co_filename, frame.f_lineno, code.co_name, lookup_line=False))
        frame = frame.f_back
    frames.reverse()  # oldest first, as extract_stack gives them
    return traceback.StackSummary.from_list(frames)


def install() -> bool:
    """Route Playwright's stack captures through :func:`fast_stack`; True when applied."""
    from importlib.metadata import version

    from playwright._impl import _connection, _sync_base

    if version("playwright") not in PATCHED_PLAYWRIGHT_VERSIONS:
        return False  # newer releases capture stacks cheaply themselves
    shim = types.SimpleNamespace(**{name: getattr(inspect, name) for name in dir(inspect) if not name.startswith("__")})
    shim.stack = fast_stack
    _connection.inspect = shim
    _sync_base.inspect = shim
    tb_shim = types.SimpleNamespace(
        **{name: getattr(traceback, name) for name in dir(traceback) if not name.startswith("__")}
    )
    tb_shim.extract_stack = fast_extract_stack
    _connection.traceback = tb_shim
    _sync_base.traceback = tb_shim
    return True


def cdp_send(cdp: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A DevTools call that returns the driver's answer as it came.

    The public ``CDPSession.send`` walks the whole answer in Python to wrap Playwright objects (there are
    none in a DevTools answer): for the accessibility tree, thousands of dicts per observation, about 6%
    of the service's Python samples with 16 sessions. Falls back to the public call on another layout.
    """
    impl = getattr(cdp, "_impl_obj", None)
    sync = getattr(cdp, "_sync", None)
    if impl is None or sync is None or not hasattr(impl, "send"):
        return cdp.send(method, params or {})
    return sync(impl.send(method, params or {}))
