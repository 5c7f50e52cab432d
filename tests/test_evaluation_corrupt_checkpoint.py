"""`evaluate` and `checkpoints export` on a corrupt checkpoint: one line naming the file, a non-zero exit,
nothing written. The checkpoint is a real tiny LFM2 saved with save_pretrained, then damaged the way a full
disk or an interrupted copy damages one."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from browser_control.cli import main

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from browser_control.models.tiny import build_tiny_lfm2

    return build_tiny_lfm2(tmp_path_factory.mktemp("corrupt") / "model")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (damage, the file the message must name, what it must say)
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors", "truncated"),
    "empty weights": (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors", "empty"),
    "cut header": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:20]),
        "model.safetensors",
        "truncated",
    ),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors", "missing"),
    "no tokenizer.json": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json", "missing"),
    "no tokenizer_config.json": (lambda d: (d / "tokenizer_config.json").unlink(), "tokenizer_config.json", "missing"),
    "truncated tokenizer.json": (lambda d: _truncate(d / "tokenizer.json"), "tokenizer.json", "not valid JSON"),
    "empty config.json": (lambda d: (d / "config.json").write_text(""), "config.json", "not valid JSON"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_evaluate_names_the_broken_file_and_writes_no_report(
    damage: str, tiny_checkpoint: Path, env_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "checkpoints" / "tiny-run"
    shutil.copytree(tiny_checkpoint, broken)
    harm, filename, says = DAMAGES[damage]
    harm(broken)
    report = tmp_path / "report"

    status = main(
        [
            "evaluate",
            "--model",
            str(broken),
            "--tasks",
            "click-test",
            "--episodes",
            "1",
            "--browsergym-url",
            env_url,
            "--output",
            str(report),
            "--quiet",
        ]
    )

    err = capsys.readouterr().err
    assert status != 0
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("tasks:")]
    assert len(lines) == 1, err
    assert str(broken / filename) in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in err and "sentencepiece" not in err
    assert not report.exists()


def test_export_refuses_a_corrupt_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoint, root / "tiny-run")
    _truncate(root / "tiny-run" / "model.safetensors")
    out = tmp_path / "exported"

    status = main(["checkpoints", "--checkpoint-dir", str(root), "export", "tiny-run", "--output", str(out)])

    err = capsys.readouterr().err
    assert status == 2 and "tiny-run is corrupt" in err and "model.safetensors is truncated" in err
    assert not out.exists() and not (tmp_path / ".tmp-exported").exists()


def test_the_intact_checkpoint_passes_the_check(tiny_checkpoint: Path) -> None:
    from browser_control.models.files import model_files_problem

    assert model_files_problem(tiny_checkpoint) is None
