"""Episode recordings: what a model saw and did at every step, for ``browser-control view``.

A recording is a directory with an ``episodes.jsonl`` (one summary line per finished episode; the
evaluation report's and the training episode log's existing formats, plus a ``trace`` key) and a
``traces/`` folder with one JSON file per recorded episode and its optional screenshots.

Crash safety: a trace and its screenshots are written to temporary names and renamed into place, and only
then is the summary line that points at them appended, flushed and fsync'd. A run that dies at any moment
leaves every finished episode readable; at worst the last summary line is cut short, which the viewer
reports and skips.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
TRACES_DIR = "traces"
TRACE_FORMAT = 1


class TraceStep(BaseModel):
    """One tool call of an episode."""

    index: int = Field(ge=1, description="1-based position among the episode's tool calls")
    observation: str = Field(description="the text the model had in front of it when it acted")
    output: str | None = Field(None, description="the model's raw output of that turn (None: scripted policy)")
    tool: str | None = Field(None, description="the tool the model called, e.g. click")
    arguments: dict[str, Any] | None = Field(None, description="its arguments as parsed")
    action: str | None = Field(None, description="the action sent to the service, e.g. click('13')")
    reached_service: bool = Field(False, description="False for a call the tool refused before the service")
    error: str = Field("", description="the page's error, the service's refusal or the tool's error")
    reward: float | None = None
    done: bool | None = None
    truncated: bool | None = None
    result: str = Field("", description="the text returned to the model")
    screenshot: str | None = Field(None, description="PNG of the page after the action, relative to the trace")


class EpisodeTrace(BaseModel):
    """Everything about one episode; written as ``traces/<id>.json``."""

    format: int = TRACE_FORMAT
    source: Literal["evaluation", "training"]
    run: str
    task: str
    seed: int
    goal: str = ""
    success: bool
    ended_by: str | None = None
    training_step: int | None = None
    first_observation: str = ""
    first_screenshot: str | None = None
    steps: list[TraceStep] = Field(default_factory=list)


def trace_id(*parts: object) -> str:
    """A file-name-safe id; a short hash keeps ids apart whose readable parts clean to the same text."""
    raw = "-".join(str(p) for p in parts)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._")[:80] or "episode"
    return f"{clean}-{hashlib.sha1(raw.encode()).hexdigest()[:6]}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class EpisodeRecorder:
    """Writes traces and summary lines into one recording directory; safe to call from several threads.

    ``max_bytes`` bounds the disk used by traces and screenshots (training); past it, traces are skipped
    with one warning and the summary lines go on. ``screenshots=False`` drops the screenshots a service
    sends, which are most of the bytes.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int | None = None,
        screenshots: bool = False,
        fresh: bool = False,
        log_name: str = EPISODES_FILE,
    ):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.screenshots = screenshots
        self.log_path = self.directory / log_name
        self.bytes_written = 0
        self.traces_written = 0
        self.traces_skipped = 0
        self.failed: str | None = None  # set by a writer that gave up (e.g. disk full)
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        if max_bytes is not None and (self.directory / TRACES_DIR).is_dir():
            # A resumed run continues the same recording: what is already there counts against the budget.
            self.bytes_written = sum(p.stat().st_size for p in (self.directory / TRACES_DIR).rglob("*") if p.is_file())
        if fresh:
            self.log_path.write_bytes(b"")

    @property
    def full(self) -> bool:
        return self.max_bytes is not None and self.bytes_written >= self.max_bytes

    def write_trace(
        self, trace: EpisodeTrace, name: str, screenshots: dict[int, str | None] | None = None
    ) -> str | None:
        """Write ``traces/<name>.json`` (and its PNGs); returns its path relative to the recording, or None
        when the disk budget is spent. ``screenshots`` maps a step index (0: the first page) to base64 PNG."""
        with self._lock:
            if self.full:
                self.traces_skipped += 1
                if self.traces_skipped == 1:
                    log.warning(
                        "episode recordings in %s reached their limit of %.0f MB: no more traces are "
                        "kept (raise record_max_mb to keep more)",
                        self.directory,
                        (self.max_bytes or 0) / 1e6,
                    )
                return None
        traces = self.directory / TRACES_DIR
        traces.mkdir(exist_ok=True)
        written = 0
        if self.screenshots and screenshots:
            images = {i: b64 for i, b64 in screenshots.items() if b64}
            if images:
                folder = traces / name
                folder.mkdir(exist_ok=True)
                for index, b64 in images.items():
                    try:
                        png = base64.b64decode(b64, validate=True)
                    except (binascii.Error, ValueError):
                        log.warning("a screenshot of %s step %d is not valid base64; not kept", name, index)
                        continue
                    file_name = f"step-{index:03d}.png"
                    _write_atomically(folder / file_name, png)
                    written += len(png)
                    relative = f"{name}/{file_name}"
                    if index == 0:
                        trace.first_screenshot = relative
                    else:
                        for step in trace.steps:
                            if step.index == index:
                                step.screenshot = relative
        data = trace.model_dump_json().encode()
        _write_atomically(traces / f"{name}.json", data)
        with self._lock:
            self.bytes_written += written + len(data)
            self.traces_written += 1
        return f"{TRACES_DIR}/{name}.json"

    def append(self, line: dict[str, Any]) -> None:
        """Append one summary line, flushed and fsync'd so it survives a crash of this process."""
        data = (json.dumps(line, default=str) + "\n").encode()
        with self._lock, open(self.log_path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def trace_from_answers(
    answers: Sequence[Any], turns: Sequence[tuple[str | None, Sequence[Any]]]
) -> tuple[list[TraceStep], dict[int, str | None]]:
    """Pair the model's turns with the environment's answers.

    ``answers`` are the environment's :class:`~browser_control.rollout.episode.StepAnswer` list, in order;
    ``turns`` are ``(raw output, [ToolCall, ...])`` per assistant turn. A call whose action matches the next
    answer's action is the one that produced it; any other call never reached the environment (an unknown
    tool or bad arguments) and is recorded with that error. Returns the steps and their screenshots.
    """
    steps: list[TraceStep] = []
    shots: dict[int, str | None] = {}
    pending = list(answers)
    observation = pending[0].observation if pending else ""
    for output, calls in turns:
        for call in calls:
            index = len(steps) + 1
            try:
                action: str | None = call.action()
                problem = ""
            except (ValueError, TypeError) as exc:
                action, problem = None, f"not a valid call: {exc}"
            if action is not None and pending and pending[0].action == action:
                answer = pending.pop(0)
                steps.append(
                    TraceStep(
                        index=index,
                        observation=answer.observation,
                        output=output,
                        tool=call.name,
                        arguments=call.arguments if isinstance(call.arguments, dict) else None,
                        action=action,
                        reached_service=answer.reached_service,
                        error=answer.error,
                        reward=answer.reward,
                        done=answer.done,
                        truncated=answer.truncated,
                        result=answer.result,
                    )
                )
                shots[index] = answer.screenshot_png_b64
                observation = answer.result
            else:
                steps.append(
                    TraceStep(
                        index=index,
                        observation=observation,
                        output=output,
                        tool=call.name,
                        arguments=call.arguments if isinstance(call.arguments, dict) else None,
                        action=action,
                        error=problem or "the call did not reach the environment (rejected by the tool)",
                    )
                )
        if not calls and output is not None:
            steps.append(
                TraceStep(
                    index=len(steps) + 1,
                    observation=observation,
                    output=output,
                    error="no tool call: the episode ends here",
                )
            )
    return steps, shots
