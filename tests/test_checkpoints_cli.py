"""`browser-control checkpoints list|export` on real (tiny) full and LoRA checkpoints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from browser_control.cli import main


@pytest.fixture(scope="module")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CHECKPOINT_DIR as training leaves it: a full run, a LoRA run, a half-written one, runs/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from browser_control.models.tiny import build_tiny_lfm2

    root = tmp_path_factory.mktemp("checkpoints")
    base = build_tiny_lfm2(tmp_path_factory.mktemp("hub") / "tiny-base")

    full = build_tiny_lfm2(root / "tiny-click-test-20260101-100000", seed=1)
    (full / "training_config.yaml").write_text("model: tiny\n")
    (full / "metrics.json").write_text(
        json.dumps(
            {
                "global_step": 200,
                "max_steps": 200,
                "recent": {"reward": 0.8125, "success/click-test": 0.9, "entropy": 0.4},
                "last": {"reward": 0.75},
                "warnings": ["step 20: something"],
            }
        )
    )

    lora = root / "tiny-lora-mix-20260102-100000"
    # init_lora_weights=False: random A and B, so the adapter really changes the model.
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "in_proj", "w1"], init_lora_weights=False),
    )
    model.save_pretrained(lora)
    AutoTokenizer.from_pretrained(base).save_pretrained(lora)
    (lora / "metrics.json").write_text(json.dumps({"global_step": 50, "recent": {"reward": 0.25}}))

    partial = root / ".tmp-tiny-crashed-20260103-100000"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (root / "runs" / "tiny-click-test-20260101-100000" / "checkpoint-100").mkdir(parents=True)
    # Newest first in the listing: make the LoRA run the most recent.
    old = time.time() - 3600
    os.utime(full, (old, old))
    return root


def test_list_shows_finished_checkpoints_with_size_date_and_metrics(
    checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHECKPOINT_DIR", str(checkpoint_root))
    assert main(["checkpoints", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SIZE", "DATE", "FINAL", "METRICS"]
    assert len(lines) == 3, lines  # .tmp-* and runs/ are not checkpoints
    assert lines[1].startswith("tiny-lora-mix-20260102-100000") and " lora " in lines[1]
    assert lines[2].startswith("tiny-click-test-20260101-100000") and " full " in lines[2]
    assert "step=200 reward=0.812 success/click-test=0.9 warnings=1" in lines[2]
    assert " KB" in lines[2] and time.strftime("%Y-") in lines[2]

    assert main(["checkpoints", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed] == ["tiny-lora-mix-20260102-100000", "tiny-click-test-20260101-100000"]
    full_size = sum(p.stat().st_size for p in (checkpoint_root / listed[1]["name"]).rglob("*") if p.is_file())
    assert listed[1]["size_bytes"] == full_size
    assert listed[0]["base_model"].endswith("tiny-base") and listed[0]["metrics"] == {"step": 50, "reward": 0.25}


def test_list_of_a_missing_directory_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "--checkpoint-dir", str(tmp_path / "none"), "list"]) == 0
    assert "does not exist" in capsys.readouterr().out


def test_export_merges_a_lora_run_into_a_model_that_loads_alone(
    checkpoint_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = "tiny-lora-mix-20260102-100000"
    out = tmp_path / "merged"
    status = main(
        ["checkpoints", "--checkpoint-dir", str(checkpoint_root), "export", name, "--merge-lora", "--output", str(out)]
    )
    assert status == 0, capsys.readouterr().err
    assert "merged the LoRA adapter" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "metrics.json").is_file() and not list(tmp_path.glob(".tmp-*"))

    lora_dir = checkpoint_root / name
    base_path = json.loads((lora_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path)
    ids = torch.tensor([[1, 6, 30, 40, 50, 60]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, lora_dir)(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not torch.allclose(merged, base_logits, atol=1e-3)  # the adapter did something
    assert "tool_call_start" in (AutoTokenizer.from_pretrained(out).chat_template or "")


def test_export_of_a_full_checkpoint_copies_it(
    checkpoint_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "copy"
    assert (
        main(
            [
                "checkpoints",
                "--checkpoint-dir",
                str(checkpoint_root),
                "export",
                "tiny-click-test-20260101-100000",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    source = checkpoint_root / "tiny-click-test-20260101-100000"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "training_config.yaml"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tiny-click-test-2026", "no checkpoint 'tiny-click-test-2026'"),
        (".tmp-tiny-crashed-20260103-100000", "still being written"),
    ],
)
def test_export_errors_are_clear(
    checkpoint_root: Path, tmp_path: Path, name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "checkpoints",
            "--checkpoint-dir",
            str(checkpoint_root),
            "export",
            name,
            "--merge-lora",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_export_never_overwrites(checkpoint_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    status = main(
        [
            "checkpoints",
            "--checkpoint-dir",
            str(checkpoint_root),
            "export",
            "tiny-click-test-20260101-100000",
            "--output",
            str(tmp_path / "taken"),
        ]
    )
    assert status == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
