"""Where a run writes, how a finished checkpoint appears atomically, and which checkpoint a resume uses.

Layout under ``checkpoint_dir``::

    {name}/                      finished model: config.json, model.safetensors, tokenizer files,
                                 training_config.yaml, metrics.json (LoRA: adapter files or adapter/)
    .tmp-{name}/                 the same while it is being written; renamed to {name} when complete
    runs/{name}/checkpoint-N/    the Trainer's intermediate checkpoints (optimizer state included)

``name`` is ``{model}-{task or mix}-{YYYYMMDD-HHMMSS}``. This module uses only the standard library.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

RUNS_SUBDIR = "runs"
TMP_PREFIX = ".tmp-"
# The Trainer writes trainer_state.json last, after weights, optimizer and RNG state: a checkpoint-N
# directory without it was cut short (crash, disk full) and must not be resumed from.
COMPLETE_MARKER = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or found; the message says what to do."""


def run_name(model_short_name: str, task_label: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{_safe(model_short_name)}-{_safe(task_label)}-{stamp}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def runs_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / RUNS_SUBDIR


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


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
        if is_complete(checkpoint):
            return checkpoint
        log.warning("skipping %s: it has no %s, the save was cut short", checkpoint, COMPLETE_MARKER)
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
                candidates.append(((checkpoint / COMPLETE_MARKER).stat().st_mtime, checkpoint))
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
        if not is_complete(path):
            raise CheckpointError(f"resume_from_checkpoint: {path} is incomplete (no {COMPLETE_MARKER})")
        return path
    checkpoint = latest_complete_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"resume_from_checkpoint: {path} holds no complete checkpoint-N directory")
    return checkpoint


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain (safetensors reports it in its own error type's text)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
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
        # rename() within one directory is atomic: readers see either nothing or the whole checkpoint.
        tmp_dir.rename(final_dir)
    except BaseException as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if is_disk_full(exc):
            raise CheckpointError(
                f"disk full while writing the checkpoint {final_dir.name} under {final_dir.parent}: "
                f"{exc}. The partial files were removed; free space and save again "
                "(intermediate checkpoints, if any, are untouched)"
            ) from exc
        raise
    return final_dir
