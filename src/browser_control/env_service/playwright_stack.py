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
the same frames and reads a source line only if the stack is formatted, and Playwright is given only the
innermost frames, the only ones it ever formats.
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
    return _summary(sys._getframe(1) if f is None else f, limit)


# Playwright formats only the innermost frames of a kept stack: ``format_list(stack_trace)[-10:]``.
PLAYWRIGHT_STACK_FRAMES = 10


def playwright_extract_stack(f: types.FrameType | None = None, limit: int | None = None) -> traceback.StackSummary:
    """What Playwright 1.44 gets for ``traceback.extract_stack()``: the innermost frames it ever formats."""
    return _summary(sys._getframe(1) if f is None else f, PLAYWRIGHT_STACK_FRAMES if limit is None else limit)


def _summary(frame: types.FrameType | None, limit: int | None) -> traceback.StackSummary:
    frames = []
    while frame is not None and (limit is None or len(frames) < limit):
        code = frame.f_code
        frames.append(traceback.FrameSummary(code.co_filename, frame.f_lineno, code.co_name, lookup_line=False))
        frame = frame.f_back
    frames.reverse()  # oldest first, as extract_stack gives them
    return traceback.StackSummary.from_list(frames)


def replace_guids_with_channels(self: Any, payload: Any) -> Any:
    """Playwright 1.44's ``Connection._replace_guids_with_channels`` with the same result, made cheap.

    It copies every answer from the driver, looking for ``{"guid": ...}`` of known objects; the original
    makes a Python call per value, which for the accessibility tree (thousands of nodes) was the single
    largest item of the service's Python samples. Here scalars are copied without a call.
    """
    objects = self._objects

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            guid = value.get("guid")
            if guid is not None and guid in objects:
                return objects[guid]._channel
            return {k: walk(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
        if kind is list:
            return [walk(v) if type(v) in _CONTAINERS else v for v in value]
        if isinstance(value, (dict, list)):  # subclasses: never in parsed JSON, kept exact anyway
            return original_replace_guids_with_channels(self, value)
        return value

    return walk(payload)


_CONTAINERS = (dict, list)
original_replace_guids_with_channels: Any = None


def install() -> bool:
    """Route Playwright's stack captures through :func:`fast_stack` and :func:`playwright_extract_stack`,
    and its answer decoding through :func:`replace_guids_with_channels`; True when applied."""
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
    tb_shim.extract_stack = playwright_extract_stack
    _connection.traceback = tb_shim
    _sync_base.traceback = tb_shim
    global original_replace_guids_with_channels
    if original_replace_guids_with_channels is None:
        original_replace_guids_with_channels = _connection.Connection._replace_guids_with_channels
        _connection.Connection._replace_guids_with_channels = replace_guids_with_channels
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
