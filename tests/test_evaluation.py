"""`browser-control evaluate` end to end: real service, real Chromium, real transformers models."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from browser_control.cli import main
from browser_control.evaluation import evaluate_policy
from browser_control.evaluation.model_policy import load_model_policy
from tests.conftest import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLICK_13 = "<|tool_call_start|>[click(bid='13')]<|tool_call_end|><|im_end|>"


def _train_to_click_13(model_dir: Path) -> None:
    """Fit a tiny LFM2 until greedy decoding answers click-test's first page with click(bid='13').

    A real (if minuscule) gradient-trained model gives the harness a policy with a known score: 100% on
    click-test, where the button is always bid 13, and a wrong bid on the other tasks.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from browser_control.rollout.environment import BrowserEnvironment, bound_tools
    from browser_control.rollout.prompts import task_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    messages = task_prompt("click-test")
    messages[-1]["content"] += (
        "Goal: Click the button.\nStep 0 of 10. Last action error: none\nPage:\n"
        "RootWebArea 'Click Test Task', focused\n\t[13] button 'Click Me!'"
    )
    tools = bound_tools(BrowserEnvironment(base_url="http://127.0.0.1:9"))
    prompt = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    target = tokenizer(CLICK_13, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    for step in range(80):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 15 and step % 5 == 0:
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt]), max_new_tokens=len(target), do_sample=False)
            if out[0, len(prompt) :].tolist() == target:
                break
    else:
        raise AssertionError("the tiny model did not learn the click-test answer")
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(random tiny LFM2, the same model trained to answer click(bid='13'))."""
    import shutil

    from browser_control.models.tiny import build_tiny_lfm2

    base = build_tiny_lfm2(tmp_path_factory.mktemp("models") / "base")
    trained = base.parent / "trained"
    shutil.copytree(base, trained)
    _train_to_click_13(trained)
    return base, trained


def test_evaluate_compares_a_base_and_a_trained_model(
    env_url: str, tiny_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, trained = tiny_models
    out = tmp_path / "report"
    status = main(
        [
            "evaluate",
            "--model",
            str(base),
            "--model",
            str(trained),
            "--tasks",
            "click-test,enter-text",
            "--episodes",
            "3",
            "--seed-offset",
            "7",
            "--max-steps",
            "2",
            "--max-new-tokens",
            "16",
            "--browsergym-url",
            env_url,
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0, capsys.readouterr().err
    document = json.loads((out / "report.json").read_text())
    runs = {r["label"]: r for r in document["runs"]}
    assert set(runs) == {"base", "trained"}
    for run in runs.values():
        assert run["settings"]["seeds"] == [1_000_000_007, 1_000_000_009]  # evaluation range, offset 7
        for task in [*run["tasks"], run["overall"]]:
            assert task["successes"] / task["episodes"] == pytest.approx(task["success_rate"])
            assert task["ci_low"] <= task["success_rate"] <= task["ci_high"]
            assert sum(task["ended_by"].values()) == task["episodes"]
    trained_tasks = {t["task"]: t for t in runs["trained"]["tasks"]}
    # The trained model clicks bid 13: right on click-test, a wrong element on enter-text.
    assert trained_tasks["click-test"]["successes"] == 3
    assert trained_tasks["click-test"]["mean_steps_to_success"] == 1.0
    assert trained_tasks["click-test"]["invalid_action_rate"] == 0.0
    assert trained_tasks["enter-text"]["successes"] == 0
    # A random model never produces a parseable tool call.
    assert runs["base"]["overall"]["successes"] == 0
    assert runs["base"]["overall"]["ended_by"] == {"no_tool_call": 6}
    change = {(r["run"], r["task"]): r for r in document["comparison"]}
    assert change[("trained", "click-test")]["delta"] == pytest.approx(1.0)
    assert change[("trained", "click-test")]["verdict"] == "better"

    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 12
    clicks = [e for e in episodes if e["run"] == "trained" and e["task"] == "click-test"]
    assert all(e["actions"] == ["click('13')"] and e["success"] for e in clicks)
    markdown = (out / "report.md").read_text()
    assert "| trained | click-test | +100 pts |" in markdown
    png = (out / "success_rates.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] >= 600
    printed = capsys.readouterr().out
    assert "trained: 50.0% success (3/6)" in printed and str(out / "report.md") in printed


def test_a_checkpoint_is_compared_with_its_base_under_its_training_budget(
    env_url: str, tiny_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    base, trained = tiny_models
    checkpoint = tmp_path / "checkpoints" / "tiny-click-test-20260101-100000"
    shutil.copytree(trained, checkpoint)
    (checkpoint / "training_config.yaml").write_text(
        f"model_name: {base}\ntasks: [{{name: click-test, weight: 1}}]\nmax_episode_steps: 2\n"
        "max_completion_length: 64\n"
    )
    out = tmp_path / "report"
    status = main(
        [
            "evaluate",
            "--model",
            str(checkpoint),
            "--compare-base",
            "--episodes",
            "2",
            "--max-new-tokens",
            "16",
            "--browsergym-url",
            env_url,
            "--output",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "click-test (the training tasks" in captured.err
    runs = json.loads((out / "report.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["base", checkpoint.name]
    for run in runs:
        assert run["settings"]["tasks"] == ["click-test"]
        assert run["settings"]["max_episode_steps"] == 2 and run["settings"]["max_completion_tokens"] == 64
    assert [r["overall"]["successes"] for r in runs] == [0, 2]


def test_scripted_policy_scores_100_percent_on_click_test(
    env_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "evaluate",
            "--policy",
            "scripted",
            "--suite",
            "smoke",
            "--episodes",
            "5",
            "--browsergym-url",
            env_url,
            "--output",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert status == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "report.json").read_text())["runs"][0]
    assert run["kind"] == "scripted" and run["overall"]["successes"] == 5 and run["overall"]["episodes"] == 5


def test_evaluate_policy_is_callable_with_a_model_in_memory(env_url: str, tiny_models: tuple[Path, Path]) -> None:
    """What an in-training evaluation callback does: wrap the live model, get an EvaluationReport."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from browser_control.evaluation.model_policy import from_model

    _, trained = tiny_models
    model = AutoModelForCausalLM.from_pretrained(trained)
    model.train()  # as inside a Trainer: evaluation must switch to eval mode and back
    policy = from_model(model, AutoTokenizer.from_pretrained(trained), "step-10", max_new_tokens=16)
    report = evaluate_policy(policy, ["click-test"], 2, env_url=env_url, progress=False)
    assert report.success_rate == 1.0 and report.overall.episodes == 2
    assert report.metrics()["eval/success_rate/click-test"] == 1.0
    assert model.training

    # enter-text: click('13') hits nothing useful and the page comes back; with training's completion budget
    # of 64 tokens that observation uses it up, and the episode ends there as it would in training.
    policy.max_completion_tokens = 64
    report = evaluate_policy(policy, ["enter-text"], 1, env_url=env_url, progress=False)
    episode = report.episodes[0]
    assert (episode.ended_by, episode.tool_calls, episode.success) == ("completion_limit", 1, False)


def test_lora_adapter_directory_is_evaluated_merged(tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, _ = tiny_models
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "in_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    policy = load_model_policy(str(tmp_path / "adapter"), label="lora")
    ids = torch.tensor([[1, 6, 20, 30, 40]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = policy.generator.model(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-4)
    assert policy.settings["lora_base"] == str(base)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "click-tset"], "unknown task 'click-tset' (did you mean click-test"),
        (["--suite", "miniwob-hard"], "unknown suite 'miniwob-hard'"),
        (["--model", "/nonexistent/model", "--suite", "smoke"], "model path '/nonexistent/model' does not exist"),
        (["--tasks", "book-flight"], "no scripted policy for book-flight"),
        (["--tasks", ","], "--tasks is empty"),
        (["--suite", "smoke", "--compare-base"], "--policy scripted runs no model"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(
    env_url: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--model" not in args:
        args = ["--policy", "scripted", *args]
    status = main(["evaluate", *args, "--browsergym-url", env_url, "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err


def test_service_down_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    status = main(
        [
            "evaluate",
            "--policy",
            "scripted",
            "--suite",
            "smoke",
            "--browsergym-url",
            url,
            "--output",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and f"the environment service at {url}" in err and "Connection refused" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
