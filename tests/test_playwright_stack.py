"""The cheaper stack capture installed into Playwright 1.44 (env_service/playwright_stack.py)."""

from __future__ import annotations

import inspect
import traceback

from browser_control.env_service import playwright_stack


def _capture(fn):  # a known frame on top of the stack
    return fn()


def test_fast_stack_gives_the_same_frames_lines_and_functions_as_inspect() -> None:
    # one line, so the test's own frame has the same line number in both captures
    fast, slow = _capture(playwright_stack.fast_stack), _capture(lambda: inspect.stack(0))[1:]
    assert [(f.function, f.lineno) for f in fast] == [(f.function, f.lineno) for f in slow]
    assert [f.frame.f_code for f in fast] == [f.frame.f_code for f in slow]
    assert fast[0].function == "_capture" and fast[0].filename == __file__


def test_fast_extract_stack_gives_the_same_summary_as_traceback() -> None:
    fast, slow = _capture(playwright_stack.fast_extract_stack), _capture(traceback.extract_stack)
    assert [(f.filename, f.lineno, f.name) for f in fast] == [(f.filename, f.lineno, f.name) for f in slow]
    assert fast[-1].name == "_capture"
    # Source lines are read only when the summary is formatted, as Playwright does for a driver error.
    assert traceback.format_list(fast) == traceback.format_list(slow)


def test_playwright_gets_the_innermost_frames_it_formats() -> None:
    inner = lambda: traceback.extract_stack(limit=11)  # noqa: E731 - one frame more, dropped below
    fast, slow = _capture(playwright_stack.playwright_extract_stack), _capture(inner)
    assert len(fast) == playwright_stack.PLAYWRIGHT_STACK_FRAMES
    assert [(f.filename, f.lineno, f.name) for f in fast] == [(f.filename, f.lineno, f.name) for f in slow[:-1]]
    assert traceback.format_list(fast)[-10:] == traceback.format_list(slow[:-1])[-10:]


def test_answers_decode_to_the_same_values_and_channels_as_playwrights_own() -> None:
    from playwright._impl import _connection

    class Known:
        _channel = object()

    class FakeConnection:
        def __init__(self) -> None:
            self._objects = {"page@1": Known()}

        _replace_guids_with_channels = playwright_stack.replace_guids_with_channels

    payload = {
        "nodes": [{"nodeId": "1", "role": {"value": "button"}, "properties": [], "ignored": False, "n": None}] * 3,
        "page": {"guid": "page@1"},
        "other": {"guid": "unknown@2", "x": [1, 2.5, "s", [True, {"guid": "page@1"}]]},
        "text": "guid",
    }
    original = (
        playwright_stack.original_replace_guids_with_channels or _connection.Connection._replace_guids_with_channels
    )
    fast = playwright_stack.replace_guids_with_channels(FakeConnection(), payload)
    assert fast == original(FakeConnection(), payload)
    assert fast["page"] is Known._channel and fast["other"]["x"][3][1] is Known._channel
    assert fast["nodes"][0] is not payload["nodes"][0]  # a copy, as Playwright's own makes
    assert playwright_stack.replace_guids_with_channels(FakeConnection(), None) is None


def test_installed_into_playwright_and_api_names_still_reach_error_messages(env_url: str) -> None:
    import httpx
    from playwright._impl import _connection, _sync_base

    import browser_control.env_service.browser  # noqa: F401 - installs the patch on import

    assert _connection.inspect.stack is playwright_stack.fast_stack
    assert _sync_base.inspect.stack is playwright_stack.fast_stack
    assert _connection.inspect.FrameInfo is inspect.FrameInfo  # everything else is the real module
    assert _connection.traceback.extract_stack is playwright_stack.playwright_extract_stack
    assert _sync_base.traceback.extract_stack is playwright_stack.playwright_extract_stack
    assert _connection.Connection._replace_guids_with_channels is playwright_stack.replace_guids_with_channels
    assert _connection.traceback.StackSummary is traceback.StackSummary
    # Through the real service: a Playwright timeout still names the API that failed.
    with httpx.Client(base_url=env_url, timeout=60) as http:
        sid = http.post("/reset", json={"task_name": "click-test", "seed": 1}).json()["session_id"]
        step = http.post("/step", json={"session_id": sid, "action": "select_option('13', 'x')"}).json()
        http.post("/close", json={"session_id": sid})
    assert "Locator.select_option: " in step["observation"]["last_action_error"]
