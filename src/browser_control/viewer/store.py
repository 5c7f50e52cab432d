"""What the viewer reads: recordings and checkpoints under the directories it was given, and nothing else.

A recording is a directory holding ``episodes.jsonl``: either an evaluation's (one episode per line) or a
training run's episode log (one generation batch per line). Each is parsed once into light rows (task,
seed, outcome, length, errors, trace path) and cached until its files change, so listing, filtering and
paging thousands of episodes never re-reads them. Traces are read one at a time, when an episode is opened.

Every path that comes from a request is resolved (symbolic links included) and refused unless it stays
inside one of the roots.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from browser_control.recording import EPISODES_FILE, TRACES_DIR, EpisodeTrace

REPORT_FILE = "report.json"
# Directories never searched for recordings: trace folders, checkpoints' weights, unfinished checkpoints.
_SKIP_DIRS = {TRACES_DIR, "__pycache__", "node_modules"}
MAX_DEPTH = 5
MAX_DIRS_VISITED = 20_000
DISCOVERY_TTL_S = 3.0
MAX_PROBLEMS = 20


class ViewerError(Exception):
    """A request that cannot be answered; ``status`` and ``message`` become the error page."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


@dataclass(frozen=True)
class Root:
    index: int
    label: str
    given: str  # as the user wrote it, for messages
    path: Path  # resolved


@dataclass
class EpisodeRow:
    n: int
    run: str
    task: str
    seed: int
    success: bool
    steps: int
    invalid_actions: int
    ended_by: str
    training_step: int | None = None
    trace: str | None = None
    actions: list[str] = field(default_factory=list)
    line: int = 0


@dataclass
class Recording:
    key: str
    root: Root
    rel: str
    path: Path
    kind: str  # "evaluation" or "training"
    rows: list[EpisodeRow]
    problems: list[str]
    report: dict[str, Any] | None
    modified: float
    runs: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    # Pages derived from all rows (the chart), kept while the recording's files are unchanged.
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.runs = list(dict.fromkeys(r.run for r in self.rows))
        self.tasks = list(dict.fromkeys(r.task for r in self.rows))

    @property
    def name(self) -> str:
        return self.rel if self.rel != "." else self.root.path.name


@dataclass
class Checkpoint:
    name: str
    rel: str
    modified: float
    size_bytes: int
    metrics: dict[str, Any] | None
    problem: str | None
    evaluation_key: str | None
    training_key: str | None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# ended_by of a training episode the environment lost (episodes.jsonl "fault"): no data, not a failure.
NO_DATA = "env_fault"


def _ended_by_of_training(e: dict[str, Any]) -> str:
    if e.get("fault"):  # the environment, not the model, ended it: no data
        return NO_DATA
    if e.get("done"):
        return "success" if e.get("success") else "failed"
    return "step_limit" if e.get("truncated") else "no_tool_call"


class Store:
    def __init__(self, roots: list[tuple[str, str | Path]]):
        self.roots = [
            Root(i, label, str(given), Path(given).expanduser().resolve()) for i, (label, given) in enumerate(roots)
        ]
        self._lock = threading.Lock()
        self._recordings: dict[str, tuple[tuple[Any, ...], Recording]] = {}
        self._discovered: tuple[float, list[tuple[Root, str]]] | None = None

    # -- paths ---------------------------------------------------------------------------------------------
    def root(self, index: str | int) -> Root:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise ViewerError(400, "Bad address", f"{index!r} is not a directory number") from None
        if not 0 <= i < len(self.roots):
            raise ViewerError(
                404,
                "No such directory",
                f"there is no directory number {i}; the viewer was given {self.describe_roots()}",
            )
        return self.roots[i]

    def describe_roots(self) -> str:
        return ", ".join(f"--{r.label} {r.given}" for r in self.roots)

    def inside(self, root: Root, rel: str) -> Path:
        """``root/rel`` resolved; refused (403) unless it stays inside ``root``."""
        if "\x00" in rel or Path(rel).is_absolute() or rel.startswith("~"):
            raise ViewerError(
                403,
                "Path refused",
                f"{rel!r} is not a path relative to {root.given}: the viewer "
                f"only serves files under {self.describe_roots()}",
            )
        target = (root.path / rel).resolve()
        if target != root.path and not target.is_relative_to(root.path):
            raise ViewerError(
                403,
                "Path refused",
                f"{rel!r} leads outside {root.given}: the viewer only serves files under {self.describe_roots()}",
            )
        return target

    def parse_key(self, key: str) -> tuple[Root, str, Path]:
        index, sep, rel = (key or "").partition(":")
        if not sep:
            raise ViewerError(400, "Bad address", f"{key!r} does not name a recording (expected NUMBER:PATH)")
        root = self.root(index)
        return root, rel or ".", self.inside(root, rel or ".")

    # -- discovery -----------------------------------------------------------------------------------------
    def root_problem(self, root: Root) -> str | None:
        if not root.path.exists():
            return f"{root.given} does not exist (yet): nothing has been recorded there"
        if not root.path.is_dir():
            return f"{root.given} is not a directory"
        if not os.access(root.path, os.R_OK | os.X_OK):
            return f"{root.given} cannot be read (permissions)"
        return None

    def _walk(self, root: Root) -> Iterator[str]:
        visited = 0
        stack: list[tuple[Path, int]] = [(root.path, 0)]
        while stack and visited < MAX_DIRS_VISITED:
            directory, depth = stack.pop()
            visited += 1
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            names = {e.name for e in entries}
            if EPISODES_FILE in names or any(n.startswith("episodes-rank") and n.endswith(".jsonl") for n in names):
                yield os.path.relpath(directory, root.path)
            if depth >= MAX_DEPTH:
                continue
            for entry in reversed(entries):
                if (
                    entry.name.startswith(".")
                    or entry.name in _SKIP_DIRS
                    or entry.name.startswith("checkpoint-")
                    or not entry.is_dir(follow_symlinks=False)
                ):
                    continue
                stack.append((Path(entry.path), depth + 1))

    def discover(self) -> list[tuple[Root, str]]:
        with self._lock:
            cached = self._discovered
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
            return cached[1]
        found = [(root, rel) for root in self.roots if self.root_problem(root) is None for rel in self._walk(root)]
        with self._lock:
            self._discovered = (time.monotonic(), found)
        return found

    def recordings(self) -> list[Recording]:
        out = []
        for root, rel in self.discover():
            try:
                out.append(self.recording(f"{root.index}:{rel}"))
            except ViewerError:
                continue  # vanished between the walk and the read
        return out

    # -- one recording -------------------------------------------------------------------------------------
    @staticmethod
    def _log_files(path: Path) -> list[Path]:
        files = [path / EPISODES_FILE] if (path / EPISODES_FILE).is_file() else []
        files += sorted(path.glob("episodes-rank*.jsonl"))
        return files

    def recording(self, key: str) -> Recording:
        root, rel, path = self.parse_key(key)
        key = f"{root.index}:{rel}"
        if not path.is_dir():
            raise ViewerError(
                404, "No such recording", f"{rel} under {root.given} is not a directory (moved or deleted?)"
            )
        files = self._log_files(path)
        if not files:
            raise ViewerError(404, "No episodes here", f"{rel} under {root.given} has no {EPISODES_FILE}")
        try:
            signature = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
            report_path = path / REPORT_FILE
            signature += ((report_path.stat().st_mtime_ns,) if report_path.is_file() else (None,),)
        except OSError as exc:
            raise ViewerError(404, "Cannot read the recording", f"{rel}: {exc}") from None
        with self._lock:
            cached = self._recordings.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        recording = self._load(key, root, rel, path, files)
        with self._lock:
            self._recordings[key] = (signature, recording)
        return recording

    def _load(self, key: str, root: Root, rel: str, path: Path, files: list[Path]) -> Recording:
        rows: list[EpisodeRow] = []
        problems: list[str] = []
        kinds: set[str] = set()
        run_name = path.name if rel != "." else root.path.name
        for file in files:
            try:
                data = file.read_bytes()
            except OSError as exc:
                problems.append(f"{file.name}: cannot be read: {exc}")
                continue
            lines = data.split(b"\n")
            complete_end = data.endswith(b"\n")
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                last = number == len(lines) and not complete_end
                try:
                    item = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    if last:
                        problems.append(
                            f"{file.name}: the last line ({number}) is cut short: the run is still "
                            "writing it, or stopped while writing it. The episodes before it are shown."
                        )
                    else:
                        problems.append(f"{file.name} line {number}: not valid JSON ({exc}); skipped")
                    continue
                if not isinstance(item, dict):
                    problems.append(f"{file.name} line {number}: not a JSON object; skipped")
                    continue
                if isinstance(item.get("episodes"), list):
                    kinds.add("training")
                    step = _as_int(item.get("step"))
                    for e in item["episodes"]:
                        row = self._training_row(e, run_name, step, len(rows), number)
                        if row is None:
                            problems.append(
                                f"{file.name} line {number}: an episode without task_name/seed/success; skipped"
                            )
                        else:
                            rows.append(row)
                    continue
                row = self._evaluation_row(item, len(rows), number)
                if row is None:
                    problems.append(
                        f"{file.name} line {number}: not an episode record (it needs task, seed and success); skipped"
                    )
                    continue
                kinds.add("evaluation")
                rows.append(row)
        if not rows and not problems:
            problems.append(f"{EPISODES_FILE} is empty: no episode has finished yet")
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        report = None
        if (path / REPORT_FILE).is_file():
            try:
                report = json.loads((path / REPORT_FILE).read_text())
                if not isinstance(report, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                problems.append(f"{REPORT_FILE} cannot be read ({exc}); the numbers below come from the episodes")
                report = None
        kind = (
            "training"
            if kinds == {"training"}
            else "evaluation"
            if kinds == {"evaluation"}
            else ("mixed" if kinds else "empty")
        )
        modified = max((f.stat().st_mtime for f in files if f.exists()), default=0.0)
        return Recording(key, root, rel, path, kind, rows, problems, report, modified)

    @staticmethod
    def _evaluation_row(item: dict[str, Any], n: int, line: int) -> EpisodeRow | None:
        seed = _as_int(item.get("seed"))
        if not isinstance(item.get("task"), str) or seed is None or not isinstance(item.get("success"), bool):
            return None
        actions = item.get("actions")
        return EpisodeRow(
            n=n,
            run=str(item.get("run") or "run"),
            task=item["task"],
            seed=seed,
            success=item["success"],
            steps=_as_int(item.get("steps")) or 0,
            invalid_actions=_as_int(item.get("invalid_actions")) or 0,
            ended_by=str(item.get("ended_by") or ""),
            trace=item.get("trace") if isinstance(item.get("trace"), str) else None,
            actions=[str(a) for a in actions] if isinstance(actions, list) else [],
            line=line,
        )

    @staticmethod
    def _training_row(e: Any, run: str, step: int | None, n: int, line: int) -> EpisodeRow | None:
        if not isinstance(e, dict):
            return None
        seed = _as_int(e.get("seed"))
        if not isinstance(e.get("task_name"), str) or seed is None or not isinstance(e.get("success"), bool):
            return None
        return EpisodeRow(
            n=n,
            run=run,
            task=e["task_name"],
            seed=seed,
            success=e["success"],
            steps=_as_int(e.get("steps")) or 0,
            invalid_actions=_as_int(e.get("invalid_actions")) or 0,
            ended_by=_ended_by_of_training(e),
            training_step=step,
            trace=e.get("trace") if isinstance(e.get("trace"), str) else None,
            line=line,
        )

    def row(self, recording: Recording, n: str | int) -> EpisodeRow:
        try:
            i = int(n)
        except (TypeError, ValueError):
            raise ViewerError(400, "Bad address", f"episode number {n!r} is not a number") from None
        if not 0 <= i < len(recording.rows):
            raise ViewerError(
                404, "No such episode", f"{recording.name} has {len(recording.rows)} episodes; there is no episode {i}"
            )
        return recording.rows[i]

    def trace(self, recording: Recording, row: EpisodeRow) -> EpisodeTrace:
        """The episode's trace; ViewerError with the reason when it is missing, outside the root or corrupt."""
        if row.trace is None:
            raise ViewerError(404, "Not recorded step by step", "this episode has a summary but no trace")
        path = self.inside(recording.root, os.path.join(recording.rel, row.trace))
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ViewerError(
                404,
                "Trace missing",
                f"the trace {row.trace} of this episode is not there (deleted, or not copied with the recording)",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ViewerError(500, "Trace unreadable", f"{row.trace}: {exc}") from None
        try:
            return EpisodeTrace.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ViewerError(
                422,
                "Trace corrupt",
                f"{row.trace} is not a valid episode trace "
                f"({where + ': ' if where else ''}{first.get('msg')}); it may have been cut short "
                "or edited",
            ) from None

    def trace_file(self, recording: Recording, trace_rel: str, file_rel: str) -> Path:
        """A screenshot named by a trace: inside the recording's root and a PNG, or refused."""
        if not file_rel.lower().endswith(".png"):
            raise ViewerError(403, "Path refused", f"{file_rel!r}: the viewer only serves PNG screenshots")
        base = os.path.dirname(trace_rel)
        return self.inside(recording.root, os.path.join(recording.rel, base, file_rel))

    # -- checkpoints ---------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Checkpoint]:
        out = []
        for root in self.roots:
            if root.label != "checkpoints" or self.root_problem(root):
                continue
            try:
                entries = sorted(os.scandir(root.path), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or entry.name == "runs" or not entry.is_dir(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                if not (
                    (path / "config.json").is_file()
                    or (path / "metrics.json").is_file()
                    or (path / "adapter_config.json").is_file()
                ):
                    continue
                size, modified = 0, entry.stat().st_mtime
                for child in path.iterdir():
                    try:
                        if child.is_file():
                            st = child.stat()
                            size += st.st_size
                            modified = max(modified, st.st_mtime)
                    except OSError:
                        continue
                metrics, problem = None, None
                if (path / "metrics.json").is_file():
                    try:
                        metrics = json.loads((path / "metrics.json").read_text())
                    except (OSError, ValueError) as exc:
                        problem = f"metrics.json cannot be read: {exc}"
                evaluation = next(
                    (
                        f"{root.index}:{entry.name}/{sub}"
                        for sub in ("eval", "evaluation")
                        if self._log_files(path / sub)
                    ),
                    None,
                )
                run_dir = root.path / "runs" / entry.name
                training = f"{root.index}:runs/{entry.name}" if self._log_files(run_dir) else None
                out.append(Checkpoint(entry.name, entry.name, modified, size, metrics, problem, evaluation, training))
        return out

    # -- the same task instance elsewhere ------------------------------------------------------------------
    def instances(self, task: str, seed: int) -> list[tuple[Recording, EpisodeRow]]:
        found = []
        for recording in self.recordings():
            for row in recording.rows:
                if row.task == task and row.seed == seed:
                    found.append((recording, row))
        return found
