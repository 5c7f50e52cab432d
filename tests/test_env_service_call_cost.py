"""What a reset and a step ask of Playwright and Chromium: the same episode for less work
(benchmarks/RESULTS.md, "Fewer calls per reset and per step").

BrowserGym's MiniWoB setup ends with ``page.wait_for_function("() => WOB_TASK_READY")``. Through Playwright
that injects Playwright's 242 KB script into the new document's main world, on top of the injection into
the utility world that the episode's first action needs anyway. The service gives setup a page whose
``wait_for_function`` is one evaluation with the same outcome. After an action, the settling script
also reads the MiniWoB state that BrowserGym's ``validate()`` would read with an evaluation of its own.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import playwright.sync_api
import pytest

from browser_control.env_service.actions import parse_action
from browser_control.env_service.browser import BrowserOptions, BrowserSession, BrowserWorker
from browser_control.env_service.tasks import miniwob_base_url, task_classes


@pytest.fixture(scope="module")
def worker(chromium: str | None) -> Iterator[BrowserWorker]:
    worker = BrowserWorker(0, BrowserOptions(chromium_executable=chromium))
    try:
        yield worker
    finally:
        worker.stop()


@contextlib.contextmanager
def _driver_methods(page: playwright.sync_api.Page) -> Iterator[list[str]]:
    """The protocol methods that the Python side sends to Playwright's driver meanwhile."""
    connection = page._impl_obj._connection  # type: ignore[attr-defined]
    sent: list[str] = []
    original = connection._send_message_to_server

    def record(obj, method, params, *args, **kwargs):
        sent.append(method)
        return original(obj, method, params, *args, **kwargs)

    connection._send_message_to_server = record
    try:
        yield sent
    finally:
        del connection._send_message_to_server


@pytest.mark.timeout(120)
def test_a_reset_waits_for_the_task_without_playwrights_wait_for_function(worker: BrowserWorker) -> None:
    session = BrowserSession("reset-cost", worker)
    cls = task_classes()["click-test"]

    def play() -> tuple[list[str], dict, float]:
        session.reset(cls, "click-test", 0, miniwob_base_url(), None)
        with _driver_methods(session._page) as methods:
            observation = session.reset(cls, "click-test", 1, miniwob_base_url(), None)
        (bid,) = re.findall(r"\[(\w+)\] button 'Click Me!'", observation["axtree_txt"])
        result = session.step(parse_action(f"click('{bid}')"))
        session.close()
        return methods, observation, result.reward

    methods, observation, reward = worker.submit(play).result(timeout=100)
    assert "goto" in methods, methods  # the recording saw the reset
    assert "waitForFunction" not in methods, methods
    assert observation["goal"] == "Click the button."
    assert reward == 1.0  # validate() still recognises the page setup() was given


@pytest.mark.timeout(120)
def test_the_setup_page_waits_like_playwright(worker: BrowserWorker) -> None:
    """Truthy ends the wait (polled while the page's own timers run), never truthy is a TimeoutError."""
    from browser_control.env_service.browser import _SetupPage

    def wait() -> tuple[bool, str, str]:
        context = worker.browser().new_context()
        try:
            page = context.new_page()
            setup_page = _SetupPage(page, default_timeout_ms=5_000)
            page.evaluate("() => { window.ready = false; setTimeout(() => { window.ready = 1; }, 150); }")
            became_ready = setup_page.wait_for_function("() => window.ready")
            with pytest.raises(playwright.sync_api.TimeoutError) as timed_out:
                setup_page.wait_for_function("() => window.never", timeout=200)
            with pytest.raises(playwright.sync_api.Error) as failed:
                setup_page.wait_for_function("() => notDefinedAnywhere")
            setup_page._bgym_scale_factor = 1.5
            assert page._bgym_scale_factor == 1.5  # attributes that setup() sets land on the real page
            return became_ready, str(timed_out.value), str(failed.value)
        finally:
            context.close()

    became_ready, timeout_message, error = worker.submit(wait).result(timeout=100)
    assert became_ready is True
    assert "Timeout 200ms exceeded" in timeout_message
    assert "notDefinedAnywhere" in error


@pytest.mark.timeout(120)
def test_the_browser_runs_without_render_document(worker: BrowserWorker) -> None:
    """A navigation that reuses the renderer's frame is a quarter cheaper (benchmarks/RESULTS.md)."""
    worker.submit(worker.browser).result(timeout=100)
    switches = [arg for arg in worker._browser_process.cmdline() if arg.startswith("--disable-features=")]
    assert switches, "no --disable-features switch"
    # Chromium honours the last one only: it must carry every feature the service switches off.
    features = switches[-1].removeprefix("--disable-features=").split(",")
    assert {"RenderDocument", "OverlayScrollbars", "ExtendedOverlayScrollbars"} <= set(features), switches


@pytest.mark.timeout(120)
def test_a_step_evaluates_in_the_page_once_and_validate_sees_the_same_state(worker: BrowserWorker) -> None:
    session = BrowserSession("step-cost", worker)
    cls = task_classes()["click-button"]

    def play() -> tuple[list[str], list[tuple[float, bool]]]:
        observation = session.reset(cls, "click-button", 3, miniwob_base_url(), None)
        buttons = re.findall(r"\[(\w+)\] button '([^']*)'", observation["axtree_txt"])
        (target,) = re.findall(r'"([^"]*)"', observation["goal"])
        right = next(bid for bid, name in buttons if name == target)
        wrong = next(bid for bid, name in buttons if bid != right)
        outcomes = []
        with _driver_methods(session._page) as methods:
            result = session.step(parse_action(f"click('{wrong}')"))
        outcomes.append((result.reward, result.done))
        session.reset(cls, "click-button", 3, miniwob_base_url(), None)
        result = session.step(parse_action(f"click('{right}')"))
        outcomes.append((result.reward, result.done))
        session.close()
        return list(methods), outcomes

    methods, outcomes = worker.submit(play).result(timeout=100)
    assert methods.count("evaluateExpression") == 1, methods  # settle + mark + MiniWoB state, one call
    # BrowserGym's validate() on the state read by the settling script: a wrong button ends the episode
    # unrewarded, the right one rewarded.
    assert outcomes == [(0.0, True), (1.0, True)]


@pytest.mark.timeout(120)
def test_a_reset_whose_reused_page_cannot_navigate_starts_on_a_fresh_context(worker: BrowserWorker) -> None:
    """A page that died just before a reset in place (its crash event not yet in) can fail the navigation
    as aborted rather than crashed; the reset must still revive the session on a fresh context."""
    session = BrowserSession("aborted-navigation", worker)
    cls = task_classes()["click-test"]

    def play() -> tuple[bool, dict, float]:
        session.reset(cls, "click-test", 0, miniwob_base_url(), None)
        old_context, page = session._context, session._page

        def aborted(*args: object, **kwargs: object) -> None:
            raise playwright.sync_api.Error("net::ERR_ABORTED; maybe frame was detached?")

        page.goto = aborted  # type: ignore[method-assign]  # what Chromium answered for a torn-down frame
        observation = session.reset(cls, "click-test", 1, miniwob_base_url(), None)
        fresh = session._context is not old_context
        (bid,) = re.findall(r"\[(\w+)\] button 'Click Me!'", observation["axtree_txt"])
        reward = session.step(parse_action(f"click('{bid}')")).reward
        session.close()
        return fresh, observation, reward

    fresh, observation, reward = worker.submit(play).result(timeout=100)
    assert fresh
    assert observation["goal"] == "Click the button."
    assert reward == 1.0
