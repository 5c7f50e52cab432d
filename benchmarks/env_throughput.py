"""Environment-service throughput through HTTP: steps/s, reset and step latency, memory per session.

Starts `browser-control serve-env` as a child process (or uses --url), then for each concurrency level
runs one client thread per session. Each thread plays episodes shaped like the debug training config:
reset click-checkboxes, then up to --episode-steps clicks on its checkboxes (real page work: action,
validation, accessibility tree), then reset the same session in place, as the trainer does.

    python benchmarks/env_throughput.py --sessions 1 4 8 16 --seconds 20 --workers 4

Before/after on the same cores: --cpus pins this script, the service it starts and every browser of
the service (they inherit the affinity) to the given CPUs, and --service-src runs the service from
another source tree, e.g. a `git worktree` of the previous commit; several trees are measured in turn,
--rounds times, so both see the same machine:

    git worktree add /tmp/before <commit>
    python benchmarks/env_throughput.py --cpus 0,1 --sessions 16 --rounds 2 \
        --service-src /tmp/before/src src

After each level one JSON line (starting with "{") gives steps/s, CPU per step by process kind and the
whole configuration, for scripts: `... | grep '^{'`.

With several --settle-timeout-ms values (e.g. `--settle-timeout-ms 1000 0`) one service per value is
measured in the same run, which gives the cost of the settling wait alone (0 observes without waiting).

CPU per step is the CPU time (user + system) that the service's whole process tree, and separately this
client, used during the level divided by the steps taken (resets included, as a training run does them),
after --warmup-s seconds in which the sessions are created and the counts are not taken. The JSON line
splits the service's share by process: Python (the service), Playwright's drivers, Chromium's renderers
and Chromium's other processes (browser, GPU, network).
On a machine shared with other work, steps/s depends on the load; CPU per step much less so, and
"steps/s on 2 free cores" = 2000 / (service + client CPU ms per step) is what two idle cores would allow.

Memory is the proportional set size (PSS, shared pages split fairly) of the service's whole process
tree: Python, Playwright drivers and every Chromium process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
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


def process_kind(proc: psutil.Process, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "python"
    if "node" in proc.name():
        return "driver"
    return "renderer" if "--type=renderer" in proc.cmdline() else "chromium_other"


def tree_cpu_s(pid: int) -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) used so far by each process of the service's tree, with its kind."""
    root = psutil.Process(pid)
    used = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            used[(proc.pid, process_kind(proc, pid))] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return used


def parse_cpus(text: str) -> set[int]:
    """'0,1' or '0-3,6' -> {0, 1} / {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 0,1 or 0-3, got {text!r}") from None
    available = os.sched_getaffinity(0)
    if not cpus or not cpus <= available:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(cpus)} are not all among this machine's {sorted(available)}")
    return cpus


def git_commit(src: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


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
        # (finished at, seconds taken): the level counts only what finished after the warm-up.
        self.reset_s: list[tuple[float, float]] = []
        self.step_s: list[tuple[float, float]] = []
        self.session_id: str | None = None
        self.error: str | None = None

    def _reset(self) -> list[str]:
        started = time.perf_counter()
        r = self.client.post(
            "/reset", json={"task_name": "click-checkboxes", "seed": self.seed, "session_id": self.session_id}
        )
        now = time.perf_counter()
        self.reset_s.append((now, now - started))
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
                now = time.perf_counter()
                self.step_s.append((now, now - started))
                r.raise_for_status()
                i += 1
                if r.json()["done"] or r.json()["truncated"] or i % self.episode_steps == 0:
                    bids = self._reset()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"


def run_level(
    url: str, sessions: int, seconds: float, warmup_s: float, episode_steps: int, pid: int | None
) -> dict[str, object]:
    started = time.perf_counter()
    deadline = started + warmup_s + seconds
    workers = [Worker(url, deadline, seed=1000 * k, episode_steps=episode_steps) for k in range(sessions)]
    for w in workers:
        w.start()
    # The warm-up creates the sessions (a renderer each) and lets every client reach its steady state.
    time.sleep(max(0.0, started + warmup_s - time.perf_counter()))
    t0 = time.perf_counter()
    cpu_before = tree_cpu_s(pid) if pid else {}
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    for w in workers:
        w.join()
    t1 = time.perf_counter()
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_after = tree_cpu_s(pid) if pid else {}
    elapsed = t1 - t0
    # Processes that started during the level (new renderers) count in full; ones that exited are lost.
    by_kind: dict[str, float] = {}
    for key, used in cpu_after.items():
        by_kind[key[1]] = by_kind.get(key[1], 0.0) + used - cpu_before.get(key, 0.0)
    service_cpu_s = sum(by_kind.values()) if pid else float("nan")
    client_cpu_s = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    errors = [w.error for w in workers if w.error]
    if errors:
        raise SystemExit(f"{len(errors)} client(s) failed, first: {errors[0]}")
    steps = [d for w in workers for end, d in w.step_s if end >= t0]
    resets = [d for w in workers for end, d in w.reset_s if end >= t0]
    n = max(1, len(steps))
    result: dict[str, object] = {
        "sessions": sessions,
        "steps": len(steps),
        "resets": len(resets),
        "seconds": round(elapsed, 2),
        "steps_per_s": len(steps) / elapsed,
        "resets_per_s": len(resets) / elapsed,
        "step_p50_ms": 1000 * percentile(steps, 0.5),
        "step_p95_ms": 1000 * percentile(steps, 0.95),
        "reset_p50_ms": 1000 * percentile(resets, 0.5),
        "reset_p95_ms": 1000 * percentile(resets, 0.95),
        "service_cpu_ms_per_step": 1000 * service_cpu_s / n,
        "client_cpu_ms_per_step": 1000 * client_cpu_s / n,
        "cpu_ms_per_step": 1000 * (service_cpu_s + client_cpu_s) / n,
        "service_cpu_ms_per_step_by_process": {k: round(1000 * v / n, 2) for k, v in sorted(by_kind.items())},
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
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=3.0,
        help="seconds of play before each level's counts start (sessions are created then)",
    )
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
    parser.add_argument(
        "--cpus",
        type=parse_cpus,
        default=None,
        help="run this script, the service and its browsers on these CPUs only, e.g. 0,1 (default: all)",
    )
    parser.add_argument(
        "--service-src",
        type=Path,
        nargs="+",
        default=[REPO / "src"],
        help="source tree(s) the service runs from (PYTHONPATH); several are measured in turn (default: ./src)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measure every tree and setting this many times")
    args = parser.parse_args()
    for src in args.service_src:
        if not (src / "browser_control" / "__main__.py").is_file():
            parser.error(f"--service-src {src}: no browser_control package there (give the tree's src/ folder)")
    if args.url is not None and (args.settle_timeout_ms or len(args.service_src) > 1 or args.cpus):
        parser.error("--settle-timeout-ms, several --service-src and --cpus need a service started by this script")
    if args.cpus is not None:
        # Children inherit the affinity: the service, its Playwright drivers and every Chromium process.
        os.sched_setaffinity(0, args.cpus)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable here), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"command: {' '.join(sys.argv)}")
    settle_values = args.settle_timeout_ms or [None]
    for _round in range(args.rounds):
        for src in args.service_src:
            for settle in settle_values:
                measure(args, settle, src.resolve())
    return 0


def measure(args: argparse.Namespace, settle: int | None, src: Path) -> None:
    from browser_control.env_service.process import ServiceProcess

    proc = service = None
    url = args.url
    if url is None:
        options = ["--max-sessions", str(max(args.sessions) + 2), "--log-level", "warning"]
        if args.workers:
            options += ["--workers", str(args.workers)]
        if settle is not None:
            options += ["--settle-timeout-ms", str(settle)]
        # The given tree goes first on PYTHONPATH, so the service under test imports browser_control from it;
        # what this process had there stays behind it (packages staged that way on a machine without pip).
        pythonpath = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
        log = Path(tempfile.gettempdir()) / f"env-throughput-serve-env-{os.getpid()}.log"
        service = ServiceProcess(
            *options, chromium=args.chromium_executable, env={"PYTHONPATH": pythonpath}, log_path=log
        )
        proc, url = service.proc, service.url
        try:
            service.wait_healthy(timeout_s=60)
        except RuntimeError as exc:
            service.stop()
            raise SystemExit(f"service did not become healthy: {exc}") from None
    try:
        idle_mb = tree_pss_mb(proc.pid) if proc else float("nan")
        label = "service default" if settle is None else f"--settle-timeout-ms {settle}"
        commit = git_commit(src) if proc else "unknown"
        print(f"\n{src} ({commit}), {label}; service idle memory (PSS, whole process tree): {idle_mb:.0f} MB\n")
        print(
            "| sessions | steps/s | resets/s | step p50 ms | step p95 ms | reset p50 ms | reset p95 ms |"
            " MB/session (total) | MB/session (added) | service CPU ms/step | client CPU ms/step |"
            " steps/s on 2 free cores |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.sessions:
            r = run_level(url, n, args.seconds, args.warmup_s, args.episode_steps, proc.pid if proc else None)
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
            config = {
                "service_src": str(src) if proc else None,
                "commit": commit,
                "url": args.url,
                "cpus": sorted(os.sched_getaffinity(0)),
                "workers": args.workers,
                "settle_timeout_ms": settle,
                "task": "click-checkboxes",
                "episode_steps": args.episode_steps,
                "measured_s": args.seconds,
                "warmup_s": args.warmup_s,
                "chromium_executable": args.chromium_executable,
                "python": platform.python_version(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            numbers = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
            print(json.dumps({**numbers, "config": config}), flush=True)
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if service:
            service.stop(grace_s=30)
            if service.log_path:  # kept only while the service is under way: a failure above shows its tail
                service.log_path.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
