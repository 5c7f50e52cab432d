"""Train and evaluate a tiny browser agent on this machine's CPU: the whole loop in a few minutes.

No GPU, no Docker and nothing downloaded. The demo runs the commands of the Docker stack, each as its
own process, against an environment service it starts on a free local port:

  1. browser-control serve-env      the MiniWoB++ pages in real Chromium, over HTTP
  2. a tiny LFM2 built from scratch random weights, tokenizer trained locally (models/tiny.py)
  3. browser-control demos          scripted demonstrations on training seeds
  4. browser-control sft            a short supervised warm start   (configs/demo_sft.yaml)
  5. browser-control train          a few GRPO steps                  (configs/demo_grpo.yaml)
  6. browser-control evaluate       held-out success before and after GRPO, report and plot

Everything goes to one directory: the models and checkpoints, TensorBoard logs, the evaluation report
and one log per command. Every process the demo started is stopped when it ends, fails or is
interrupted (Ctrl-C). It also serves as a smoke test of an installation.

Examples:
  browser-control demo
  browser-control demo --output runs/demo/mine --eval-episodes 32
  browser-control demo --set max_steps=24          # more GRPO steps

Exit status: 0 when every step ran (the last line says whether GRPO helped), 1 when a step failed
(its log's last lines are printed), 2 for bad arguments or a missing dependency, 130/143 when stopped by
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from browser_control.arg_types import positive_float, positive_int

EXIT_FAILED = 1
EXIT_SETUP = 2

MODEL_DIR = "tiny-lfm2"
SFT_RUN = "tiny-lfm2-sft"
GRPO_RUN = "tiny-lfm2-grpo"
# The size benchmarks/learning_curve.py and the `make demo` runs measured: ~0.6M parameters, attention
# in the last of 4 layers. Smaller models did not learn these tasks in a dozen GRPO steps.
MODEL_SHAPE = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "seed": 0,
}
# Per-turn generation cap for evaluation: a tool call is ~10 tokens; more only lets a tiny model ramble
# (the learning benchmark's setting).
EVAL_MAX_NEW_TOKENS = 48
DEBIAN_CHROMIUM = ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/chromium")
PHASES = 6

_BUILD_MODEL = (
    "import json, sys, torch\n"
    "from browser_control.models.tiny import build_tiny_lfm2\n"
    "torch.set_num_threads(1)\n"
    "path = build_tiny_lfm2(sys.argv[1], **json.loads(sys.argv[2]))\n"
    "print(f'model: {path}')\n"
)


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


class DemoStopped(BaseException):
    """SIGTERM or SIGHUP: stop like Ctrl-C (a BaseException so no `except Exception` swallows it)."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def _repo_configs() -> Path:
    """configs/ of the working directory, else the one beside this source tree (an editable install)."""
    here = Path("configs")
    if (here / "demo_grpo.yaml").is_file():
        return here
    return Path(__file__).resolve().parents[2] / "configs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    configs = _repo_configs()
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="where everything goes; must be new or empty (default: runs/demo/<date-time>)",
    )
    parser.add_argument(
        "--sft-config", type=Path, default=configs / "demo_sft.yaml", metavar="YAML", help="the SFT config"
    )
    parser.add_argument(
        "--grpo-config",
        type=Path,
        default=configs / "demo_grpo.yaml",
        metavar="YAML",
        help="the GRPO config; its tasks and max_episode_steps are also those of the demonstrations and the evaluation",
    )
    parser.add_argument(
        "--sft-set", action="append", default=[], metavar="KEY=VALUE", help="override one SFT config key; repeatable"
    )
    parser.add_argument(
        "--set",
        dest="grpo_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one GRPO config key, e.g. max_steps=24; repeatable",
    )
    parser.add_argument(
        "--demos-per-task", type=positive_int, default=6, help="scripted demonstrations recorded per task"
    )
    parser.add_argument(
        "--eval-episodes", type=positive_int, default=16, help="held-out evaluation episodes per task and model"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=2, help="Chromium browser threads of the environment service"
    )
    parser.add_argument(
        "--chromium-executable",
        default=os.environ.get("CHROMIUM_EXECUTABLE"),
        metavar="PATH",
        help="Chromium binary for the service [CHROMIUM_EXECUTABLE; else Debian's "
        "chromium-headless-shell when installed; else Playwright's own]",
    )
    parser.add_argument(
        "--service-wait-s",
        type=positive_float,
        default=180.0,
        help="how long the environment service may take to become healthy",
    )
    parser.add_argument(
        "--stop-grace-s",
        type=positive_float,
        default=30.0,
        help="on stop, how long processes get to exit after SIGTERM before SIGKILL",
    )


# -- processes ------------------------------------------------------------------------------------------

# One tqdm refresh: "desc: 42%|████  | 5/12 [00:03<00:04, 1.7it/s]" (desc and bar optional).
_TQDM = re.compile(r"^\s*(?:(?P<desc>.*?):\s*)?\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[")


class OutputReader(threading.Thread):
    """Copies a child's output to its log file and keeps the latest count of every tqdm bar in it.

    The commands draw their own progress bars (tqdm); reading them back gives the demo's bar without a
    second progress channel into every command.
    """

    def __init__(self, stream: Any, log_path: Path):
        super().__init__(daemon=True, name=f"output-{log_path.stem}")
        self._stream = stream
        self._log_path = log_path
        self._lock = threading.Lock()
        self._pending = ""
        self._bars: dict[str, tuple[int, int]] = {}
        self.lines: list[str] = []

    def run(self) -> None:
        with self._log_path.open("ab") as log:
            while True:
                chunk = self._stream.read1(65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                self.feed(chunk.decode("utf-8", errors="replace"))
        self.feed("\n")

    def feed(self, text: str) -> None:
        with self._lock:
            pieces = re.split(r"[\r\n]", self._pending + text)
            self._pending = pieces.pop()
            for piece in pieces:
                match = _TQDM.match(piece)
                if match:
                    self._bars[(match.group("desc") or "").strip()] = (int(match.group("n")), int(match.group("total")))
                elif piece.strip():
                    self.lines.append(piece)
                    del self.lines[:-200]

    def progress(self, descs: set[str], total_per_bar: int | None = None) -> int:
        """Sum of the latest counts of the bars named in ``descs`` ('' for a bar without a name)."""
        with self._lock:
            return sum(
                n
                for desc, (n, total) in self._bars.items()
                if desc in descs and (total_per_bar is None or total == total_per_bar)
            )

    def value(self, prefix: str) -> str | None:
        """The rest of the last output line starting with ``prefix`` (such as 'checkpoint: ')."""
        with self._lock:
            for line in reversed(self.lines):
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
        return None


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    output: OutputReader
    log: Path


def _set_subreaper(on: bool) -> bool:
    """Make this process adopt its orphaned descendants (Linux), so none escapes the final sweep.

    Playwright starts Chromium in a session of its own; if its parent dies first, Chromium would be
    re-parented to init and out of reach.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        pr_set_child_subreaper = 36
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Processes:
    """Every process the demo starts, each in a session of its own so the demo alone decides when it stops."""

    def __init__(self, env: dict[str, str], cwd: Path, log_dir: Path):
        self.env = env
        self.cwd = cwd
        self.log_dir = log_dir
        self.children: list[Child] = []
        # Processes below this one that the demo did not start (a caller's own servers, when the demo runs
        # inside another program): the final sweep leaves them and their descendants alone.
        self._foreign = {p.pid for p in _descendants()}

    def start(self, name: str, argv: list[str]) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as handle:
            handle.write(f"$ {' '.join(argv)}\n".encode())
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        output = OutputReader(proc.stdout, log)
        child = Child(name, proc, output, log)
        self.children.append(child)
        output.start()
        return child

    def alive(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is None]

    def _ours(self) -> list[Any]:
        """Descendants of this process that the demo started, or that its children left behind."""
        processes = _descendants()
        foreign = set(self._foreign)
        for process in processes:
            try:
                if process.pid in self._foreign:
                    foreign.update(p.pid for p in process.children(recursive=True))
            except Exception:  # psutil.NoSuchProcess: gone
                pass
        return [p for p in processes if p.pid not in foreign]

    def stop_all(self, grace_s: float) -> None:
        """SIGTERM to each child (latest first), SIGKILL to whatever is left of them after ``grace_s``."""
        tree = self._ours()
        running = list(reversed(self.alive()))
        for child in running:
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Whatever is left: leaders that ignored SIGTERM, their process groups, and every descendant seen
        # (Chromium lives in sessions of its own). A leader not yet reaped keeps its pid, so its group id
        # cannot belong to anyone else; psutil checks that a descendant's pid was not reused before it signals.
        for child in running:
            if child.proc.returncode is None:
                try:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        swept = {p.pid: p for p in [*tree, *self._ours()]}
        for process in swept.values():
            try:
                process.kill()
            except Exception:  # psutil.NoSuchProcess, AccessDenied: gone, or not ours
                pass
        for child in self.children:
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            child.output.join(5)
        _reap_adopted(set(swept) - {c.proc.pid for c in self.children})


def _descendants() -> list[Any]:
    """psutil.Process objects of every process below this one (none without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _reap_adopted(pids: set[int], timeout_s: float = 10.0) -> None:
    """Collect the exit status of the orphans among ``pids`` that this process adopted as subreaper.

    Only those: waiting for any child would steal the exit status of a caller's own processes.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (never adopted) or already collected
                pending.discard(pid)
                continue
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- display ---------------------------------------------------------------------------------------------


class PhaseDisplay:
    """A tqdm bar per phase on a terminal; plain start/progress/done lines otherwise (logs, CI)."""

    def __init__(self, index: int, title: str, total: int, unit: str, stream: TextIO):
        self.label = f"[{index}/{PHASES}] {title}"
        self.total = total
        self.unit = unit
        self.stream = stream
        self.n = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self.bar: Any = None
        if stream.isatty():
            from tqdm import tqdm

            # tqdm draws nothing on a terminal that reports 0 columns or rows (a pty nobody sized, as under
            # `script` or some CI runners): give it a size then.
            try:
                size = os.get_terminal_size(stream.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
                sized = False
            self.bar = tqdm(
                total=total,
                desc=self.label,
                unit=unit,
                file=stream,
                dynamic_ncols=sized,
                ncols=None if sized else 100,
                nrows=None if sized else 24,
                leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {n}/{total} {unit} [{elapsed}]{postfix}",
            )
        else:
            print(f"{self.label}: started", file=stream, flush=True)

    def update(self, n: int) -> None:
        n = max(0, min(n, self.total))
        if self.bar is not None:
            if n != self.n:
                self.bar.update(n - self.n)
            else:
                self.bar.refresh()  # the elapsed time moves on
        elif n != self.n and time.monotonic() - self._last_line >= 5.0:
            print(f"{self.label}: {n}/{self.total} {self.unit}", file=self.stream, flush=True)
            self._last_line = time.monotonic()
        self.n = n

    def done(self, note: str = "") -> None:
        seconds = time.monotonic() - self.started
        if self.bar is not None:
            self.update(self.total)
            self.bar.close()
            if note:  # on a line of its own: in the bar it would squeeze the bar to nothing
                print(f"      {note}", file=self.stream, flush=True)
        else:
            print(
                f"{self.label}: done in {seconds:.0f} s" + (f", {note}" if note else ""), file=self.stream, flush=True
            )

    def failed(self, how: str = "failed") -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(how, refresh=True)
            self.bar.close()
        else:
            print(f"{self.label}: {how} after {time.monotonic() - self.started:.0f} s", file=self.stream, flush=True)


# -- the demo --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    output: Path
    sft_config: Path
    grpo_config: Path
    sft_set: list[str]
    grpo_set: list[str]
    tasks: list[str]
    max_episode_steps: int
    sft_steps: int | None
    grpo_steps: int
    max_completion_length: int
    demos_per_task: int
    eval_episodes: int
    workers: int
    chromium: str | None
    service_wait_s: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.output / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.output / "tensorboard"

    @property
    def evaluation(self) -> Path:
        return self.output / "evaluation"


def _fail(message: str, status: int = EXIT_SETUP) -> int:
    print(f"browser-control demo: error: {message}", file=sys.stderr)
    return status


def _check_dependencies() -> None:
    import importlib.util

    missing = [
        name
        for name in (
            "torch",
            "transformers",
            "trl",
            "datasets",
            "matplotlib",
            "playwright",
            "uvicorn",
            "browsergym.miniwob",
            "psutil",
        )
        if importlib.util.find_spec(name.split(".")[0]) is None
    ]
    if missing:
        raise DemoError(
            f"missing Python packages: {', '.join(missing)}. The demo needs the 'env' and 'train' "
            "extras: make dev-setup, or pip install -e '.[env,train]'"
        )


def _chromium(configured: str | None) -> str | None:
    if configured:
        if not os.access(configured, os.X_OK):
            raise DemoError(
                f"Chromium {configured} is not an executable file (CHROMIUM_EXECUTABLE or --chromium-executable)"
            )
        return configured
    return next((path for path in DEBIAN_CHROMIUM if os.access(path, os.X_OK)), None)


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate everything that can be checked before a process is started."""
    from browser_control.evaluation.scripted import SCRIPTED_TASKS
    from browser_control.sft.config import load_sft_config
    from browser_control.training.config import ConfigError, load_config

    _check_dependencies()
    # Placeholders for the keys the demo sets itself: the real values exist only once earlier steps ran.
    placeholders = ["browsergym_url=http://127.0.0.1:1"]
    try:
        sft = load_sft_config(str(args.sft_config), [*args.sft_set, "demos=[demos.jsonl]"], environ={})
        grpo = load_config(args.grpo_config, [*args.grpo_set, *placeholders], environ={})
    except ConfigError as exc:
        raise DemoError(f"invalid config\n{exc}") from None
    tasks = [t.name for t in grpo.tasks]
    missing = [t for t in tasks if t not in SCRIPTED_TASKS]
    if missing:
        raise DemoError(
            f"no scripted policy to record demonstrations of {', '.join(missing)}; the demo's tasks "
            f"need one of: {', '.join(sorted(SCRIPTED_TASKS))}"
        )
    if grpo.use_vllm:
        raise DemoError("the demo runs on CPU: set use_vllm=false")
    output = args.output or Path("runs") / "demo" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = output.expanduser().resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DemoError(f"{output} exists and is not an empty directory; give a new --output")
    try:
        (output / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create {output}: {exc}") from None
    sft_set = [*args.sft_set, f"max_episode_steps={grpo.max_episode_steps}"]
    return Plan(
        output=output,
        sft_config=args.sft_config.resolve(),
        grpo_config=args.grpo_config.resolve(),
        sft_set=sft_set,
        grpo_set=list(args.grpo_set),
        tasks=tasks,
        max_episode_steps=grpo.max_episode_steps,
        sft_steps=sft.max_steps,
        grpo_steps=grpo.max_steps,
        max_completion_length=grpo.max_completion_length,
        demos_per_task=args.demos_per_task,
        eval_episodes=args.eval_episodes,
        workers=args.workers,
        chromium=_chromium(args.chromium_executable),
        service_wait_s=args.service_wait_s,
    )


def child_env() -> dict[str, str]:
    """The children's environment: this source tree first, offline, one torch thread per process."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    # Nothing is downloaded: every model is a local directory, and a library that tries gets an error.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # Torch's threads and Chromium fight over the cores otherwise (docs/learning.md); the user may override.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "browser_control", *args]


def _sets(pairs: list[str]) -> list[str]:
    return [part for pair in pairs for part in ("--set", pair)]


class Demo:
    def __init__(self, plan: Plan, processes: Processes, stream: TextIO):
        self.plan = plan
        self.processes = processes
        self.stream = stream
        self.service: Child | None = None
        self.url = ""

    def _tail(self, child: Child, lines: int = 25) -> str:
        text = child.log.read_text(errors="replace").replace("\r", "\n")
        kept = [line for line in text.splitlines() if line.strip() and not _TQDM.match(line)]
        return "\n".join("    " + line for line in kept[-lines:])

    def _phase(
        self,
        index: int,
        key: str,
        title: str,
        argv: list[str],
        total: int,
        unit: str,
        bars: set[str],
        total_per_bar: int | None,
        note_prefix: str = "",
    ) -> Child:
        display = PhaseDisplay(index, title, total, unit, self.stream)
        child = self.processes.start(key, argv)
        try:
            while child.proc.poll() is None:
                if self.service is not None and self.service.proc.poll() is not None:
                    raise DemoError(
                        f"the environment service exited with code {self.service.proc.returncode} "
                        f"during '{title}'; its log ({_shown(self.service.log)}) ends with:\n"
                        f"{self._tail(self.service)}"
                    )
                display.update(child.output.progress(bars, total_per_bar))
                time.sleep(0.25)
            child.output.join(10)
            if child.proc.returncode != 0:
                raise DemoError(
                    f"'{title}' failed (exit code {child.proc.returncode}); its log ({_shown(child.log)}) "
                    f"ends with:\n{self._tail(child)}"
                )
        except (KeyboardInterrupt, DemoStopped):
            display.failed("stopped")
            raise
        except BaseException:
            display.failed()
            raise
        self.plan.timings[key] = round(time.monotonic() - display.started, 1)
        note = child.output.value(note_prefix) if note_prefix else None
        display.done(_shorten_paths(f"{note_prefix}{note}") if note else "")
        return child

    def start_service(self) -> None:
        plan = self.plan
        display = PhaseDisplay(1, "environment service", 1, "check", self.stream)
        try:
            import httpx

            for _attempt in range(3):
                port = _free_port()
                argv = _cli("serve-env", "--port", str(port), "--workers", str(plan.workers), "--max-sessions", "64")
                if plan.chromium:
                    argv += ["--chromium-executable", plan.chromium]
                child = self.processes.start("serve-env", argv)
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + plan.service_wait_s
                while time.monotonic() < deadline and child.proc.poll() is None:
                    try:
                        if httpx.get(url + "/health", timeout=5).status_code == 200:
                            self.service, self.url = child, url
                            break
                    except httpx.TransportError:
                        pass
                    display.update(0)
                    time.sleep(0.3)
                if self.service is not None:
                    break
                if child.proc.poll() is None:
                    raise DemoError(
                        f"the environment service did not answer {url}/health within "
                        f"{plan.service_wait_s:.0f} s; its log ({_shown(child.log)}) ends with:\n"
                        f"{self._tail(child)}"
                    )
                child.output.join(5)
                # Another program may take the port between the check and the bind: try a fresh one.
                if "already in use" not in child.log.read_text(errors="replace").lower():
                    hint = (
                        ""
                        if plan.chromium
                        else (
                            " No Chromium was found: apt-get install "
                            "chromium-headless-shell, or .venv/bin/playwright install "
                            "chromium, or set CHROMIUM_EXECUTABLE."
                        )
                    )
                    raise DemoError(
                        f"the environment service exited with code {child.proc.returncode}; its log "
                        f"({_shown(child.log)}) ends with:\n{self._tail(child)}{hint}"
                    )
            if self.service is None:
                raise DemoError("no free local port for the environment service after 3 attempts")
        except (KeyboardInterrupt, DemoStopped):
            display.failed("stopped")
            raise
        except BaseException:
            display.failed()
            raise
        self.plan.timings["serve-env"] = round(time.monotonic() - display.started, 1)
        display.done(f"{self.url} (pid {self.service.proc.pid})")

    def run(self) -> dict[str, Any]:
        plan = self.plan
        out = plan.output
        started = time.monotonic()
        self.start_service()

        model = out / MODEL_DIR
        self._phase(
            2,
            "model",
            "tiny model from scratch",
            [sys.executable, "-c", _BUILD_MODEL, str(model), json.dumps(MODEL_SHAPE)],
            1,
            "model",
            set(),
            None,
            "model: ",
        )

        demos = out / "demos.jsonl"
        episodes = len(plan.tasks) * plan.demos_per_task
        self._phase(
            3,
            "demos",
            "scripted demonstrations",
            _cli(
                "demos",
                "--tasks",
                ",".join(plan.tasks),
                "--episodes",
                str(plan.demos_per_task),
                "--max-episode-steps",
                str(plan.max_episode_steps),
                "--browsergym-url",
                self.url,
                "--concurrency",
                "8",
                "--output",
                str(demos),
            ),
            episodes,
            "episodes",
            {"demos"},
            episodes,
            "wrote ",
        )

        common = ["--set", f"checkpoint_dir={plan.checkpoints}", "--set", f"logging_dir={plan.tensorboard}"]
        sft_steps = plan.sft_steps or 0
        sft = self._phase(
            4,
            "sft",
            "SFT warm start",
            _cli(
                "sft",
                "--config",
                str(plan.sft_config),
                *_sets(plan.sft_set),
                "--set",
                f"model_name={model}",
                "--set",
                f"demos=[{demos}]",
                "--set",
                f"run_name={SFT_RUN}",
                *common,
            ),
            sft_steps or 1,
            "steps",
            {""},
            plan.sft_steps,
            "checkpoint: ",
        )
        sft_dir = Path(sft.output.value("checkpoint: ") or plan.checkpoints / SFT_RUN)

        grpo = self._phase(
            5,
            "train",
            "GRPO against the environment service",
            _cli(
                "train",
                "--config",
                str(plan.grpo_config),
                *_sets(plan.grpo_set),
                "--set",
                f"model_name={sft_dir}",
                "--set",
                f"browsergym_url={self.url}",
                "--set",
                f"run_name={GRPO_RUN}",
                *common,
            ),
            plan.grpo_steps,
            "steps",
            {""},
            plan.grpo_steps,
            "checkpoint: ",
        )
        grpo_dir = Path(grpo.output.value("checkpoint: ") or plan.checkpoints / GRPO_RUN)

        per_model = len(plan.tasks) * plan.eval_episodes
        self._phase(
            6,
            "evaluate",
            "evaluation before/after GRPO (held-out seeds)",
            _cli(
                "evaluate",
                "--model",
                str(sft_dir),
                "--model",
                str(grpo_dir),
                "--tasks",
                ",".join(plan.tasks),
                "--episodes",
                str(plan.eval_episodes),
                "--max-episode-steps",
                str(plan.max_episode_steps),
                "--max-completion-tokens",
                str(plan.max_completion_length),
                "--max-new-tokens",
                str(EVAL_MAX_NEW_TOKENS),
                "--concurrency",
                "16",
                "--browsergym-url",
                self.url,
                "--output",
                str(plan.evaluation),
            ),
            2 * per_model,
            "episodes",
            {sft_dir.name, grpo_dir.name},
            per_model,
            "report: ",
        )
        total_s = round(time.monotonic() - started, 1)
        report = json.loads((plan.evaluation / "report.json").read_text())
        summary = {
            "output": str(out),
            "tasks": plan.tasks,
            "model": str(model),
            "sft_checkpoint": str(sft_dir),
            "grpo_checkpoint": str(grpo_dir),
            "tensorboard": str(plan.tensorboard),
            "report": str(plan.evaluation / "report.md"),
            "plot": str(plan.evaluation / "success_rates.png"),
            "eval_episodes_per_task": plan.eval_episodes,
            "before": _rates(report["runs"][0]),
            "after": _rates(report["runs"][1]),
            "comparison": report.get("comparison", []),
            "timings_s": {**plan.timings, "total": total_s},
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
            "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        }
        (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _rates(run: dict[str, Any]) -> dict[str, float]:
    rates = {t["task"]: t["success_rate"] for t in run["tasks"]}
    rates["all tasks"] = run["overall"]["success_rate"]
    return rates


def _shorten_paths(text: str) -> str:
    """``text`` with the working directory's prefix taken off the paths in it."""
    return text.replace(f"{Path.cwd()}{os.sep}", "")


def _shown(path: Path | str) -> str:
    """A path relative to the working directory when it is below it (shorter to copy)."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _tensorboard_command(logdir: str) -> str:
    beside = Path(sys.executable).parent / "tensorboard"
    if beside.exists():
        return f"{_shown(beside)} --logdir {logdir}"
    if shutil.which("tensorboard"):
        return f"tensorboard --logdir {logdir}"
    return f"pip install tensorboard && tensorboard --logdir {logdir}"


def _browser_control() -> str:
    """How to call browser-control from here: the script beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "browser-control"
    if beside.exists() and shutil.which("browser-control") != str(beside):
        return _shown(beside)
    return "browser-control"


def final_line(summary: dict[str, Any]) -> str:
    before, after = summary["before"], summary["after"]
    parts = [f"{task} {100 * before[task]:.0f}% -> {100 * after.get(task, 0.0):.0f}%" for task in before]
    overall = next((row for row in summary["comparison"] if row["task"] == "all tasks"), None)
    verdict = ""
    if overall is not None:
        verdict = (
            f"; change {100 * overall['delta']:+.0f} points, 95% CI {100 * overall['ci_low']:+.0f}.."
            f"{100 * overall['ci_high']:+.0f}: {overall['verdict']}"
        )
    return (
        f"held-out success before -> after GRPO ({summary['eval_episodes_per_task']} episodes per task, "
        f"greedy): {', '.join(parts)}{verdict}"
    )


def print_summary(summary: dict[str, Any], stream: TextIO) -> None:
    total = summary["timings_s"]["total"]
    logdir = _shown(summary["tensorboard"])
    lines = [
        "",
        f"Done in {total // 60:.0f} min {total % 60:.0f} s. Everything is in {_shown(summary['output'])}/:",
        f"  checkpoint   {_shown(summary['grpo_checkpoint'])}  (after GRPO; the SFT start: "
        f"{_shown(summary['sft_checkpoint'])})",
        f"  report       {_shown(summary['report'])}  (plot: {_shown(summary['plot'])})",
        f"  TensorBoard  {logdir}  ->  {_tensorboard_command(logdir)}  then open http://localhost:6006",
        f"  episodes     {_browser_control()} view --logs {_shown(Path(summary['report']).parent)} --checkpoints "
        f"{_shown(Path(summary['grpo_checkpoint']).parent)}  then open http://127.0.0.1:8050/  (step by step)",
        f"  logs         {_shown(Path(summary['output']) / 'logs')}/  (one per command)",
        final_line(summary),
    ]
    print("\n".join(lines), file=stream, flush=True)


@contextmanager
def _signals_as_stop() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the demo through the same cleanup.

    SIGINT gets Python's handler back even when it was inherited as ignored (a job started with `&` by a
    non-interactive shell, or by a test runner started that way): the demo promises to stop on it.
    """

    def handler(signum: int, _frame: Any) -> None:
        raise DemoStopped(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def _uninterruptible() -> Iterator[None]:
    """A second Ctrl-C must not cut the cleanup short and leave processes behind."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(args: argparse.Namespace) -> int:
    try:
        plan = make_plan(args)
    except DemoError as exc:
        return _fail(str(exc))
    stream = sys.stderr
    print(
        f"browser-control demo: a tiny model learns {', '.join(plan.tasks)} on this machine's CPU; output in "
        f"{_shown(plan.output)}/",
        file=stream,
        flush=True,
    )
    subreaper = _set_subreaper(True)
    processes = Processes(child_env(), plan.output, plan.logs)
    status = 0
    try:
        with _signals_as_stop():
            summary = Demo(plan, processes, stream).run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the processes the demo started", file=stream, flush=True)
        status = 130
    except DemoStopped as exc:
        print(f"\n{exc}: stopping the processes the demo started", file=stream, flush=True)
        status = 128 + exc.signal_number
    except DemoError as exc:
        print(f"browser-control demo: error: {exc}", file=stream, flush=True)
        status = EXIT_FAILED
    except OSError as exc:  # a log or output file that cannot be written (disk full, permissions)
        print(f"browser-control demo: error: {exc}", file=stream, flush=True)
        status = EXIT_FAILED
    finally:
        with _uninterruptible():
            processes.stop_all(args.stop_grace_s)
            if subreaper:
                _set_subreaper(False)
    if status:
        print(f"partial output and logs: {_shown(plan.output)}/", file=stream, flush=True)
        return status
    print_summary(summary, sys.stdout)
    return 0
