"""`browser-control sft`: assistant-only labels, a loss that drops, a checkpoint that loads, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from browser_control.rollout.prompts import task_prompt
from browser_control.sft.config import SftConfig
from browser_control.sft.demos import tool_schemas
from tests.conftest import subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _conversation(task: str, bid: str, tool: str = "click") -> list[dict[str, Any]]:
    """A solved one-action episode in the shape `browser-control demos` records."""
    messages = task_prompt(task)
    page = f"Goal: Click the button.\nStep 0 of 2. Last action error: none\nPage:\n\t[{bid}] button 'Click Me!'"
    messages[-1] = {**messages[-1], "content": messages[-1]["content"] + page}
    call = {"type": "function", "function": {"name": tool, "arguments": {"bid": bid}}}
    return [
        *messages,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": tool, "content": "The episode is over after 1 actions: the task is solved."},
        {"role": "assistant", "content": ""},
    ]


def _write_demos(path: Path, count: int = 6) -> Path:
    tools = tool_schemas()
    with path.open("w") as handle:
        for i in range(count):
            record = {
                "task_name": "click-test",
                "seed": i,
                "messages": _conversation("click-test", str(13 + i % 3)),
                "tools": tools,
            }
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from browser_control.models.tiny import build_tiny_lfm2

    torch.set_num_threads(1)
    return build_tiny_lfm2(tmp_path_factory.mktemp("tiny"), hidden_size=32, intermediate_size=64)


def test_labels_keep_only_the_assistant_turns(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from browser_control.sft.trainer import IGNORE_INDEX, tokenize_demo, training_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = _conversation("click-test", "13")
    record = {"messages": messages, "tools": tool_schemas()}
    row = tokenize_demo(tokenizer, record, training_template(tokenizer))

    # The training template renders exactly the tokens of the model's own template (what GRPO sees).
    plain = tokenizer.apply_chat_template(messages, tools=record["tools"], tokenize=True, return_dict=False)
    assert row["input_ids"] == list(plain)

    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(learned) == (
        "<|tool_call_start|>[click(bid='13')]<|tool_call_end|><|im_end|>\n<|im_end|>\n"
    )
    # Everything before the first assistant turn (system prompt, tool list, task, page) is masked ...
    prompt = tokenizer.apply_chat_template(
        messages[:2], tools=record["tools"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert all(label == IGNORE_INDEX for label in row["labels"][: len(prompt)])
    assert row["input_ids"][: len(prompt)] == list(prompt)
    # ... and so is the tool result between the two assistant turns.
    text_of_masked = tokenizer.decode(
        [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == IGNORE_INDEX]
    )
    assert "<|tool_response_start|>The episode is over after 1 actions" in text_of_masked
    assert "List of tools: <|tool_list_start|>" in text_of_masked


def _sft_config(tmp_path: Path, model: Path, demos: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "model_name": str(model),
        "demos": [str(demos)],
        "max_steps": 40,
        "per_device_train_batch_size": 3,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "bf16": False,
        "checkpoint_dir": str(tmp_path / "ck"),
        "logging_dir": str(tmp_path / "tb"),
        "max_episode_steps": 2,
        "tasks": ["click-test"],
        "logging_steps": 1,
    }
    data.update(overrides)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _sft_cli(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "browser_control", "sft", "--config", str(config), *extra],
        env=subprocess_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=config.parent,
    )


def test_sft_cli_lowers_the_loss_and_writes_a_loadable_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    demos = _write_demos(tmp_path / "demos.jsonl")
    proc = _sft_cli(_sft_config(tmp_path, tiny_model, demos))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (final,) = [p for p in (tmp_path / "ck").iterdir() if p.name != "runs"]
    assert f"checkpoint: {final}" in proc.stdout
    assert final.name.startswith(f"{tiny_model.name.lower()}-sft-click-test-")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "training_config.yaml",
        "metrics.json",
    ):
        assert (final / name).is_file(), name
    assert not list((tmp_path / "ck").glob(".tmp-*"))
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["global_step"] == 40 and metrics["demonstrations"] == 6
    assert metrics["last_loss"] < 0.5 * metrics["first_loss"], metrics["losses"]

    # The checkpoint is a model `browser-control train` and `evaluate` load by path: lfm2_v2 template kept, the
    # saved config is the SFT config (evaluate reads model_name, tasks and max_episode_steps from it).
    from transformers import AutoModelForCausalLM
    from trl.chat_template_utils import lfm2_v2_chat_template

    from browser_control.evaluation.model_lookup import base_model_of, training_config
    from browser_control.training.grpo import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.use_cache
    tokenizer = load_tokenizer(str(final))
    assert tokenizer.chat_template == lfm2_v2_chat_template and tokenizer.padding_side == "left"
    SftConfig.model_validate(yaml.safe_load((final / "training_config.yaml").read_text()))
    assert base_model_of(str(final)) == str(tiny_model)
    assert (training_config(str(final)) or {})["max_episode_steps"] == 2

    # It learned the demonstrated reply: greedy decoding after a prompt gives a parseable click.
    import torch

    messages = _conversation("click-test", "14")[:2]
    ids = tokenizer.apply_chat_template(
        messages, tools=tool_schemas(), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
    assert reply.startswith("<|tool_call_start|>[click(bid='1"), reply


def test_sft_errors_are_clear(tiny_model: Path, tmp_path: Path) -> None:
    missing = _sft_cli(_sft_config(tmp_path, tiny_model, tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert "nope.jsonl: no such demonstrations file" in missing.stderr and "browser-control demos" in missing.stderr

    demos = _write_demos(tmp_path / "demos.jsonl", count=2)
    other_task = _sft_cli(_sft_config(tmp_path, tiny_model, demos, tasks=["focus-text"]))
    assert other_task.returncode == 2 and "no demonstration of focus-text" in other_task.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("demos: [a.jsonl]\nlearning_rate: [1\n")
    broken = _sft_cli(bad)
    assert broken.returncode == 2 and "invalid YAML at line" in broken.stderr

    typo = _sft_config(tmp_path, tiny_model, demos, learning_rte=1e-3)
    unknown = _sft_cli(typo)
    assert unknown.returncode == 2 and "unknown key 'learning_rte' (did you mean 'learning_rate'?)" in unknown.stderr

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    no_assistant = _sft_cli(_sft_config(tmp_path, tiny_model, garbage, tasks=None))
    assert no_assistant.returncode == 2 and "garbage.jsonl:1: no assistant message" in no_assistant.stderr
    assert not (tmp_path / "ck").exists()  # nothing was trained or written


def test_demo_selection_caps_each_task(tmp_path: Path) -> None:
    from browser_control.sft.trainer import select_demos

    tools = tool_schemas()
    path = tmp_path / "mix.jsonl"
    with path.open("w") as handle:
        for i in range(5):
            for task in ("click-test", "focus-text"):
                handle.write(
                    json.dumps({"task_name": task, "seed": i, "messages": _conversation(task, "12"), "tools": tools})
                    + "\n"
                )
    config = SftConfig(demos=[str(path)], max_demos_per_task=2)
    picked = select_demos(config)
    assert [(r["task_name"], r["seed"]) for r in picked] == [
        ("click-test", 0),
        ("focus-text", 0),
        ("click-test", 1),
        ("focus-text", 1),
    ]
    only = select_demos(SftConfig(demos=str(path), tasks="miniwob.focus-text"))
    assert {r["task_name"] for r in only} == {"focus-text"} and len(only) == 5
