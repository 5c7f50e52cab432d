"""Environment throughput with 1 and with N service replicas, through the trainer's pool client, in one run.

For each layout RxW it starts R `browser-control serve-env` processes with --workers W each,
then for each number of concurrent sessions runs one thread per session through one shared client, as the
trainer does: an ``EnvPool`` (env_pool.py) over the replicas, or a plain ``EnvClient`` for one. Each thread
plays episodes shaped like the debug training config: reset click-checkboxes, up to --episode-steps clicks
on its checkboxes, then a reset of the same session in place (which the pool must send to the replica
that holds the session).

    python benchmarks/env_pool_throughput.py --layouts 1x2 2x2 1x4 --sessions 8 16 --seconds 20

1x2 against 2x2 is one replica against two of the same size; 1x4 against 2x2 is the same number of
browsers in one process or in two.

Columns: steps/s and latencies as the client sees them; "service CPU ms/step" is the CPU (user + system)
of all replicas' process trees (Python, Playwright drivers, Chromium) divided by the steps taken, resets
included; "service Python CPU ms/step" is the part of it spent in the replicas' own Python processes, where
one replica's browser workers run as threads: one core's worth of it (1000 / that figure steps per second)
bounds what one replica can serve, however many workers it has. "sessions per replica" is how the pool
spread the sessions. On a machine with fewer free cores
than the replicas' workers could use, replicas add no steps/s (the cores are the limit, not the service);
CPU per step then says what a replica costs, which is what docs/scaling.md sizes a pool with.
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
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from browser_control.client import EnvClient  # noqa: E402
from browser_control.env_pool import EnvPool  # noqa: E402
from browser_control.env_service.process import ServiceProcess  # noqa: E402

CHECKBOX_RE = re.compile(r"\[(\w+)\] checkbox")


def tree_cpu_s(pid: int) -> dict[int, float]:
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


def start_replica(args: argparse.Namespace, workers: int) -> ServiceProcess:
    """One replica through the shared launcher (env_service/process.py)."""
    return ServiceProcess(
        "--workers",
        str(workers),
        "--max-sessions",
        str(max(args.sessions) + 2),
        "--log-level",
        "warning",
        chromium=args.chromium_executable,
    )


def wait_healthy(replica: ServiceProcess, timeout_s: float = 180.0) -> None:
    try:
        replica.wait_healthy(timeout_s)
    except RuntimeError as exc:
        raise SystemExit(f"serve-env at {replica.url}: {exc}") from None


class Player(threading.Thread):
    def __init__(self, client: EnvClient | EnvPool, deadline: float, seed: int, episode_steps: int):
        super().__init__(daemon=True)
        self.client, self.deadline, self.seed, self.episode_steps = client, deadline, seed, episode_steps
        self.reset_s: list[float] = []
        self.step_s: list[float] = []
        self.session_id: str | None = None
        self.error: str | None = None

    def _reset(self) -> list[str]:
        started = time.perf_counter()
        answer = self.client.reset("click-checkboxes", seed=self.seed, session_id=self.session_id)
        self.reset_s.append(time.perf_counter() - started)
        self.session_id = answer.session_id
        self.seed += 1
        return CHECKBOX_RE.findall(answer.observation.axtree_txt)

    def run(self) -> None:
        try:
            bids = self._reset()
            i = 0
            while time.perf_counter() < self.deadline:
                if not bids:
                    bids = self._reset()
                    continue
                started = time.perf_counter()
                answer = self.client.step(self.session_id or "", f"click('{bids[i % len(bids)]}')")
                self.step_s.append(time.perf_counter() - started)
                i += 1
                if answer.done or answer.truncated or i % self.episode_steps == 0:
                    bids = self._reset()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"


def run_level(client: EnvClient | EnvPool, pids: list[int], sessions: int, args: argparse.Namespace) -> dict:
    deadline = time.perf_counter() + args.seconds
    players = [Player(client, deadline, seed=1000 * k, episode_steps=args.episode_steps) for k in range(sessions)]
    before = {pid: tree_cpu_s(pid) for pid in pids}
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for p in players:
        p.start()
    for p in players:
        p.join()
    # Before the sessions are closed: how the pool placed them.
    spread = "/".join(str(n) for n in client.sessions_by_replica().values()) if isinstance(client, EnvPool) else ""
    elapsed = time.perf_counter() - started
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    service_cpu_s = python_cpu_s = 0.0
    for pid in pids:
        after = tree_cpu_s(pid)
        service_cpu_s += sum(t - before[pid].get(p, 0.0) for p, t in after.items())
        python_cpu_s += after.get(pid, 0.0) - before[pid].get(pid, 0.0)
    client_cpu_s = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    errors = [p.error for p in players if p.error]
    if errors:
        raise SystemExit(f"{len(errors)} session(s) failed, first: {errors[0]}")
    steps = [s for p in players for s in p.step_s]
    resets = [s for p in players for s in p.reset_s]
    for p in players:
        if p.session_id:
            client.close_session(p.session_id)
    return {
        "sessions": sessions,
        "spread": spread or str(sessions),
        "steps_per_s": len(steps) / elapsed,
        "resets_per_s": len(resets) / elapsed,
        "step_p50_ms": 1000 * percentile(steps, 0.5),
        "step_p95_ms": 1000 * percentile(steps, 0.95),
        "reset_p50_ms": 1000 * percentile(resets, 0.5),
        "service_cpu_ms_per_step": 1000 * service_cpu_s / max(1, len(steps)),
        "python_cpu_ms_per_step": 1000 * python_cpu_s / max(1, len(steps)),
        "client_cpu_ms_per_step": 1000 * client_cpu_s / max(1, len(steps)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--layouts",
        nargs="+",
        default=["1x2", "2x2", "1x4"],
        help="REPLICASxWORKERS each: replicas started, serve-env --workers of each",
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=[8, 16], help="concurrent sessions per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time per level")
    parser.add_argument("--episode-steps", type=int, default=5, help="actions before an in-place reset")
    parser.add_argument("--chromium-executable", default=os.environ.get("CHROMIUM_EXECUTABLE"))
    args = parser.parse_args()
    layouts = []
    for text in args.layouts:
        match = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", text)
        if match is None:
            parser.error(f"--layouts: {text!r} is not REPLICASxWORKERS, e.g. 2x4")
        layouts.append((int(match.group(1)), int(match.group(2))))
    if min(args.sessions) < 1 or args.seconds <= 0:
        parser.error("--sessions must be >= 1 and --seconds > 0")

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"command: {' '.join(sys.argv)}\n")
    print(
        "| replicas x workers | sessions | sessions per replica | steps/s | resets/s | step p50 ms | step p95 ms |"
        " reset p50 ms | service CPU ms/step | service Python CPU ms/step | client CPU ms/step |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count, workers in layouts:
        replicas = [start_replica(args, workers) for _ in range(count)]
        try:
            for replica in replicas:
                wait_healthy(replica)
            urls = [replica.url for replica in replicas]
            client: EnvClient | EnvPool = EnvPool(urls) if count > 1 else EnvClient(urls[0])
            with client:
                for sessions in args.sessions:
                    r = run_level(client, [replica.proc.pid for replica in replicas], sessions, args)
                    print(
                        f"| {count} x {workers} | {r['sessions']} | {r['spread']} | {r['steps_per_s']:.1f} | "
                        f"{r['resets_per_s']:.1f} | {r['step_p50_ms']:.0f} | {r['step_p95_ms']:.0f} | "
                        f"{r['reset_p50_ms']:.0f} | {r['service_cpu_ms_per_step']:.1f} | "
                        f"{r['python_cpu_ms_per_step']:.1f} | {r['client_cpu_ms_per_step']:.1f} |",
                        flush=True,
                    )
        finally:
            for replica in replicas:
                replica.stop()
    print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
