"""`browser-control demos`: scripted episodes recorded as tool-call conversations on training seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from browser_control.rollout.environment import BrowserEnvironment, bound_tools
from browser_control.rollout.prompts import SYSTEM_PROMPT
from browser_control.seeds import EVAL_SEED_RANGE, TRAIN_SEED_RANGE, train_seed
from browser_control.sft.demos import read_demos
from tests.conftest import free_port, subprocess_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _demos_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "browser_control", "demos", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def demos_file(env_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demos") / "demos.jsonl"
    proc = _demos_cli(
        "--tasks",
        "click-test,login-user",
        "--episodes",
        "3",
        "--output",
        str(path),
        "--seed-offset",
        "7000",
        "--max-steps",
        "4",
        "--browsergym-url",
        env_url,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote 6 demonstrations to {path} (click-test 3, login-user 3)" in proc.stdout
    assert "demos: 100%" in proc.stderr  # the progress bar
    return path


def test_demos_are_training_seed_conversations_in_trls_format(demos_file: Path) -> None:
    records = read_demos(demos_file)
    assert [(r["task_name"], r["seed"]) for r in records] == [
        (task, train_seed(i, 7000)) for i in range(3) for task in ("click-test", "login-user")
    ]
    assert all(r["seed"] in TRAIN_SEED_RANGE and r["seed"] not in EVAL_SEED_RANGE for r in records)
    for record in records:
        messages = record["messages"]
        assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert messages[1]["role"] == "user"
        assert messages[1]["content"].startswith(f"MiniWoB task '{record['task_name']}'.\nGoal: ")
        assert "Step 0 of 4. Last action error: none\nPage:\n" in messages[1]["content"]
        calls = [m for m in messages if m.get("tool_calls")]
        assert len(calls) == (1 if record["task_name"] == "click-test" else 3)
        for message in calls:
            (call,) = message["tool_calls"]
            assert call["type"] == "function" and isinstance(call["function"]["arguments"], dict)
        assert "the task is solved" in messages[-2]["content"] and messages[-2]["role"] == "tool"
        assert messages[-1] == {"role": "assistant", "content": ""}  # the model learns to stop
    # The same tool schemas, in the same order, as TRL derives from BrowserEnvironment's methods.
    from transformers.utils import get_json_schema

    env = BrowserEnvironment.__new__(BrowserEnvironment)
    assert records[0]["tools"] == [get_json_schema(tool) for tool in bound_tools(env)]


def test_demos_render_with_the_chat_template_and_parse_back(demos_file: Path, tmp_path: Path) -> None:
    from browser_control.evaluation.generation import ChatCodec
    from browser_control.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(tmp_path / "tok")
    codec = ChatCodec(tokenizer)  # TRL's response parser, set up as training and evaluation set it up
    env = BrowserEnvironment.__new__(BrowserEnvironment)
    for record in read_demos(demos_file):
        messages, tools = record["messages"], record["tools"]
        full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        # GRPO's prompt (TRL renders the tools from the environment's bound methods) starts the conversation.
        prompt = tokenizer.apply_chat_template(
            messages[:2], tools=bound_tools(env), add_generation_prompt=True, tokenize=False
        )
        assert full.startswith(prompt)
        # Each assistant turn, tokenized as the model would generate it, parses back to the recorded calls.
        for index, message in enumerate(messages):
            if not message.get("tool_calls"):
                continue
            before = tokenizer.apply_chat_template(
                messages[:index], tools=tools, add_generation_prompt=True, tokenize=False
            )
            upto = tokenizer.apply_chat_template(messages[: index + 1], tools=tools, tokenize=False)
            assert upto.startswith(before)
            reply = upto[len(before) :].removesuffix("\n")
            assert reply.startswith("<|tool_call_start|>[") and reply.endswith("]<|tool_call_end|><|im_end|>")
            parsed = codec.parse(
                tokenizer(reply, add_special_tokens=False)["input_ids"],
                tokenizer(before, add_special_tokens=False)["input_ids"],
                tools,
            )
            assert parsed["tool_calls"] == message["tool_calls"], reply


def test_demos_cli_errors(env_url: str, tmp_path: Path) -> None:
    out = tmp_path / "d.jsonl"
    unknown = _demos_cli("--tasks", "click-tset", "--output", str(out), "--browsergym-url", env_url)
    assert unknown.returncode == 2 and "unknown task 'click-tset' (did you mean click-test" in unknown.stderr
    unscripted = _demos_cli("--tasks", "book-flight", "--output", str(out), "--browsergym-url", env_url)
    assert unscripted.returncode == 2 and "no scripted policy for book-flight" in unscripted.stderr
    dead = _demos_cli(
        "--tasks", "click-test", "--output", str(out), "--browsergym-url", f"http://127.0.0.1:{free_port()}"
    )
    assert dead.returncode == 2 and "BROWSERGYM_URL" in dead.stderr
    too_far = _demos_cli(
        "--tasks",
        "click-test",
        "--output",
        str(out),
        "--browsergym-url",
        env_url,
        "--seed-offset",
        str(TRAIN_SEED_RANGE.stop - 1),
        "--episodes",
        "2",
    )
    assert too_far.returncode == 2 and "leaves the training seed range" in too_far.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    out.write_text("keep me\n")
    exists = _demos_cli("--tasks", "click-test", "--output", str(out), "--browsergym-url", env_url)
    assert exists.returncode == 2 and "--force" in exists.stderr and out.read_text() == "keep me\n"


def test_reading_a_broken_demos_file_names_the_line(tmp_path: Path) -> None:
    from browser_control.sft.demos import DemoError

    path = tmp_path / "broken.jsonl"
    call = {"type": "function", "function": {"name": "rm_rf", "arguments": {}}}
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]}) + "\n")
    with pytest.raises(DemoError, match=r"broken.jsonl:1: unknown tool 'rm_rf'"):
        read_demos(path)
    path.write_text("\n{not json\n")
    with pytest.raises(DemoError, match=r"broken.jsonl:2: not JSON"):
        read_demos(path)
