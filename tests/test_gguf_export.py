"""`checkpoints export --format gguf`: llama.cpp's converter and quantizer on a tiny LFM2, and proof that
the files work: llama.cpp (llama-cpp-python) answers a MiniWoB prompt in the training chat format with
the same greedy tokens as transformers and a tool call TRL's parser reads.

Tests marked ``llama_cpp`` need llama-cpp-python and the converter
(``python -m browser_control.export.llama_cpp_setup``, run by scripts/dev_setup.sh). Without them they
skip, except where BROWSER_CONTROL_REQUIRE_LLAMA_CPP=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_control.cli import main
from browser_control.export import gguf
from browser_control.export.llama_cpp_setup import LLAMA_CPP_PYTHON_VERSION
from tests.conftest import CLICK_REPLY, REPO, mounted_tmpfs

QUANT_FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17}  # llama.h's enum llama_ftype


@pytest.fixture(scope="session")
def llama_tools() -> Path:
    try:
        return gguf.require_tools()
    except gguf.GgufExportError as exc:
        if os.environ.get("BROWSER_CONTROL_REQUIRE_LLAMA_CPP") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _click_prompt() -> list[dict[str, str]]:
    """The MiniWoB click-test prompt the clicking model was trained on (tests/conftest.py)."""
    from browser_control.rollout.prompts import task_prompt

    first = task_prompt("click-test")
    first[-1] = {
        **first[-1],
        "content": first[-1]["content"]
        + "Goal: do it.\nStep 0 of 3. Last action error: none\nPage:\n[13] button 'Click Me!'",
    }
    return first


# -- no llama.cpp needed --------------------------------------------------------------------------------


def test_the_pinned_llama_cpp_python_is_the_one_pyproject_asks_for() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}" in extras["gguf"]


def test_quantizations_are_parsed_and_unknown_ones_refused() -> None:
    assert gguf.parse_quants("Q8_0, q4_k_m,q8_0") == ["q8_0", "q4_k_m"]
    assert gguf.parse_quants("all") == ["f16", "q8_0", "q5_k_m", "q4_k_m"]
    with pytest.raises(gguf.GgufExportError, match=r"unknown quantization 'q3_k'.*f16, q8_0, q5_k_m, q4_k_m"):
        gguf.parse_quants("q8_0,q3_k")


def test_unknown_quantization_is_refused_before_any_work(
    clicking_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        main(["checkpoints", "export", str(clicking_model), "--format", "gguf", "--quant", "q2", "--output", str(out)])
        == 2
    )
    assert "unknown quantization 'q2'" in capsys.readouterr().err
    assert not out.exists()


def test_only_a_gpt2_byte_level_tokenizer_gets_a_pre_tokenizer_named(clicking_model: Path, tmp_path: Path) -> None:
    assert gguf.pre_tokenizer_for(clicking_model) == "gpt-2"
    other = tmp_path / "other"
    other.mkdir()
    spec = json.loads((clicking_model / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True  # not what llama.cpp's gpt-2 pre-tokenizer does
    (other / "tokenizer.json").write_text(json.dumps(spec))
    assert gguf.pre_tokenizer_for(other) is None


def test_a_checkpoint_that_is_not_lfm2_is_refused(
    tmp_path: Path, clicking_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "tiny-llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=800,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(llama)
    AutoTokenizer.from_pretrained(clicking_model).save_pretrained(llama)
    before = _leftovers(llama)
    assert main(["checkpoints", "export", str(llama), "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "cannot be exported to GGUF: it is a 'llama' model (LlamaForCausalLM)" in err
    assert "supports LFM2" in err
    assert _leftovers(llama) == before  # no gguf/ directory, no temporary one


def test_a_corrupt_checkpoint_is_refused(
    tmp_path: Path, clicking_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(clicking_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["checkpoints", "export", str(broken), "--format", "gguf", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "broken is corrupt" in err and "model.safetensors is truncated" in err
    assert not (tmp_path / "out").exists()


def test_missing_llama_cpp_tools_are_named_with_the_install_command(
    tmp_path: Path, clicking_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLAMA_CPP_CONVERTER", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    assert main(["checkpoints", "export", str(clicking_model), "--format", "gguf", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "llama.cpp's converter is not in" in err and "-m browser_control.export.llama_cpp_setup" in err
    assert _leftovers(out) == []


def test_hf_export_still_needs_an_output_directory(clicking_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "export", str(clicking_model)]) == 2
    assert "needs --output DIR" in capsys.readouterr().err


# -- with llama.cpp ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(llama_tools: Path, clicking_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The clicking model exported once to all four types through the command line."""
    checkpoint = tmp_path_factory.mktemp("ckpt") / "tiny-clicker"
    shutil.copytree(clicking_model, checkpoint)
    stdout, stderr = io.StringIO(), io.StringIO()
    # In this process (llama.cpp's steps still run in their own): the command's lines are what is checked.
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["checkpoints", "export", str(checkpoint), "--format", "gguf", "--quant", "all"])
    assert code == 0, stdout.getvalue() + stderr.getvalue()
    return {"checkpoint": checkpoint, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def _llama(path: Path, logits_all: bool = False):  # type: ignore[no-untyped-def]
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path), n_ctx=2048, n_threads=1, n_batch=512, logits_all=logits_all, verbose=False
    )


def _llama_greedy(llama, prompt_ids: list[int], limit: int) -> list[int]:  # type: ignore[no-untyped-def]
    tokens: list[int] = []
    for token in llama.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if token == llama.token_eos() or len(tokens) >= limit:
            break
    return tokens


@pytest.fixture(scope="module")
def reference(clicking_model: Path) -> dict[str, Any]:
    """The prompt in the training chat format and transformers' greedy answer to it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from browser_control.rollout.environment import bound_tools

    tokenizer = AutoTokenizer.from_pretrained(clicking_model)
    text = tokenizer.apply_chat_template(
        _click_prompt(), tools=bound_tools(), add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(clicking_model).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=40,
            pad_token_id=tokenizer.pad_token_id,
        )
    return {"tokenizer": tokenizer, "text": text, "ids": ids, "answer": out[0, len(ids) :].tolist()}


@pytest.mark.llama_cpp
def test_export_writes_every_type_beside_the_checkpoint_with_sizes(exported: dict[str, Any]) -> None:
    checkpoint: Path = exported["checkpoint"]
    names = [f"tiny-clicker-{q}.gguf" for q in ("F16", "Q8_0", "Q5_K_M", "Q4_K_M")]
    assert _leftovers(checkpoint / "gguf") == sorted(names)  # and no .tmp-gguf-* left
    for name in names:
        size = (checkpoint / "gguf" / name).stat().st_size
        line = next(li for li in exported["stdout"].splitlines() if name in li)
        assert gguf.human_size(size) in line
    assert "[1/5] converting" in exported["stderr"] and "[4/5] quantizing to Q4_K_M" in exported["stderr"]
    assert "[5/5] checking 4 file(s)" in exported["stderr"]


@pytest.mark.llama_cpp
def test_f16_file_gives_transformers_greedy_tool_call(exported: dict[str, Any], reference: dict[str, Any]) -> None:
    from trl.chat_template_utils import add_response_schema, parse_response

    from browser_control.rollout.environment import bound_tools

    llama = _llama(exported["checkpoint"] / "gguf" / "tiny-clicker-F16.gguf")
    try:
        # llama.cpp reads the rendered chat exactly as the checkpoint's tokenizer does ...
        assert llama.tokenize(reference["text"].encode(), add_bos=False, special=True) == reference["ids"]
        assert llama.metadata["tokenizer.ggml.pre"] == "gpt-2"
        assert int(llama.metadata["general.file_type"]) == QUANT_FTYPES["f16"]
        # ... and answers it with transformers' greedy tokens: a tool call, then <|im_end|>.
        answer = _llama_greedy(llama, reference["ids"], limit=40)
    finally:
        llama.close()
    assert answer == reference["answer"]
    tokenizer = reference["tokenizer"]
    assert tokenizer.decode(answer) == CLICK_REPLY + "<|im_end|>"
    add_response_schema(tokenizer)  # TRL's LFM2 tool-call parser, as training and evaluation use it
    parsed = parse_response(tokenizer, answer, prefix=reference["ids"], tools=bound_tools())
    assert parsed["tool_calls"][0]["function"] == {"name": "click", "arguments": {"bid": "13"}}


@pytest.mark.llama_cpp
@pytest.mark.parametrize("quant", ["q8_0", "q5_k_m", "q4_k_m"])
def test_quantized_files_load_and_still_call_the_tool(
    exported: dict[str, Any], reference: dict[str, Any], quant: str
) -> None:
    llama = _llama(exported["checkpoint"] / "gguf" / f"tiny-clicker-{quant.upper()}.gguf")
    try:
        assert int(llama.metadata["general.file_type"]) == QUANT_FTYPES[quant]
        answer = _llama_greedy(llama, reference["ids"], limit=40)
    finally:
        llama.close()
    assert reference["tokenizer"].decode(answer) == CLICK_REPLY + "<|im_end|>"


@pytest.mark.llama_cpp
def test_an_existing_file_is_never_overwritten(exported: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    target = exported["checkpoint"] / "gguf" / "tiny-clicker-Q8_0.gguf"
    before = target.stat()
    assert main(["checkpoints", "export", str(exported["checkpoint"]), "--format", "gguf"]) == 2
    assert "tiny-clicker-Q8_0.gguf already exists" in capsys.readouterr().err
    assert target.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_a_lora_checkpoint_is_merged_first(
    llama_tools: Path, clicking_model: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    import numpy as np
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = tmp_path / "tiny-lora"
    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter really changes the model.
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(clicking_model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "in_proj", "w1"], init_lora_weights=False),
    )
    model.save_pretrained(lora)
    reference["tokenizer"].save_pretrained(lora)
    assert main(["checkpoints", "export", str(lora), "--format", "gguf", "--quant", "f16"]) == 0
    assert _leftovers(lora / "gguf") == ["tiny-lora-F16.gguf"]

    ids = reference["ids"]
    base = AutoModelForCausalLM.from_pretrained(clicking_model).eval()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(clicking_model), lora).merge_and_unload()
    with torch.no_grad():
        want = merged.eval()(torch.tensor([ids])).logits[0, -1].numpy()
        unmerged = base(torch.tensor([ids])).logits[0, -1].numpy()
    llama = _llama(lora / "gguf" / "tiny-lora-F16.gguf", logits_all=True)
    try:
        llama.eval(ids)
        got = np.array(llama.scores[llama.n_tokens - 1])
    finally:
        llama.close()
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() < 0.02 * scale  # F16 rounding
    assert np.abs(unmerged - want).max() > 0.1 * scale  # the adapter mattered, so it was merged


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of its own (root only; skipped elsewhere): smaller than the tiny model's F16 file."""
    with mounted_tmpfs(tmp_path / "disk", "64k") as mount:
        yield mount


@pytest.mark.llama_cpp
def test_a_disk_too_small_is_refused_before_writing(llama_tools: Path, clicking_model: Path, small_disk: Path) -> None:
    with pytest.raises(gguf.GgufExportError, match=r"not enough disk space .* needs about"):
        gguf.export_gguf(clicking_model, small_disk / "gguf", "tiny", ["q8_0"])
    assert _leftovers(small_disk / "gguf") == []


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_a_disk_that_fills_while_writing_leaves_nothing(
    llama_tools: Path, clicking_model: Path, small_disk: Path
) -> None:
    # Without the estimate the converter itself runs into the full disk.
    with pytest.raises(gguf.GgufExportError, match="disk full while writing GGUF files") as info:
        gguf.export_gguf(clicking_model, small_disk / "gguf", "tiny", ["f16"], check_space=False)
    assert "partial files were removed" in str(info.value)
    assert _leftovers(small_disk / "gguf") == []


# -- make checkpoint-export (scripts/export_gguf.sh) with a stand-in docker ------------------------------------


@pytest.fixture
def docker(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.test_makefile_and_scripts import FakeDocker

    return FakeDocker(tmp_path)


def test_make_checkpoint_export_runs_the_export_in_the_training_container(docker) -> None:  # type: ignore[no-untyped-def]
    docker.add_checkpoint("ckpt-a", {"config.json": b'{"model_type": "lfm2"}'})
    result = docker.run("scripts/export_gguf.sh", "ckpt-a", "--quant", "q4_k_m,f16", FAKE_RUN_EXIT="0")
    assert result.returncode == 0, result.stderr
    assert docker.compose_calls()[-1] == [
        "run", "--rm", "--no-deps", "training", "browser-control", "checkpoints", "export",
        "/model_checkpoints/ckpt-a", "--format", "gguf", "--quant", "q4_k_m,f16",
    ]  # fmt: skip
    assert "/model_checkpoints/ckpt-a/gguf/" in result.stderr
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "checkpoint-export", "NAME=ckpt-a", "QUANT=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "scripts/export_gguf.sh 'ckpt-a' --quant 'all'" in make


def test_make_checkpoint_export_refuses_unknown_names_and_passes_failures(docker) -> None:  # type: ignore[no-untyped-def]
    docker.add_checkpoint("ckpt-a", {"config.json": b"{}"})
    result = docker.run("scripts/export_gguf.sh", "ckpt-q")
    assert result.returncode == 1 and "unknown checkpoint 'ckpt-q'. Available:\n  ckpt-a" in result.stderr
    result = docker.run("scripts/export_gguf.sh", "ckpt-a", "--quant", "q8_0; rm -rf /")
    assert result.returncode == 1 and "--quant needs one of" in result.stderr
    result = docker.run("scripts/export_gguf.sh", "ckpt-a", FAKE_RUN_EXIT="2")
    assert result.returncode == 2 and "GGUF export failed with exit code 2" in result.stderr


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_a_wrong_pre_tokenizer_is_caught_and_no_file_kept(
    llama_tools: Path, clicking_model: Path, tmp_path: Path
) -> None:
    # llama-bpe splits " 3" into " " and "3", which this tokenizer merges: the check must see it.
    with pytest.raises(gguf.GgufExportError, match=r"llama.cpp tokenizes differently .* 'llama-bpe'.* none was kept"):
        gguf.export_gguf(clicking_model, tmp_path / "gguf", "tiny", ["f16"], pre_tokenizer="llama-bpe")
    assert not (tmp_path / "gguf").exists()
