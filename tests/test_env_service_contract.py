"""The HTTP contract of the environment service, against real Chromium and real MiniWoB pages."""

from __future__ import annotations

import httpx
import pytest

from browser_control.protocol import ErrorResponse, ResetResponse, StepResponse


@pytest.fixture()
def http(env_url: str):
    with httpx.Client(base_url=env_url, timeout=60) as client:
        yield client


def _reset(http: httpx.Client, task: str = "click-test", seed: int | None = 1, **extra) -> ResetResponse:
    r = http.post("/reset", json={"task_name": task, "seed": seed, **extra})
    assert r.status_code == 200, r.text
    return ResetResponse.model_validate(r.json())


def _error(r: httpx.Response, status: int, error: str) -> ErrorResponse:
    assert r.status_code == status, r.text
    body = ErrorResponse.model_validate(r.json())
    assert body.error == error
    assert body.message
    return body


def test_health_reports_sessions_and_cap(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["max_sessions"] == 64 and body["sessions"] >= 0


def test_tasks_lists_every_registered_miniwob_task(http: httpx.Client) -> None:
    from browsergym.miniwob import ALL_MINIWOB_TASKS

    tasks = http.get("/tasks").json()["tasks"]
    assert "click-test" in tasks and "book-flight" in tasks
    assert len(tasks) == len(ALL_MINIWOB_TASKS)
    assert not any(t.startswith("miniwob.") for t in tasks)


def test_reset_step_close_click_test(http: httpx.Client) -> None:
    reset = _reset(http, "miniwob.click-test", seed=42)
    assert reset.task_name == "click-test" and reset.seed == 42
    assert reset.observation.goal == "Click the button."
    assert "[13] button 'Click Me!'" in reset.observation.axtree_txt
    assert reset.reward == 0.0 and reset.done is False
    assert reset.observation.screenshot_png_b64 is None  # screenshots are off by default

    r = http.post("/step", json={"session_id": reset.session_id, "action": "click(13)"})
    step = StepResponse.model_validate(r.json())
    assert step.reward == 1.0 and step.done is True and step.truncated is False and step.step == 1

    # step after done: 409 with a way out
    body = _error(
        http.post("/step", json={"session_id": reset.session_id, "action": "click('13')"}), 409, "episode_over"
    )
    assert "reset" in (body.hint or "").lower()

    # reset in place keeps the session id and starts a fresh episode
    again = http.post("/reset", json={"task_name": "click-test", "seed": 3, "session_id": reset.session_id})
    assert again.status_code == 200 and again.json()["session_id"] == reset.session_id
    assert again.json()["done"] is False

    assert http.post("/close", json={"session_id": reset.session_id}).json() == {"ok": True}
    _error(http.post("/step", json={"session_id": reset.session_id, "action": "click('13')"}), 404, "unknown_session")
    _error(http.post("/close", json={"session_id": reset.session_id}), 404, "unknown_session")
    # the browser survived the close: a new session works (the reference's Playwright died here)
    fresh = _reset(http)
    http.post("/close", json={"session_id": fresh.session_id})


def test_same_task_and_seed_give_the_same_goal_and_page(http: httpx.Client) -> None:
    a = _reset(http, "enter-text", seed=123)
    b = _reset(http, "enter-text", seed=123)
    c = _reset(http, "enter-text", seed=124)
    assert a.observation.goal == b.observation.goal
    assert a.observation.axtree_txt == b.observation.axtree_txt
    assert (c.observation.goal, c.observation.axtree_txt) != (a.observation.goal, a.observation.axtree_txt)
    # reset in place gives the same instance as a new session
    d = http.post("/reset", json={"task_name": "enter-text", "seed": 123, "session_id": c.session_id}).json()
    assert d["observation"]["goal"] == a.observation.goal
    for s in (a, b, c):
        http.post("/close", json={"session_id": s.session_id})


def test_random_seed_is_reported_so_the_episode_can_be_replayed(http: httpx.Client) -> None:
    a = _reset(http, "click-button", seed=None)
    b = _reset(http, "click-button", seed=a.seed)
    assert a.observation.goal == b.observation.goal
    for s in (a, b):
        http.post("/close", json={"session_id": s.session_id})


def test_unknown_task_is_a_404_with_close_matches(http: httpx.Client) -> None:
    body = _error(http.post("/reset", json={"task_name": "click-tset"}), 404, "unknown_task")
    assert "click-test" in (body.hint or "")
    body = _error(http.post("/reset", json={"task_name": "zzzz"}), 404, "unknown_task")
    assert "/tasks" in (body.hint or "")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"{not json", "JSON"),
        (b"[]", "body"),
        (b'{"task_name": 5}', "task_name"),
        (b'{"task_name": "click-test", "seed": -1}', "seed"),
        (b'{"task_name": "click-test", "seed": "x"}', "seed"),
        (b'{"task_name": "click-test", "bogus": 1}', "bogus"),
        (b'{"task_name": "click-test", "max_episode_steps": 0}', "max_episode_steps"),
        (b'{"task_name": "' + b"x" * 500 + b'"}', "task_name"),
    ],
)
def test_malformed_reset_requests_are_422_not_500(http: httpx.Client, payload: bytes, fragment: str) -> None:
    r = http.post("/reset", content=payload, headers={"content-type": "application/json"})
    body = _error(r, 422, "invalid_request")
    assert fragment in body.message


def test_invalid_actions_are_422_with_a_fix_and_the_episode_goes_on(http: httpx.Client) -> None:
    s = _reset(http)
    body = _error(http.post("/step", json={"session_id": s.session_id, "action": "click(bid)"}), 422, "invalid_action")
    assert "literal" in body.message and "click('13')" in (body.hint or "")
    body = _error(http.post("/step", json={"session_id": s.session_id, "action": "tap('13')"}), 422, "invalid_action")
    assert "unknown action 'tap'" in body.message
    # the refused actions did not count as steps; the episode still works
    step = http.post("/step", json={"session_id": s.session_id, "action": "click('13')"}).json()
    assert step["step"] == 1 and step["reward"] == 1.0
    http.post("/close", json={"session_id": s.session_id})


def test_a_failing_action_reports_its_error_in_the_observation(http: httpx.Client) -> None:
    s = _reset(http)
    step = http.post("/step", json={"session_id": s.session_id, "action": "click('999')"}).json()
    assert step["observation"]["last_action_error"].startswith("ValueError")
    assert "999" in step["observation"]["last_action_error"]
    assert step["done"] is False and step["step"] == 1
    http.post("/close", json={"session_id": s.session_id})


def test_max_episode_steps_truncates(http: httpx.Client) -> None:
    s = _reset(http, "click-checkboxes", seed=5, max_episode_steps=2)
    for expected_truncated in (False, True):
        step = http.post("/step", json={"session_id": s.session_id, "action": "noop(0)"}).json()
        assert step["truncated"] is expected_truncated and step["done"] is False
    _error(http.post("/step", json={"session_id": s.session_id, "action": "noop(0)"}), 409, "episode_over")
    http.post("/close", json={"session_id": s.session_id})


@pytest.mark.parametrize(
    "payload",
    [
        b'{"task_name": "click-\xff\xfetest"}',  # not UTF-8
        b'{"task_name": "click-test", "seed": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested too deep
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["invalid-utf8", "deep-field", "deep-body"],
)
def test_unreadable_bodies_are_the_documented_422(http: httpx.Client, payload: bytes) -> None:
    r = http.post("/reset", content=payload, headers={"content-type": "application/json"})
    body = _error(r, 422, "invalid_request")
    assert "UTF-8" in body.message and body.hint


@pytest.mark.parametrize("seed", [b"false", b"true", b'"5"', b"5.5", b"[5]"])
def test_seeds_must_be_json_integers(http: httpx.Client, seed: bytes) -> None:
    """Lax parsing turned `true` into seed 1 and `"5"` into 5: a client bug became another episode."""
    payload = b'{"task_name": "click-test", "seed": ' + seed + b"}"
    r = http.post("/reset", content=payload, headers={"content-type": "application/json"})
    assert "seed" in _error(r, 422, "invalid_request").message
    r = http.post(
        "/reset",
        content=payload.replace(b'"seed"', b'"max_episode_steps"'),
        headers={"content-type": "application/json"},
    )
    assert "max_episode_steps" in _error(r, 422, "invalid_request").message


def test_unknown_paths_and_methods_get_the_error_envelope(http: httpx.Client) -> None:
    body = _error(http.get("/nope"), 404, "not_found")
    assert "/reset" in (body.hint or "")
    r = http.get("/reset")
    body = _error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    _error(http.delete("/health"), 405, "method_not_allowed")


def test_a_bad_idempotency_key_is_a_422(http: httpx.Client) -> None:
    r = http.post("/step", json={"session_id": "x", "action": "noop()"}, headers={"Idempotency-Key": "a b"})
    assert "Idempotency-Key" in _error(r, 422, "invalid_request").message


def test_openapi_documents_the_contract(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert {"/health", "/tasks", "/reset", "/step", "/close"} <= set(spec["paths"])
    error_ref = "#/components/schemas/ErrorResponse"
    documented = {
        ("/health", "get"): {"200", "503"},
        ("/reset", "post"): {"200", "404", "410", "422", "500", "503"},
        ("/step", "post"): {"200", "404", "409", "410", "422", "500", "503"},
        ("/close", "post"): {"200", "404", "422", "500"},
    }
    for (path, method), statuses in documented.items():
        responses = spec["paths"][path][method]["responses"]
        assert statuses <= set(responses), (path, sorted(responses))
        for status in statuses - {"200"}:
            # FastAPI's default 422 schema (HTTPValidationError) is not what the service sends
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": error_ref}, (path, status, schema)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    step_params = {p["name"] for p in spec["paths"]["/step"]["post"].get("parameters", [])}
    assert "Idempotency-Key" in step_params
