"""OpenEnv's WebSocket protocol on /ws, driven by OpenEnv's own client (the `openenv` package from PyPI)
against the real service (real Chromium, real MiniWoB pages), plus raw frames for what a well-behaved
client never sends."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ServiceProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MAX_SESSIONS = 2
# Generous guards for a loaded 2-core machine, never a statement about speed.
REPLY_TIMEOUT_S = 300.0
OBSERVATION_FIELDS = {
    "text", "url", "screenshot", "goal", "axtree_txt", "pruned_html", "error", "last_action_error", "metadata",
}  # fmt: skip
STATE_FIELDS = {
    "episode_id", "step_count", "benchmark", "task_name", "task_id", "goal", "current_url", "max_steps",
    "cum_reward", "seed",
}  # fmt: skip


@pytest.fixture(scope="module")
def service(chromium: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # Its own service: a small cap to reach, and a session count no other test moves.
    service = ServiceProcess(
        "--max-sessions", str(MAX_SESSIONS), "--workers", "1",
        log_path=tmp_path_factory.mktemp("openenv_ws") / "serve-env.log", chromium=chromium,
    )  # fmt: skip
    try:
        service.wait_healthy(timeout_s=180)
        yield service
    finally:
        service.stop()


@pytest.fixture()
def idle_service(service: ServiceProcess) -> Iterator[ServiceProcess]:
    """The service with no session open, before and after the test."""
    wait_for_sessions(service, 0)
    yield service
    wait_for_sessions(service, 0)


def sessions(service: ServiceProcess) -> int:
    return httpx.get(service.url + "/health", timeout=30).json()["sessions"]


def wait_for_sessions(service: ServiceProcess, expected: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := sessions(service)) != expected:
        assert time.monotonic() < deadline, f"/health says {seen} sessions, expected {expected}: {service.log()}"
        time.sleep(0.1)


def openenv_client(service: ServiceProcess) -> Any:
    from openenv.core.generic_client import GenericEnvClient  # imports gradio: only when a test runs

    return GenericEnvClient(base_url=service.url, message_timeout_s=REPLY_TIMEOUT_S).sync()


def raw(service: ServiceProcess) -> ClientConnection:
    return connect(service.url.replace("http://", "ws://") + "/ws", open_timeout=60, close_timeout=10)


def exchange(ws: ClientConnection, frame: dict[str, Any] | str | bytes) -> dict[str, Any]:
    ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    return json.loads(ws.recv(timeout=REPLY_TIMEOUT_S))


def bid_of(axtree: str, label: str) -> str:
    match = re.search(rf"\[(\w+)\] button '{label}'", axtree)
    assert match, axtree
    return match.group(1)


@pytest.mark.timeout(600)
def test_openenv_client_plays_click_test_to_reward_one(idle_service: ServiceProcess) -> None:
    with openenv_client(idle_service) as env:
        first = env.reset(task_name="click-test", seed=11, episode_id="ep-1")
        page = first.observation
        assert set(page) == OBSERVATION_FIELDS
        assert (first.reward, first.done) == (0.0, False)
        assert page["goal"] == "Click the button." and page["url"].endswith("click-test.html")
        assert page["text"] == page["axtree_txt"] and page["screenshot"] is None and page["pruned_html"] == ""
        assert (page["error"], page["last_action_error"]) == ("", False)
        button = bid_of(page["axtree_txt"], "Click Me!")

        state = env.state()
        assert set(state) == STATE_FIELDS
        assert state["episode_id"] == "ep-1" and state["task_name"] == "click-test" and state["seed"] == 11
        assert (state["benchmark"], state["step_count"], state["cum_reward"]) == ("miniwob", 0, 0.0)
        assert state["goal"] == "Click the button." and state["current_url"] == page["url"]
        assert sessions(idle_service) == 1

        # A refused action is a normal step that changed nothing; the model reads why in `error`.
        refused = env.step({"action_str": "__import__('os').system('true')", "metadata": {}})
        assert (refused.reward, refused.done, refused.observation["last_action_error"]) == (0.0, False, True)
        assert "invalid action" in refused.observation["error"]
        assert refused.observation["axtree_txt"] == page["axtree_txt"]

        missed = env.step({"action_str": "click('99999')"})  # valid, but fails on the page
        assert (missed.reward, missed.done, missed.observation["last_action_error"]) == (0.0, False, True)
        assert "99999" in missed.observation["error"]

        solved = env.step({"action_str": f"click('{button}')"})
        assert (solved.reward, solved.done) == (1.0, True)
        assert (solved.observation["error"], solved.observation["last_action_error"]) == ("", False)

        # After the end nothing runs: the last page again, done, and no second reward.
        after = env.step({"action_str": f"click('{button}')"})
        assert (after.reward, after.done) == (0.0, True)
        assert after.observation["axtree_txt"] == solved.observation["axtree_txt"]
        assert "episode is over" in after.observation["metadata"]["episode_over"]

        state = env.state()
        assert (state["step_count"], state["cum_reward"]) == (3, 1.0)

        # A later reset reuses the connection's task and session and starts a new episode.
        again = env.reset(seed=12)
        assert (again.reward, again.done) == (0.0, False) and again.observation["goal"] == "Click the button."
        state = env.state()
        assert state["task_name"] == "click-test" and state["seed"] == 12 and state["step_count"] == 0
        assert state["episode_id"] not in (None, "ep-1")
        assert sessions(idle_service) == 1
    # The client's close frame frees the session.
    wait_for_sessions(idle_service, 0)


def assert_refused(ws: ClientConnection) -> None:
    """A CAPACITY_REACHED error frame, then the server closes with 1013 (try again later)."""
    frame = json.loads(ws.recv(timeout=REPLY_TIMEOUT_S))
    assert frame["type"] == "error" and frame["data"]["code"] == "CAPACITY_REACHED", frame
    assert frame["data"]["max_sessions"] == MAX_SESSIONS and frame["data"]["active_sessions"] == MAX_SESSIONS
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=REPLY_TIMEOUT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


@pytest.mark.timeout(600)
def test_capacity_reached_is_an_error_frame_then_a_close(idle_service: ServiceProcess) -> None:
    holders = [openenv_client(idle_service) for _ in range(MAX_SESSIONS)]
    try:
        for client in holders:
            client.connect()
            client.reset(task_name="click-test", seed=1)
        assert sessions(idle_service) == MAX_SESSIONS

        with raw(idle_service) as refused:
            assert_refused(refused)

        # OpenEnv's own client surfaces the same refusal as its error.
        with openenv_client(idle_service) as late, pytest.raises(RuntimeError, match="CAPACITY_REACHED"):
            late.reset(task_name="click-test")
        assert sessions(idle_service) == MAX_SESSIONS

        # One slot free: the first connection takes it at connect (its session comes with its first reset),
        # so the next connection is refused at once; an HTTP client can still take that slot, and the
        # first reset is then refused the same way.
        holders.pop().close()
        wait_for_sessions(idle_service, MAX_SESSIONS - 1)
        with raw(idle_service) as admitted:
            with raw(idle_service) as refused:
                assert_refused(refused)
            http_session = httpx.post(idle_service.url + "/reset", json={"task_name": "click-test"}, timeout=120)
            assert http_session.status_code == 200, http_session.text
            try:
                admitted.send(json.dumps({"type": "reset", "data": {"task_name": "click-test"}}))
                assert_refused(admitted)
            finally:
                httpx.post(idle_service.url + "/close", json={"session_id": http_session.json()["session_id"]})
    finally:
        for client in holders:
            client.close()

    # Every place is back: as many connections as the cap are admitted again.
    wait_for_sessions(idle_service, 0)
    with raw(idle_service) as one, raw(idle_service) as two:
        assert MAX_SESSIONS == 2
        for ws in (one, two):
            assert exchange(ws, {"type": "state"})["type"] == "state"


@pytest.mark.timeout(600)
def test_bad_frames_get_error_frames_and_the_connection_survives(idle_service: ServiceProcess) -> None:
    with raw(idle_service) as ws:
        cases: list[tuple[dict[str, Any] | str | bytes, str, str]] = [
            ("{not json", "INVALID_JSON", "Invalid JSON"),
            (b"\xff\xfe", "INVALID_JSON", "UTF-8"),
            ("[1, 2]", "UNKNOWN_TYPE", "reset, step, state, close"),
            ({"data": {}}, "UNKNOWN_TYPE", "reset, step, state, close"),
            ({"type": "jump"}, "UNKNOWN_TYPE", '"jump"'),
            ({"type": "step", "data": {}}, "VALIDATION_ERROR", "action_str"),
            ({"type": "step", "data": {"action": "noop()"}}, "VALIDATION_ERROR", "action"),
            ({"type": "reset", "data": {"task_name": "click-test", "seed": -1}}, "VALIDATION_ERROR", "seed"),
            ({"type": "reset", "data": {"task": "click-test"}}, "VALIDATION_ERROR", "task"),
            ({"type": "reset"}, "VALIDATION_ERROR", "task_name"),
            ({"type": "reset", "data": {"task_name": "clik-test"}}, "EXECUTION_ERROR", "click-test"),
            ({"type": "step", "data": {"action_str": "noop()"}}, "EXECUTION_ERROR", "reset"),
        ]
        for frame, code, hint in cases:
            reply = exchange(ws, frame)
            assert reply["type"] == "error", (frame, reply)
            assert reply["data"]["code"] == code and hint in reply["data"]["message"], (frame, reply)
        assert sessions(idle_service) == 0  # nothing above took a slot

        # The same connection still plays.
        reply = exchange(ws, {"type": "reset", "data": {"task_name": "click-test", "seed": 5}})
        assert reply["type"] == "observation" and reply["data"]["done"] is False
        assert exchange(ws, {"type": "state"})["data"]["task_name"] == "click-test"
        ws.send(json.dumps({"type": "close"}))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=REPLY_TIMEOUT_S)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["close handshake", "dropped socket"])
def test_a_disconnect_frees_the_session(idle_service: ServiceProcess, how: str) -> None:
    with raw(idle_service) as ws:
        assert exchange(ws, {"type": "reset", "data": {"task_name": "click-test"}})["type"] == "observation"
        assert sessions(idle_service) == 1
        if how == "dropped socket":
            ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame of any kind, as when a client dies
        # else: leaving the block is a WebSocket close without OpenEnv's close frame
    wait_for_sessions(idle_service, 0)


@pytest.mark.timeout(300)
def test_health_keeps_its_contract_and_passes_openenvs_readiness_wait(idle_service: ServiceProcess) -> None:
    # The readiness wait of OpenEnv's runtime providers: they all accept any 200 from /health.
    from openenv.core.containers.runtime.uv_provider import _poll_health

    _poll_health(idle_service.url + "/health", timeout_s=120)
    body = httpx.get(idle_service.url + "/health", timeout=30).json()
    assert body == {"status": "ok", "sessions": 0, "max_sessions": MAX_SESSIONS}


@pytest.mark.timeout(600)
def test_screenshots_are_pixels_as_openenv_sends_them(chromium: str | None, tmp_path: Path) -> None:
    service = ServiceProcess(
        "--max-sessions", "1", "--workers", "1", "--screenshots",
        log_path=tmp_path / "serve-env.log", chromium=chromium,
    )  # fmt: skip
    try:
        service.wait_healthy(timeout_s=180)
        with openenv_client(service) as env:
            page = env.reset(task_name="click-test", seed=2).observation
            # What TRL's browsergym.py does with it: numpy, then a PIL image.
            pixels = np.array(page["screenshot"], dtype=np.uint8)
            assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
            assert pixels.min() < pixels.max()  # a drawn page, not a blank frame
            assert Image.fromarray(pixels).size == (pixels.shape[1], pixels.shape[0])
            solved = env.step({"action_str": f"click('{bid_of(page['axtree_txt'], 'Click Me!')}')"})
            assert solved.reward == 1.0 and np.array(solved.observation["screenshot"]).shape == pixels.shape
    finally:
        service.stop()
