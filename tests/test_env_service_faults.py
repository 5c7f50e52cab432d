"""Browser faults and client retries against real Chromium: crashed renderers, hung browsers, timeouts.

Faults are made for real: renderer processes are SIGKILLed, a browser is SIGSTOPped. Every wait polls
with a deadline sized for a slow, shared machine; nothing assumes how fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from browser_control.client import EnvClient
from tests.conftest import ServiceProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def own_service(chromium: str | None, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    services: list[ServiceProcess] = []

    def start(*args: str) -> ServiceProcess:
        service = ServiceProcess(*args, log_path=tmp_path / f"serve-env-{len(services)}.log", chromium=chromium)
        services.append(service)
        service.wait_healthy(timeout_s=120)
        return service

    yield start
    for service in services:
        service.stop()


# -- process helpers ---------------------------------------------------------------------------------
def _chromium_processes(service_pid: int) -> list[psutil.Process]:
    procs = []
    for proc in psutil.Process(service_pid).children(recursive=True):
        try:
            if any("chrom" in part or "headless" in part for part in proc.cmdline()[:1]):
                procs.append(proc)
        except psutil.Error:
            pass
    return procs


def _renderers(service_pid: int) -> set[int]:
    pids = set()
    for proc in _chromium_processes(service_pid):
        try:
            if "--type=renderer" in proc.cmdline():
                pids.add(proc.pid)
        except psutil.Error:
            pass
    return pids


def _browser_root(pid: int) -> psutil.Process:
    """The Chromium main process (the one without --type=) above a renderer."""
    proc = psutil.Process(pid)
    while any(arg.startswith("--type=") for arg in proc.cmdline()):
        parent = proc.parent()
        assert parent is not None
        proc = parent
    return proc


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what() if callable(what) else what}"
        time.sleep(0.1)


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_until(lambda: all(_gone(p) for p in pids), 30, "killed renderers exit")


def _reset(http: httpx.Client, seed: int, session_id: str | None = None) -> str:
    r = http.post("/reset", json={"task_name": "click-test", "seed": seed, "session_id": session_id})
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


def _click(http: httpx.Client, sid: str) -> httpx.Response:
    return http.post("/step", json={"session_id": sid, "action": "click('13')"})


# -- item: /health after the probe page's renderer died --------------------------------------------
@pytest.mark.timeout(300)
def test_health_recovers_when_the_probe_pages_renderer_dies(own_service) -> None:
    service = own_service("--workers", "1")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        for _round in range(3):
            assert http.get("/health").status_code == 200
            probe_renderers = _renderers(service.proc.pid)
            assert probe_renderers, "the probe page has a renderer"
            # Probes racing the crash: several /health requests are in flight while the renderer dies.
            racing = [threading.Thread(target=lambda: http.get("/health")) for _ in range(4)]
            for t in racing:
                t.start()
            _kill(probe_renderers)
            for t in racing:
                t.join(120)
            _wait_until(lambda: http.get("/health").status_code == 200, 60, "/health back to 200 after the crash")
        # the worker is not wedged: a session on it works
        sid = _reset(http, 1)
        assert _click(http, sid).json()["reward"] == 1.0


# -- item: a crashed session renderer -> 410, reset in place revives it ------------------------------
@pytest.mark.timeout(300)
def test_a_crashed_session_page_is_410_and_a_reset_in_place_revives_it(own_service) -> None:
    service = own_service("--workers", "1")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        bystander = _reset(http, 1)
        before = _renderers(service.proc.pid)
        victim = _reset(http, 2)
        victim_renderers = _renderers(service.proc.pid) - before
        assert victim_renderers, "the new session has its own renderer"

        _kill(victim_renderers)
        r = _click(http, victim)
        assert r.status_code == 410, r.text
        assert r.json()["error"] == "session_lost" and "reset" in r.json()["message"].lower()
        # the same browser's other session did not notice
        assert _click(http, bystander).json()["reward"] == 1.0
        # reset in place revives the session: same id, a working page
        assert _reset(http, 3, session_id=victim) == victim
        assert _click(http, victim).json()["reward"] == 1.0

        # a reset in place straight after a crash (no step in between to notice it) revives it too
        _kill(_renderers(service.proc.pid))
        assert _reset(http, 4, session_id=victim) == victim
        assert _click(http, victim).json()["reward"] == 1.0
        assert http.get("/health").status_code == 200


# -- item: a hung browser gets a deadline, other workers are unaffected -------------------------------
@pytest.mark.timeout(300)
def test_a_hung_browser_is_410_after_the_deadline_and_is_replaced(own_service) -> None:
    # 15 s is far above a reset or click on a loaded machine, and keeps the test short.
    service = own_service("--workers", "2", "--job-deadline-s", "15")
    with httpx.Client(base_url=service.url, timeout=120) as http:
        before = _renderers(service.proc.pid)
        hung = _reset(http, 1)
        hung_root = _browser_root(next(iter(_renderers(service.proc.pid) - before)))
        before = _renderers(service.proc.pid)
        healthy = _reset(http, 2)  # least-loaded placement puts it on the other worker
        healthy_root = _browser_root(next(iter(_renderers(service.proc.pid) - before)))
        assert hung_root.pid != healthy_root.pid

        stopped = [hung_root, *hung_root.children(recursive=True)]
        for proc in stopped:
            proc.suspend()
        try:
            outcome: dict[str, httpx.Response] = {}
            waiter = threading.Thread(target=lambda: outcome.setdefault("r", _click(http, hung)))
            waiter.start()
            # the other worker keeps serving while the hung one waits for its deadline
            assert _click(http, healthy).json()["reward"] == 1.0
            waiter.join(150)
            r = outcome["r"]
            assert r.status_code == 410, r.text
            assert r.json()["error"] == "session_lost" and "15 s" in r.json()["message"]
            # the stopped browser was killed, not left behind
            _wait_until(lambda: all(_gone(p.pid) for p in stopped), 60, "the hung browser is killed")
        finally:
            for proc in stopped:
                try:
                    proc.resume()
                    proc.kill()
                except psutil.Error:
                    pass
        # the worker has a fresh browser: the lost session revives in place, /health is fine
        assert _reset(http, 3, session_id=hung) == hung
        assert _click(http, hung).json()["reward"] == 1.0
        assert http.get("/health").status_code == 200
    assert "browser job overran its deadline" in service.log()


def _playwright_driver(browser: psutil.Process) -> psutil.Process | None:
    """The Playwright driver (node ... run-driver) above a browser, past any wrapper script in between."""
    for ancestor in browser.parents():
        if "run-driver" in ancestor.cmdline():
            return ancestor
    return None


@pytest.mark.timeout(300)
def test_a_hung_playwright_driver_is_replaced_too(own_service) -> None:
    """A hang below Chromium (the Playwright driver) survives killing the browser; the driver goes next."""
    service = own_service("--workers", "1", "--job-deadline-s", "15")
    with httpx.Client(base_url=service.url, timeout=120) as http:
        before = _renderers(service.proc.pid)
        sid = _reset(http, 1)
        driver = _playwright_driver(_browser_root(next(iter(_renderers(service.proc.pid) - before))))
        assert driver is not None and driver.pid != service.proc.pid
        driver.suspend()
        try:
            r = _click(http, sid)
            assert r.status_code == 410 and r.json()["error"] == "session_lost", r.text
            _wait_until(lambda: _gone(driver.pid), 60, "the hung driver is killed")
        finally:
            try:
                driver.resume()
                driver.kill()
            except psutil.Error:
                pass
        assert _reset(http, 2, session_id=sid) == sid
        assert _click(http, sid).json()["reward"] == 1.0
        assert http.get("/health").status_code == 200
    assert "killing the Playwright driver" in service.log()


@pytest.mark.timeout(120)
def test_a_worker_left_spinning_by_a_dead_driver_is_freed() -> None:
    """Playwright's sync API can spin for ever once its driver is dead (the call switches into a finished
    dispatcher); the watchdog then raises inside the worker thread so that later jobs run again.

    The job here spins in pure Python as that call does; a `sleep` process stands in for the driver.
    """
    from browser_control.env_service.browser import BrowserOptions, BrowserWorker, SessionLostError

    worker = BrowserWorker(0, BrowserOptions(job_deadline_s=1.0))
    stand_in_driver = subprocess.Popen(["sleep", "600"])
    try:
        worker._driver_process = psutil.Process(stand_in_driver.pid)
        spinning = threading.Event()

        def spin_for_ever() -> None:
            spinning.set()
            while True:
                pass

        hung = worker.submit(spin_for_ever)
        with pytest.raises(SessionLostError):
            hung.result(timeout=100)
        assert spinning.is_set()
        # Before the interrupt existed the worker thread never came back and this job never ran.
        assert worker.submit(lambda: "ran").result(timeout=100) == "ran"
        assert stand_in_driver.wait(timeout=30) is not None, "the stand-in driver was killed"
    finally:
        if stand_in_driver.poll() is None:
            stand_in_driver.kill()
        worker.stop()


# -- item: client retries run each request at most once ----------------------------------------------
def _requests_logged(service: ServiceProcess, path: str) -> list[dict]:
    records = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("msg") == "request" and r.get("path") == path]


@pytest.mark.timeout(300)
def test_a_step_retried_after_a_client_timeout_runs_once(own_service) -> None:
    service = own_service("--workers", "1")
    # 1 s read timeouts against a step that takes 3 s or more: the client retries while the service
    # still works on the first request. Backoff doubles, so the retries cover minutes of a slow machine.
    with EnvClient(service.url, timeout_s=1.0, retries=10, backoff_s=0.2) as client:
        sid = client.reset("click-test", seed=1).session_id
        slow = client.step(sid, "noop(3000)")
        assert slow.step == 1
        assert client.step(sid, "click('13')").step == 2  # the retries did not add steps
    steps = _requests_logged(service, "/step")
    assert any(r.get("replayed") for r in steps), "at least one retry was answered from the first run"


@pytest.mark.timeout(300)
def test_a_reset_retried_while_the_browser_is_stopped_creates_one_session(own_service) -> None:
    service = own_service("--workers", "1")
    browser = [
        p for p in _chromium_processes(service.proc.pid) if not any(a.startswith("--type=") for a in p.cmdline())
    ]
    assert len(browser) == 1
    stopped = [browser[0], *browser[0].children(recursive=True)]
    for proc in stopped:
        proc.suspend()
    resumer = threading.Timer(4.0, lambda: [p.resume() for p in stopped])
    resumer.start()
    try:
        with EnvClient(service.url, timeout_s=1.0, retries=10, backoff_s=0.2) as client:
            sid = client.reset("click-test", seed=7).session_id
            assert client.health().sessions == 1, "a retried reset opened a second session"
            assert client.step(sid, "click('13')").reward == 1.0
    finally:
        resumer.join()
        for proc in stopped:
            try:
                proc.resume()
            except psutil.Error:
                pass
    resets = _requests_logged(service, "/reset")
    assert len(resets) >= 2 and any(r.get("replayed") for r in resets), resets


def test_an_idempotency_key_is_bound_to_its_request_and_503s_are_not_replayed(own_service) -> None:
    service = own_service("--workers", "1", "--max-sessions", "1")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        key = {"Idempotency-Key": "k" * 16}
        r = http.post("/reset", json={"task_name": "click-test", "seed": 1}, headers=key)
        assert r.status_code == 200
        first = r.json()["session_id"]
        # the same key and request: the first response again, no second session
        again = http.post("/reset", json={"task_name": "click-test", "seed": 1}, headers=key)
        assert again.json() == r.json()
        # the same key for another request is refused, not silently answered with the wrong response
        other = http.post("/reset", json={"task_name": "click-test", "seed": 2}, headers=key)
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
        # a 503 (cap reached: nothing ran) is not replayed: the retry runs once there is room
        key2 = {"Idempotency-Key": "m" * 16}
        capped = http.post("/reset", json={"task_name": "click-test"}, headers=key2)
        assert capped.status_code == 503 and capped.json()["error"] == "session_cap"
        assert http.post("/close", json={"session_id": first}).status_code == 200
        retried = http.post("/reset", json={"task_name": "click-test"}, headers=key2)
        assert retried.status_code == 200, retried.text
