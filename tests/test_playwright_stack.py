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


def test_installed_into_playwright_and_api_names_still_reach_error_messages(env_url: str) -> None:
    import httpx
    from playwright._impl import _connection, _sync_base

    import browser_control.env_service.browser  # noqa: F401 - installs the patch on import

    assert _connection.inspect.stack is playwright_stack.fast_stack
    assert _sync_base.inspect.stack is playwright_stack.fast_stack
    assert _connection.inspect.FrameInfo is inspect.FrameInfo  # everything else is the real module
    assert _connection.traceback.extract_stack is playwright_stack.fast_extract_stack
    assert _sync_base.traceback.extract_stack is playwright_stack.fast_extract_stack
    assert _connection.traceback.StackSummary is traceback.StackSummary
    # Through the real service: a Playwright timeout still names the API that failed.
    with httpx.Client(base_url=env_url, timeout=60) as http:
        sid = http.post("/reset", json={"task_name": "click-test", "seed": 1}).json()["session_id"]
        step = http.post("/step", json={"session_id": sid, "action": "select_option('13', 'x')"}).json()
        http.post("/close", json={"session_id": sid})
    assert "Locator.select_option: " in step["observation"]["last_action_error"]
