"""CPU cost of one step, one observation and one reset, split by process, without HTTP.

Drives one BrowserSession of the service in-process on click-checkboxes and measures the CPU time
(user + system) that this Python process, the Playwright driver, Chromium's renderer and Chromium's
other processes spend per operation. CPU time depends much less on other load than wall time, so runs on
a shared machine stay comparable. The "episode" row is a reset in place and 5 clicks, what one client of
benchmarks/env_throughput.py does per episode; it also counts what only a new document's first action
pays.

    PYTHONPATH=src python benchmarks/observation_cost.py --repeats 60

Before/after: --src measures several source trees in turn, each in a process of its own with PYTHONPATH
at that tree, --rounds times, so that both see the same machine (e.g. a `git worktree` of the previous
commit):

    git worktree add /tmp/before <commit>
    python benchmarks/observation_cost.py --repeats 60 --rounds 3 --src /tmp/before/src src
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from browser_control.env_service.actions import parse_action
from browser_control.env_service.browser import BrowserOptions, BrowserSession, BrowserWorker
from browser_control.env_service.tasks import task_classes

try:
    from browser_control.env_service.tasks import serve_miniwob_pages
except ImportError:  # a tree from before the page server: its pages are file:// URLs
    from browser_control.env_service.tasks import miniwob_base_url

    def serve_miniwob_pages():  # type: ignore[no-redef]
        return miniwob_base_url(), None


TASK = "click-checkboxes"


def cpu_by_process() -> dict[tuple[int, str], float]:
    me = psutil.Process()
    used = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.pid == me.pid:
            kind = "python"
        elif "node" in proc.name():
            kind = "driver"
        elif "--type=renderer" in cmdline:
            kind = "renderer"
        else:
            kind = "chromium other"
        used[(proc.pid, kind)] = times.user + times.system
    return used


def measure(name: str, operation: Callable[[int], object], repeats: int) -> None:
    before = cpu_by_process()
    started = time.perf_counter()
    for i in range(repeats):
        operation(i)
    wall = time.perf_counter() - started
    after = cpu_by_process()
    kinds: dict[str, float] = {}
    for key, used in after.items():
        kinds[key[1]] = kinds.get(key[1], 0.0) + used - before.get(key, 0.0)
    cells = [f"{1000 * kinds.get(k, 0.0) / repeats:.1f}" for k in ("python", "driver", "renderer", "chromium other")]
    total = 1000 * sum(kinds.values()) / repeats
    print(f"| {name} | {1000 * wall / repeats:.1f} | {' | '.join(cells)} | {total:.1f} |", flush=True)


def alternate(args: argparse.Namespace) -> int:
    trees = [os.path.abspath(src) for src in args.src]
    missing = [t for t in trees if not os.path.isdir(os.path.join(t, "browser_control"))]
    if missing:
        raise SystemExit(f"not a source tree (no browser_control package in it): {', '.join(missing)}")
    command = [sys.executable, os.path.abspath(__file__), "--repeats", str(args.repeats)]
    if args.chromium_executable:
        command += ["--chromium-executable", args.chromium_executable]
    for round_ in range(1, args.rounds + 1):
        for tree in trees:
            print(f"\n## round {round_}: {tree}", flush=True)
            done = subprocess.run(command, env={**os.environ, "PYTHONPATH": tree}, check=False)
            if done.returncode != 0:
                return done.returncode
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60, help="operations per measurement (resets: a third)")
    parser.add_argument("--chromium-executable", default=os.environ.get("CHROMIUM_EXECUTABLE"))
    parser.add_argument(
        "--src", nargs="+", metavar="SRC", help="source trees to measure in turn (PYTHONPATH of each run)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --src: how many times to measure each tree")
    args = parser.parse_args()
    if args.src:
        return alternate(args)
    worker = BrowserWorker(0, BrowserOptions(chromium_executable=args.chromium_executable))
    # The pages come from where the service takes them (its page server unless MINIWOB_URL is set).
    base, page_server = serve_miniwob_pages()
    task_cls = task_classes()[TASK]
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; CPU ms per operation\n")
    print("| operation | wall ms | python | driver | renderer | chromium other | total |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def job() -> None:
        session = BrowserSession("bench", worker)
        observation = session.reset(task_cls, TASK, 1, base, None)
        bids = re.findall(r"\[(\w+)\] checkbox", observation["axtree_txt"])

        def step(i: int) -> object:
            return session.step(parse_action(f"click('{bids[i % len(bids)]}')"))

        for i in range(5):  # warm-up
            step(i)
        measure("step (click + settle + validate + observation)", step, args.repeats)
        measure("observation alone", lambda i: session._observation(""), args.repeats)
        measure("reset in place", lambda i: session.reset(task_cls, TASK, 1, base, None), max(1, args.repeats // 3))

        def episode(i: int) -> object:
            # What env_throughput.py's clients do: a reset in place, then 5 clicks. Unlike the rows above it
            # counts what only the first action on a new document pays (Playwright injecting its script).
            observation = session.reset(task_cls, TASK, i, base, None)
            boxes = re.findall(r"\[(\w+)\] checkbox", observation["axtree_txt"])
            for k in range(5):
                session.step(parse_action(f"click('{boxes[k % len(boxes)]}')"))
            return observation

        measure("episode (reset + 5 clicks)", episode, max(1, args.repeats // 5))
        session.close()

    try:
        worker.submit(job).result()
    finally:
        worker.stop()
        if page_server is not None:
            page_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
