"""How fast `browser-control view` answers over a large recording.

Writes a synthetic evaluation recording with the real recording code (``EpisodeRecorder``): N episodes
over 16 tasks and 2 runs, every 100th with a step-by-step trace of 5 steps with ~2 KB of page text each,
then serves it with the real viewer server on a free loopback port and times HTTP GETs of the pages a
user opens: the list of runs, the first page of episodes (cold: the log is parsed; warm: cached), a
filtered page, a far page, one episode and a side-by-side comparison.

    python benchmarks/viewer_pages.py --episodes 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from browser_control.recording import EpisodeRecorder, EpisodeTrace, TraceStep
from browser_control.viewer.app import make_server
from browser_control.viewer.store import Store

TASKS = [f"task-{i:02d}" for i in range(16)]
PAGE = "\n".join(f"\t[{i}] button 'Item number {i} of the synthetic page'" for i in range(40))


def write_recording(directory: Path, episodes: int) -> None:
    recorder = EpisodeRecorder(directory, fresh=True)
    for i in range(episodes):
        run = ("base", "trained")[i % 2]
        task = TASKS[(i // 2) % len(TASKS)]
        seed = 1_000_000_000 + i // (2 * len(TASKS))
        success = (i * 7919) % 10 < (3 if run == "base" else 6)
        trace = None
        if i % 100 < 2:  # both runs of the same instance, so the comparison page has two traces
            steps = [
                TraceStep(
                    index=k,
                    observation=f"Goal: do it\nStep {k - 1} of 5\nPage:\n{PAGE}",
                    output=f"<|tool_call_start|>[click(bid='{k}')]<|tool_call_end|>",
                    tool="click",
                    arguments={"bid": str(k)},
                    action=f"click('{k}')",
                    reached_service=True,
                    reward=0.0,
                    done=False,
                    result="...",
                )
                for k in range(1, 6)
            ]
            trace = recorder.write_trace(
                EpisodeTrace(source="evaluation", run=run, task=task, seed=seed, success=success, steps=steps),
                f"{run}-{task}-{seed}",
            )
        recorder.append(
            {
                "run": run,
                "task": task,
                "seed": seed,
                "success": success,
                "steps": 5,
                "tool_calls": 5,
                "invalid_actions": i % 3,
                "ended_by": "success" if success else "step_limit",
                "actions": [f"click('{k}')" for k in range(1, 6)],
                **({"trace": trace} if trace else {}),
            }
        )


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[float, float, int]:
    """(first request ms, median of the next ``repeat`` ms, bytes)."""
    start = time.perf_counter()
    response = client.get(path)
    first = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return first, statistics.median(times), len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "logs"
        started = time.perf_counter()
        write_recording(root / "big", args.episodes)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(
            f"recording: {args.episodes} episodes, {size / 1e6:.1f} MB, written in "
            f"{time.perf_counter() - started:.1f} s"
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = make_server(Store([("logs", root)]), "127.0.0.1", port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        traced_task, traced_seed = TASKS[0], 1_000_000_000
        pages = [
            ("runs list (cold)", "/"),
            ("episodes, page 1", "/run?r=0:big"),
            ("episodes, filtered (task + failure)", f"/run?r=0:big&task={TASKS[3]}&outcome=failure"),
            ("episodes, page 150", "/run?r=0:big&page=150"),
            ("one episode (5 steps)", "/episode?r=0:big&n=0"),
            ("side by side", f"/compare?a=0:big|base&b=0:big|trained&task={traced_task}&seed={traced_seed}"),
        ]
        print("| page | first request (ms) | median of next (ms) | bytes |\n|---|---:|---:|---:|")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for label, path in pages:
                first, median, n = timed(client, path, args.repeat)
                print(f"| {label} | {first:.0f} | {median:.0f} | {n} |")
        server.shutdown()


if __name__ == "__main__":
    main()
