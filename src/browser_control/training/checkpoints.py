"""Where a run writes, how a finished checkpoint appears atomically, and which checkpoint a resume uses.

Layout under ``checkpoint_dir``::

    {name}/                      finished model: config.json, model.safetensors, tokenizer files,
                                 training_config.yaml, metrics.json (LoRA: adapter files or adapter/)
    .tmp-{name}/                 the same while it is being written; renamed to {name} when complete
    runs/{name}/checkpoint-N/    the Trainer's intermediate checkpoints (optimizer state included), each
                                 proven complete by checkpoint-complete.json, written last and atomically

``name`` is ``{model}-{task or mix}-{YYYYMMDD-HHMMSS}``. This module uses only the standard library.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# One prefix for every half-written directory, so listings and model lookups skip them alike.
from browser_control.models.files import TMP_PREFIX as TMP_PREFIX

log = logging.getLogger(__name__)

RUNS_SUBDIR = "runs"
# Written by CompletionMarker (training.callbacks) after the Trainer has saved everything, by rename, so it
# either does not exist or is whole. It lists every file with its size: a checkpoint whose files were cut
# short or removed later no longer matches it. The Trainer's own trainer_state.json cannot prove anything:
# it is written in place, so a full disk leaves it empty, or truncated, beside everything else.
COMPLETE_MARKER = "checkpoint-complete.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A failed write leaves at most a few blocks free on a filesystem it filled; far more free than this and the
# failure had another cause. Tensors are written in large chunks, so "a few blocks" is generous.
DISK_FULL_FREE_BYTES = 16 * 1024 * 1024


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or found; the message says what to do."""


def run_name(model_short_name: str, task_label: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{_safe(model_short_name)}-{_safe(task_label)}-{stamp}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def runs_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / RUNS_SUBDIR


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text`` entirely or is left as it was: written to a sibling, flushed, then renamed."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # the rename itself survives a power cut


def mark_complete(checkpoint: Path, global_step: int) -> Path:
    """Flush every file of ``checkpoint`` to disk, then write the marker that proves it complete."""
    files: dict[str, int] = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER and not path.name.startswith(TMP_PREFIX):
            _fsync(path)
            files[path.relative_to(checkpoint).as_posix()] = path.stat().st_size
    record = {"global_step": global_step, "files": files}
    marker = checkpoint / COMPLETE_MARKER
    write_file_atomically(marker, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return marker


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def incomplete_reason(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete."""
    marker = checkpoint / COMPLETE_MARKER
    if not marker.exists():
        # Checkpoints saved before the marker existed: the Trainer wrote trainer_state.json after everything
        # else, so a whole one is the best evidence there is. An empty or truncated one does not parse.
        state = _read_json(checkpoint / TRAINER_STATE)
        if isinstance(state, dict) and isinstance(state.get("global_step"), int):
            return None
        return f"no {COMPLETE_MARKER} and no readable {TRAINER_STATE}: the save was cut short"
    record = _read_json(marker)
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return f"{COMPLETE_MARKER} is unreadable"
    for name, size in record["files"].items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def is_complete(checkpoint: Path) -> bool:
    return incomplete_reason(checkpoint) is None


def completed_at(checkpoint: Path) -> float:
    """When ``checkpoint`` was proven complete (its marker's time; the Trainer state's for older ones)."""
    marker = checkpoint / COMPLETE_MARKER
    return (marker if marker.exists() else checkpoint / TRAINER_STATE).stat().st_mtime


def intermediate_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N directories of a run, oldest first (complete or not)."""
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    for checkpoint in reversed(intermediate_checkpoints(run_dir)):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            return checkpoint
        log.warning("skipping the incomplete checkpoint %s: %s", checkpoint, reason)
    return None


def find_resume_checkpoint(checkpoint_dir: Path, prefix: str, exact_name: str | None = None) -> Path:
    """The newest complete intermediate checkpoint of the runs named ``prefix*`` (or ``exact_name``)."""
    base = runs_dir(checkpoint_dir)
    candidates: list[tuple[float, Path]] = []
    if base.is_dir():
        for run in base.iterdir():
            if not run.is_dir():
                continue
            if (exact_name is not None and run.name != exact_name) or (
                exact_name is None and not run.name.startswith(prefix)
            ):
                continue
            checkpoint = latest_complete_checkpoint(run)
            if checkpoint is not None:
                candidates.append((completed_at(checkpoint), checkpoint))
    if not candidates:
        wanted = exact_name or f"{prefix}*"
        raise CheckpointError(
            f"resume_from_checkpoint is true but {base} holds no complete checkpoint of a run named {wanted}; "
            "set resume_from_checkpoint to a checkpoint path, or to false to start a new run"
        )
    return max(candidates)[1]


def resolve_resume_path(path: Path) -> Path:
    """A checkpoint-N directory, or a run directory (its newest complete checkpoint)."""
    if not path.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: {path} is not a directory")
    if _CHECKPOINT_RE.match(path.name):
        reason = incomplete_reason(path)
        if reason is not None:
            raise CheckpointError(
                f"resume_from_checkpoint: {path} is incomplete ({reason}); give an earlier "
                "checkpoint-N, or the run directory to use its newest complete one"
            )
        return path
    checkpoint = latest_complete_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"resume_from_checkpoint: {path} holds no complete checkpoint-N directory")
    return checkpoint


def free_bytes(directory: Path) -> int | None:
    """Bytes a write under ``directory`` (or its nearest existing parent) may still use; None if unknown."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def is_disk_full(exc: BaseException, directory: Path | None = None) -> bool:
    """Whether ``exc``, raised while writing under ``directory``, came from a full disk.

    ENOSPC/EDQUOT anywhere in the exception chain, or else the filesystem itself: torch.save reports a
    full disk as ``RuntimeError: ... unexpected pos ...`` and safetensors in its own error type, neither
    with an errno, so a failure that left less than DISK_FULL_FREE_BYTES free counts as disk full. It must
    be called before the partial files are removed (they hold the space the write used).
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if directory is None or isinstance(exc, KeyboardInterrupt | SystemExit):
        return False
    free = free_bytes(directory)
    return free is not None and free < DISK_FULL_FREE_BYTES


def remove_incomplete_checkpoints(run_dir: Path) -> list[Path]:
    """Delete checkpoint-N directories that were cut short, so no partial checkpoint stays behind."""
    removed = []
    for checkpoint in intermediate_checkpoints(run_dir):
        if not is_complete(checkpoint):
            shutil.rmtree(checkpoint, ignore_errors=True)
            removed.append(checkpoint)
    return removed


def write_atomically(final_dir: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` on ``.tmp-{name}`` next to ``final_dir`` and rename it when ``write`` returns.

    On any failure the temporary directory is removed, so ``final_dir`` either does not exist or is
    complete. Disk full becomes a :class:`CheckpointError` that says so.
    """
    if final_dir.exists():
        raise CheckpointError(f"{final_dir} already exists; a finished checkpoint is never overwritten")
    tmp_dir = final_dir.parent / f"{TMP_PREFIX}{final_dir.name}"
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir.exists():  # left by a run that crashed while saving: it was never complete
        shutil.rmtree(tmp_dir)
    try:
        tmp_dir.mkdir()
        write(tmp_dir)
        for path in tmp_dir.rglob("*"):
            if path.is_file():
                _fsync(path)  # on disk before the rename makes the checkpoint visible
        # rename() within one directory is atomic: readers see either nothing or the whole checkpoint.
        tmp_dir.rename(final_dir)
        _fsync(final_dir.parent)
    except BaseException as exc:
        disk_full = is_disk_full(exc, tmp_dir)  # before the partial files are removed: they hold the space
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if disk_full:
            raise CheckpointError(
                f"disk full while writing the checkpoint {final_dir.name} under {final_dir.parent}: "
                f"{exc}. The partial files were removed; free space and save again "
                "(intermediate checkpoints, if any, are untouched)"
            ) from exc
        raise
    return final_dir
