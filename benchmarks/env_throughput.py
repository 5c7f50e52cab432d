"""Environment-service throughput through HTTP: steps/s, reset and step latency, memory per session.

Starts `browser-control serve-env` as a child process (or uses --url), then for each concurrency level
runs one client thread per session. Each thread plays episodes shaped like the debug training config:
reset click-checkboxes, then up to --episode-steps clicks on its checkboxes (real page work: action,
validation, accessibility tree), then reset the same session in place, as the trainer does.

    python benchmarks/env_throughput.py --sessions 1 4 8 16 --seconds 20 --workers 4

With several --settle-timeout-ms values (e.g. `--settle-timeout-ms 1000 0`) one service per value is
measured in the same run, which gives the cost of the settling wait alone (0 observes without waiting).

CPU per step is the CPU time (user + system) that the service's whole process tree, and separately this
client, used during the level divided by the steps taken (resets included, as a training run does them).
On a machine shared with other work, steps/s depends on the load; CPU per step much less so, and
"steps/s on 2 free cores" = 2000 / (service + client CPU ms per step) is what two idle cores would allow.

Memory is the proportional set size (PSS, shared pages split fairly) of the service's whole process
tree: Python, Playwright drivers and every Chromium process.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import sys
import threading
import time

import httpx
import psutil

CHECKBOX_RE = re.compile(r"\[(\w+)\] checkbox")


def tree_pss_mb(pid: int) -> float:
    total = 0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process of the service's tree."""
    root = psutil.Process(pid)
    used = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            used[proc.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return used


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Worker(threading.Thread):
    def __init__(self, url: str, deadline: float, seed: int, episode_steps: int):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, timeout=60)
        self.deadline, self.seed, self.episode_steps = deadline, seed, episode_steps
        self.reset_s: list[float] = []
        self.step_s: list[float] = []
        self.session_id: str | None = None
        self.error: str | None = None

    def _reset(self) -> list[str]:
        started = time.perf_counter()
        r = self.client.post(
            "/reset", json={"task_name": "click-checkboxes", "seed": self.seed, "session_id": self.session_id}
        )
        self.reset_s.append(time.perf_counter() - started)
        r.raise_for_status()
        body = r.json()
        self.session_id = body["session_id"]
        self.seed += 1
        return CHECKBOX_RE.findall(body["observation"]["axtree_txt"])

    def run(self) -> None:
        try:
            bids = self._reset()
            i = 0
            while time.perf_counter() < self.deadline:
                if not bids:
                    bids = self._reset()
                    continue
                started = time.perf_counter()
                r = self.client.post(
                    "/step", json={"session_id": self.session_id, "action": f"click('{bids[i % len(bids)]}')"}
                )
                self.step_s.append(time.perf_counter() - started)
                r.raise_for_status()
                i += 1
                if r.json()["done"] or r.json()["truncated"] or i % self.episode_steps == 0:
                    bids = self._reset()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"


def run_level(url: str, sessions: int, seconds: float, episode_steps: int, pid: int | None) -> dict[str, float]:
    deadline = time.perf_counter() + seconds
    workers = [Worker(url, deadline, seed=1000 * k, episode_steps=episode_steps) for k in range(sessions)]
    cpu_before = tree_cpu_s(pid) if pid else {}
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_after = tree_cpu_s(pid) if pid else {}
    # Processes that started during the level (new renderers) count in full; ones that exited are lost.
    service_cpu_s = sum(t - cpu_before.get(p, 0.0) for p, t in cpu_after.items()) if pid else float("nan")
    client_cpu_s = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    errors = [w.error for w in workers if w.error]
    if errors:
        raise SystemExit(f"{len(errors)} client(s) failed, first: {errors[0]}")
    steps = [s for w in workers for s in w.step_s]
    resets = [s for w in workers for s in w.reset_s]
    result = {
        "sessions": sessions,
        "steps_per_s": len(steps) / elapsed,
        "resets_per_s": len(resets) / elapsed,
        "step_p50_ms": 1000 * percentile(steps, 0.5),
        "step_p95_ms": 1000 * percentile(steps, 0.95),
        "reset_p50_ms": 1000 * percentile(resets, 0.5),
        "reset_p95_ms": 1000 * percentile(resets, 0.95),
        "service_cpu_ms_per_step": 1000 * service_cpu_s / max(1, len(steps)),
        "client_cpu_ms_per_step": 1000 * client_cpu_s / max(1, len(steps)),
    }
    for w in workers:
        if w.session_id:
            w.client.post("/close", json={"session_id": w.session_id})
        w.client.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time per level")
    parser.add_argument("--episode-steps", type=int, default=5, help="actions before an in-place reset")
    parser.add_argument("--workers", type=int, default=None, help="serve-env --workers (default: its own)")
    parser.add_argument("--url", help="benchmark a running service instead of starting one")
    parser.add_argument("--chromium-executable", default=os.environ.get("CHROMIUM_EXECUTABLE"))
    parser.add_argument(
        "--settle-timeout-ms",
        type=int,
        nargs="+",
        help="serve-env --settle-timeout-ms; several values measure one service each",
    )
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"command: {' '.join(sys.argv)}")
    settle_values = args.settle_timeout_ms or [None]
    for settle in settle_values:
        if args.url is not None and settle is not None:
            raise SystemExit("--settle-timeout-ms needs a service started by this script (no --url)")
        measure(args, settle)
    return 0


def measure(args: argparse.Namespace, settle: int | None) -> None:
    from browser_control.env_service.process import ServiceProcess

    proc = service = None
    url = args.url
    if url is None:
        options = ["--max-sessions", str(max(args.sessions) + 2), "--log-level", "warning"]
        if args.workers:
            options += ["--workers", str(args.workers)]
        if settle is not None:
            options += ["--settle-timeout-ms", str(settle)]
        service = ServiceProcess(*options, chromium=args.chromium_executable)
        proc, url = service.proc, service.url
        try:
            service.wait_healthy(timeout_s=60)
        except RuntimeError as exc:
            service.stop()
            raise SystemExit(f"service did not become healthy: {exc}") from None
    try:
        idle_mb = tree_pss_mb(proc.pid) if proc else float("nan")
        label = "service default" if settle is None else f"--settle-timeout-ms {settle}"
        print(f"\n{label}; service idle memory (PSS, whole process tree): {idle_mb:.0f} MB\n")
        print(
            "| sessions | steps/s | resets/s | step p50 ms | step p95 ms | reset p50 ms | reset p95 ms |"
            " MB/session (total) | MB/session (added) | service CPU ms/step | client CPU ms/step |"
            " steps/s on 2 free cores |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.sessions:
            r = run_level(url, n, args.seconds, args.episode_steps, proc.pid if proc else None)
            # Hold n sessions open to measure their memory.
            clients = [httpx.Client(base_url=url, timeout=60) for _ in range(n)]
            ids = [
                c.post("/reset", json={"task_name": "click-checkboxes", "seed": k}).json()["session_id"]
                for k, c in enumerate(clients)
            ]
            total_mb = tree_pss_mb(proc.pid) if proc else float("nan")
            for c, sid in zip(clients, ids, strict=True):
                c.post("/close", json={"session_id": sid})
                c.close()
            print(
                f"| {n} | {r['steps_per_s']:.1f} | {r['resets_per_s']:.1f} | {r['step_p50_ms']:.0f} | "
                f"{r['step_p95_ms']:.0f} | {r['reset_p50_ms']:.0f} | {r['reset_p95_ms']:.0f} | "
                f"{total_mb / n:.0f} | {(total_mb - idle_mb) / n:.0f} | {r['service_cpu_ms_per_step']:.1f} | "
                f"{r['client_cpu_ms_per_step']:.1f} | "
                f"{2000 / (r['service_cpu_ms_per_step'] + r['client_cpu_ms_per_step']):.0f} |",
                flush=True,
            )
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if service:
            service.stop(grace_s=30)


if __name__ == "__main__":
    raise SystemExit(main())
