"""A disk that fills up while the real trainer saves a checkpoint: exit 4 "disk full", nothing that looks
complete is left behind, and the run resumes from the last complete checkpoint once space is freed.

The disk is real: a small tmpfs mounted for the test (root only; skipped elsewhere), filled by a callback
just before the checkpoint of step 2 is written so that the write fails at a chosen file. Nothing is
injected into the write path; spies only record what the real writes did.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import TrainerCallback

from browser_control.training import checkpoints as ckpt
from tests.conftest import mounted_tmpfs, tiny_training_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PAGE = 4096  # tmpfs allocates whole pages


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of its own, so filling it affects nothing else."""
    with mounted_tmpfs(tmp_path / "disk", "64m") as mount:
        yield mount


class FillDiskBeforeSave(TrainerCallback):
    """At the end of ``step`` (before its checkpoint is written), leave only ``room(previous)`` bytes free,
    where ``previous`` is the complete checkpoint of the step before."""

    def __init__(self, disk: Path, step: int, room: Callable[[Path], int]):
        self.disk, self.step, self.room = disk, step, room
        self.filler = disk / "filler"

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step != self.step:
            return
        previous = Path(args.output_dir) / f"checkpoint-{self.step - 1}"
        free = shutil.disk_usage(self.disk).free
        with open(self.filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, free - self.room(previous))


def _files(checkpoint: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in checkpoint.iterdir() if p.is_file()}


def _room_for_all_but(*late: str) -> Callable[[Path], int]:
    """Room for every file of the previous checkpoint except ``late`` and the completion marker."""

    def room(previous: Path) -> int:
        skip = {*late, ckpt.COMPLETE_MARKER}
        return sum(_pages(size) for name, size in _files(previous).items() if name not in skip)

    return room


def _write_config(tmp_path: Path, model: Path, url: str, disk: Path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(
        yaml.safe_dump(
            tiny_training_config(
                model_name=str(model),
                browsergym_url=url,
                max_steps=3,
                checkpoint_dir=str(disk / "ck"),
                logging_dir=str(tmp_path / "tb"),
                run_name="tiny-disk",
            )
        )
    )
    return path


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("failing_write", ["trainer_state.json", "optimizer.pt"])
def test_a_full_disk_while_saving_exits_4_and_the_run_resumes_once_space_is_freed(
    failing_write: str,
    clicking_model: Path,
    env_url: str,
    small_disk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from transformers import TrainerState

    from browser_control import cli
    from browser_control.training import trainer as trainer_module

    for name in ("BROWSERGYM_URL", "CHECKPOINT_DIR", "LOGGING_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = _write_config(tmp_path, clicking_model, env_url, small_disk)
    if failing_write == "trainer_state.json":
        # Weights, optimizer, scheduler and RNG state fit; the Trainer's state file, written last and in
        # place, does not: the save that the issue saw leave an empty trainer_state.json.
        room = _room_for_all_but("trainer_state.json")
    else:
        # The weights fit, the optimizer state only half: torch.save fails with "unexpected pos", no errno.
        def room(previous: Path) -> int:
            files = _files(previous)
            later = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", ckpt.COMPLETE_MARKER}
            before = sum(_pages(size) for name, size in files.items() if name not in later)
            return before + _pages(files["optimizer.pt"] // 2)

    filler = FillDiskBeforeSave(small_disk, step=2, room=room)
    states_written: list[tuple[str, int, str]] = []
    original_save_to_json = TrainerState.save_to_json

    def recording_save_to_json(self: TrainerState, json_path: str) -> None:
        try:
            original_save_to_json(self, json_path)
        except OSError as exc:
            states_written.append((json_path, os.path.getsize(json_path), exc.strerror or ""))
            raise

    monkeypatch.setattr(TrainerState, "save_to_json", recording_save_to_json)
    original_train = trainer_module.train
    monkeypatch.setattr(trainer_module, "train", functools.partial(original_train, callbacks=[filler]))

    assert cli.main(["train", "--config", str(config)]) == 4
    err = capsys.readouterr().err
    assert "error: disk full while training tiny-disk" in err and "Traceback" not in err, err[-3000:]
    if failing_write == "trainer_state.json":
        ((path, size, reason),) = states_written
        assert path.endswith("checkpoint-2/trainer_state.json") and size == 0 and "No space" in reason
    else:
        assert "unexpected pos" in err and not states_written  # torch.save failed, not the state file
    run_dir = small_disk / "ck" / "runs" / "tiny-disk"
    assert [p.name for p in ckpt.intermediate_checkpoints(run_dir)] == ["checkpoint-1"]
    assert ckpt.is_complete(run_dir / "checkpoint-1")
    assert sorted(p.name for p in (small_disk / "ck").iterdir()) == ["runs"]  # no final checkpoint

    # What the error message recommends, once space is freed: resume; it starts from checkpoint-1.
    filler.filler.unlink()
    monkeypatch.setattr(trainer_module, "train", original_train)
    assert cli.main(["train", "--config", str(config), "--set", "resume_from_checkpoint=true"]) == 0
    out = capsys.readouterr().out
    final = small_disk / "ck" / "tiny-disk"
    assert f"checkpoint: {final}" in out
    assert json.loads((final / "metrics.json").read_text())["global_step"] == 3
    for step in (2, 3):  # written by the resumed run (save_total_limit 2 rotated checkpoint-1 away)
        assert ckpt.incomplete_reason(run_dir / f"checkpoint-{step}") is None
        assert (run_dir / f"checkpoint-{step}" / ckpt.COMPLETE_MARKER).is_file()
