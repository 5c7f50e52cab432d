"""How long the environment service takes to answer and recover from browser faults, and what retries cost.

Starts `browser-control serve-env` (2 workers) as a child process and measures, through HTTP:

- step latency with and without an ``Idempotency-Key`` header (alternating, click-test ``noop(0)``);
- a session's renderer SIGKILLed: time to the 410 answer, then the time of the reset in place that
  revives it;
- a session's browser SIGSTOPped: time to the 410 answer (the job deadline), the time of the reset in
  place that revives it on a fresh browser, and a step on the other worker meanwhile.

    python benchmarks/fault_recovery.py --deadline-s 10 --steps 100
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import threading
import time

import httpx
import psutil


def renderers(pid: int) -> set[int]:
    found = set()
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if "--type=renderer" in proc.cmdline():
                found.add(proc.pid)
        except psutil.Error:
            pass
    return found


def browser_root(pid: int) -> psutil.Process:
    proc = psutil.Process(pid)
    while any(arg.startswith("--type=") for arg in proc.cmdline()):
        parent = proc.parent()
        assert parent is not None
        proc = parent
    return proc


def reset(http: httpx.Client, seed: int, session_id: str | None = None) -> str:
    r = http.post("/reset", json={"task_name": "click-test", "seed": seed, "session_id": session_id})
    r.raise_for_status()
    return r.json()["session_id"]


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deadline-s", type=float, default=10.0, help="--job-deadline-s of the service")
    parser.add_argument("--steps", type=int, default=100, help="steps per header variant")
    args = parser.parse_args()

    from browser_control.env_service.process import ServiceProcess

    service = ServiceProcess("--workers", "2", "--job-deadline-s", str(args.deadline_s), "--log-level", "warning")
    proc = service.proc
    try:
        service.wait_healthy(timeout_s=120)
        with httpx.Client(base_url=service.url, timeout=300) as http:
            # 1. the price of deduplication
            sid = reset(http, 1)
            plain: list[float] = []
            keyed: list[float] = []
            for i in range(2 * args.steps):
                headers = {"Idempotency-Key": f"bench-{i:08d}"} if i % 2 else None
                _, dt = timed(
                    lambda h=headers: http.post(
                        "/step", json={"session_id": sid, "action": "noop(0)"}, headers=h
                    ).raise_for_status()
                )
                (keyed if i % 2 else plain).append(1000 * dt)
            print(
                f"step noop(0) p50: {statistics.median(plain):.1f} ms without a key, "
                f"{statistics.median(keyed):.1f} ms with one ({args.steps} each, alternating)"
            )

            # 2. a crashed renderer
            before = renderers(proc.pid)
            victim = reset(http, 2)
            killed = renderers(proc.pid) - before
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            r, dt = timed(lambda: http.post("/step", json={"session_id": victim, "action": "click('13')"}))
            _, revive = timed(lambda: reset(http, 3, victim))
            print(
                f"renderer killed: step answered {r.status_code} {r.json().get('error')} in {1000 * dt:.0f} ms; "
                f"reset in place revived it in {1000 * revive:.0f} ms"
            )

            # 3. a hung browser
            http.post("/close", json={"session_id": sid})
            http.post("/close", json={"session_id": victim})
            before = renderers(proc.pid)
            hung = reset(http, 4)
            root = browser_root(next(iter(renderers(proc.pid) - before)))
            other = reset(http, 5)
            stopped = [root, *root.children(recursive=True)]
            for p in stopped:
                p.suspend()
            result: dict[str, float] = {}

            def on_other() -> None:
                _, result["other"] = timed(
                    lambda: http.post("/step", json={"session_id": other, "action": "click('13')"}).raise_for_status()
                )

            t = threading.Thread(target=on_other)
            t.start()
            r, dt = timed(lambda: http.post("/step", json={"session_id": hung, "action": "click('13')"}))
            t.join()
            _, revive = timed(lambda: reset(http, 6, hung))
            print(
                f"browser stopped: step answered {r.status_code} {r.json().get('error')} after {dt:.1f} s "
                f"(deadline {args.deadline_s:g} s); reset in place on a fresh browser {1000 * revive:.0f} ms; "
                f"a step on the other worker meanwhile {1000 * result['other']:.0f} ms"
            )
            for p in stopped:
                try:
                    p.resume()
                except psutil.Error:
                    pass
    finally:
        service.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
