"""Evaluation pieces that need no browser: intervals, observation parsing, planners, suites, reports."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from browser_control.env_service.actions import parse_action
from browser_control.evaluation.observation import parse_observation
from browser_control.evaluation.policy import ToolCall
from browser_control.evaluation.report import EpisodeRecord, build_report, compare, write_reports
from browser_control.evaluation.runner import EvaluationError, check_tasks
from browser_control.evaluation.scripted import SCRIPTED_TASKS, ScriptedPolicyError, scripted_step
from browser_control.evaluation.stats import difference_interval, wilson_interval
from browser_control.evaluation.suites import list_suites, load_suite
from browser_control.rollout.environment import BrowserEnvironment, tool_names

LOGIN = """Goal: Enter the username "kenda" and the password "Ttlh" into the text fields and press login.
Step 0 of 10. Last action error: none
Page:
RootWebArea 'Login User Task', focused
\t[14] paragraph ''
\t\t[15] LabelText ''
\t\t\tStaticText 'Username'
\t\t[16] textbox ''
\t[17] paragraph ''
\t\t[18] LabelText ''
\t\t\tStaticText 'Password'
\t\t[19] textbox ''
\t[20] button 'Login'"""

CHECKBOXES = """Goal: Select Jc, XMHY and click Submit.
Step 1 of 10. Last action error: none
Page:
RootWebArea 'Click Checkboxes Task', focused
\t[17] LabelText ''
\t\t[18] checkbox 'Jc', focused, checked='true'
\t\tStaticText 'Jc'
\t[20] LabelText ''
\t\t[21] checkbox "it's", checked='false'
\t[23] LabelText ''
\t\t[24] checkbox 'XMHY', checked='false'
\t\tStaticText 'XMHY'
\t[36] button 'Submit'"""


# -- Wilson / Newcombe ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # published values (Wilson 1927 / Newcombe 1998 tables)
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-4)


def test_wilson_interval_contains_the_rate_and_narrows_with_more_trials() -> None:
    for n in (1, 2, 7, 20, 100):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
    assert (
        wilson_interval(20, 40)[1] - wilson_interval(20, 40)[0] < wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]
    )
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_newcombe_difference_interval_matches_the_published_example() -> None:
    # Newcombe (1998), example (a): 56/70 vs 48/80 -> difference 0.2000, 95% CI 0.0524 to 0.3339.
    delta, low, high = difference_interval(48, 80, 56, 70)
    assert delta == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=5e-4)


# -- observations and tool calls --------------------------------------------------------------------
def test_observation_text_parses_into_goal_and_nodes_with_parents() -> None:
    page = parse_observation(CHECKBOXES)
    assert page.goal == "Select Jc, XMHY and click Submit."
    assert page.last_action_error == ""
    jc = page.find("checkbox", "Jc")[0]
    assert jc.bid == "18" and jc.properties == {"focused": True, "checked": "true"}
    assert jc.parent is not None and jc.parent.role == "LabelText"
    assert page.find("checkbox", "it's")[0].bid == "21"  # repr() switches to double quotes
    with pytest.raises(ValueError):
        parse_observation("The episode is over after 1 actions: the task is solved.")


def test_every_tool_call_maps_one_to_one_onto_a_tool_and_a_whitelisted_action() -> None:
    examples = {
        "click": {"bid": "13"},
        "fill": {"bid": "14", "value": "it's"},
        "scroll": {"delta_x": 0, "delta_y": 50},
        "select_option": {"bid": "3", "option": "Red"},
        "press": {"bid": "4", "key": "Enter"},
        "drag_and_drop": {"from_bid": "1", "to_bid": "2"},
        "keyboard_type": {"text": "hi"},
        "keyboard_press": {"key": "Tab"},
    }
    for name in tool_names():
        arguments = examples.get(name, {"bid": "7"})
        action = ToolCall(name, arguments).action()
        assert parse_action(action).canonical() == action, name
    assert ToolCall("fill", {"bid": "14", "value": "x"}).action() == "fill('14', 'x')"
    with pytest.raises(ValueError, match="unknown tool"):
        ToolCall("reset", {}).action()
    with pytest.raises(ValueError, match="takes bid"):
        ToolCall("click", {}).action()
    assert tool_names() == sorted(tool_names()) and "get_reward" not in tool_names()


def test_planners_read_the_page_and_skip_steps_already_taken() -> None:
    first = scripted_step("login-user", LOGIN)
    assert first == ToolCall("fill", {"bid": "16", "value": "kenda"})
    second = scripted_step("miniwob.login-user", LOGIN, [first])
    assert second == ToolCall("fill", {"bid": "19", "value": "Ttlh"})
    third = scripted_step("login-user", LOGIN, [first, second])
    assert third == ToolCall("click", {"bid": "20"})
    assert scripted_step("login-user", LOGIN, [first, second, third]) is None
    # Jc is already ticked on this page: the next step is XMHY, then Submit.
    assert scripted_step("click-checkboxes", CHECKBOXES) == ToolCall("click", {"bid": "24"})


def test_a_failed_click_is_retried_once_with_enter() -> None:
    failed = CHECKBOXES.replace("Last action error: none", "Last action error: TimeoutError: Locator.click")
    click = ToolCall("click", {"bid": "24"})
    retry = scripted_step("click-checkboxes", failed, [click])
    assert retry == ToolCall("press", {"bid": "24", "key": "Enter"})
    # The retry failed too: the policy moves on rather than looping.
    assert scripted_step("click-checkboxes", failed, [click, retry]) == ToolCall("click", {"bid": "36"})


def test_planner_refuses_a_page_it_does_not_understand() -> None:
    with pytest.raises(ScriptedPolicyError, match="unexpected goal"):
        scripted_step("login-user", CHECKBOXES)
    with pytest.raises(KeyError):
        scripted_step("book-flight", LOGIN)


# -- suites and task names ----------------------------------------------------------------------------
def test_suites_ship_with_the_package_and_name_real_tasks() -> None:
    from browsergym.miniwob import ALL_MINIWOB_TASKS

    registered = {t.get_task_id().removeprefix("miniwob.") for t in ALL_MINIWOB_TASKS}
    suites = {s.name: s for s in list_suites()}
    assert {"smoke", "miniwob-easy", "miniwob-all", "scripted"} <= set(suites)
    assert suites["smoke"].tasks == ("click-test",)
    assert suites["scripted"].tasks is not None and list(suites["scripted"].tasks) == list(SCRIPTED_TASKS)
    assert suites["miniwob-easy"].tasks is not None and 8 <= len(suites["miniwob-easy"].tasks) <= 12
    assert suites["miniwob-all"].resolve(sorted(registered)) == sorted(registered)
    for suite in suites.values():
        assert set(suite.tasks or ()) <= registered, suite.name
    assert len(SCRIPTED_TASKS) >= 6 and set(SCRIPTED_TASKS) <= registered


def test_unknown_suite_and_task_errors_name_close_matches() -> None:
    with pytest.raises(EvaluationError, match=r"unknown suite 'miniwob-eas'.*Did you mean miniwob-easy"):
        load_suite("miniwob-eas")
    with pytest.raises(EvaluationError, match=r"unknown task 'clik-test' \(did you mean click-test"):
        check_tasks(["click-test", "clik-test"], ["click-test", "click-test-2", "enter-text"])
    assert check_tasks(["miniwob.click-test"], ["click-test"]) == ["click-test"]


# -- reports --------------------------------------------------------------------------------------------
def _records(task: str, wins: int, n: int, steps: int = 2) -> list[EpisodeRecord]:
    return [
        EpisodeRecord(
            task,
            1_000_000_000 + i,
            i < wins,
            steps if i < wins else 10,
            steps,
            1 if i >= wins else 0,
            "success" if i < wins else "step_limit",
            ["click('13')"],
        )
        for i in range(n)
    ]


def _settings(n: int) -> dict:
    return {
        "episodes_per_task": n,
        "seeds": [1_000_000_000, 1_000_000_000 + n - 1],
        "seed_offset": 0,
        "max_episode_steps": 10,
        "env_url": "http://127.0.0.1:8000",
    }


def test_reports_aggregate_compare_and_write_json_markdown_and_a_png(tmp_path: Path) -> None:
    n = 30
    base = build_report(
        "base",
        "model",
        ["click-test", "enter-text"],
        _records("click-test", 3, n) + _records("enter-text", 0, n),
        _settings(n),
        12.0,
    )
    tuned = build_report(
        "tuned",
        "model",
        ["click-test", "enter-text"],
        _records("click-test", 27, n, 1) + _records("enter-text", 2, n),
        _settings(n),
        10.0,
    )
    assert tuned.task("click-test").successes == 27 and tuned.task("click-test").mean_steps_to_success == 1.0
    assert base.task("enter-text").mean_steps_to_success is None
    assert tuned.overall.episodes == 2 * n and tuned.overall.successes == 29
    assert base.task("enter-text").invalid_action_rate == pytest.approx(0.5)  # 1 invalid of 2 calls each
    verdicts = {row["task"]: row["verdict"] for row in compare([base, tuned])}
    assert verdicts == {"click-test": "better", "enter-text": "no clear change", "all tasks": "better"}

    paths = write_reports([base, tuned], tmp_path / "out")
    document = json.loads(paths["json"].read_text())
    assert [r["label"] for r in document["runs"]] == ["base", "tuned"]
    click = document["runs"][1]["tasks"][0]
    assert click["successes"] / click["episodes"] == click["success_rate"]
    assert click["ci_low"] <= click["success_rate"] <= click["ci_high"]
    markdown = paths["markdown"].read_text()
    assert "| click-test | 10% (" in markdown and "| tuned | click-test | +80 pts |" in markdown
    lines = paths["episodes"].read_text().splitlines()
    assert len(lines) == 4 * n and json.loads(lines[0])["run"] == "base"
    png = paths["chart"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 600 and height >= 300 and len(png) > 10_000


def test_report_of_no_runs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_reports([], tmp_path)


# -- the tool-call format is TRL's ------------------------------------------------------------------------
def test_tool_result_tokens_are_the_ones_trl_appends(tmp_path: Path) -> None:
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from browser_control.evaluation.generation import ChatCodec
    from browser_control.models.tiny import build_tokenizer

    build_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    codec = ChatCodec(tokenizer)
    messages = [{"role": "tool", "name": "click", "content": "Goal: x\nPage:\n[13] button 'OK'"}]
    trainer_like = SimpleNamespace(
        processing_class=tokenizer,
        _tokenizer=tokenizer,
        chat_template=codec.chat_template,
        chat_template_kwargs={},
        _is_vlm=False,
    )
    assert codec.tool_suffix_ids(messages) == GRPOTrainer._get_tool_suffix_ids(trainer_like, messages)
    env = BrowserEnvironment(base_url="http://127.0.0.1:9")
    from browser_control.rollout.environment import bound_tools

    prompt = codec.prompt_ids([{"role": "user", "content": "hi"}], bound_tools(env))
    completion = tokenizer(
        "<|tool_call_start|>[fill(bid='14', value='Cheree')]<|tool_call_end|><|im_end|>", add_special_tokens=False
    )["input_ids"]
    message = codec.parse(codec.cut_at_eos([*completion, 0, 0]), prompt, bound_tools(env))
    assert message["tool_calls"][0]["function"] == {"name": "fill", "arguments": {"bid": "14", "value": "Cheree"}}


def test_a_merged_lora_checkpoint_is_a_full_model_and_an_unmerged_one_an_adapter(tmp_path) -> None:
    import json as _json

    from browser_control.evaluation.model_lookup import adapter_of as _adapter

    merged, unmerged = tmp_path / "merged", tmp_path / "unmerged"
    (merged / "adapter").mkdir(parents=True)
    unmerged.mkdir()
    (merged / "config.json").write_text("{}")
    for adapter in (merged / "adapter", unmerged):
        (adapter / "adapter_config.json").write_text(_json.dumps({"base_model_name_or_path": "base-model"}))
    # merge_lora: true writes the merged model beside adapter/: vLLM and transformers load it as it is.
    assert _adapter(str(merged)) is None
    assert _adapter(str(unmerged)) == (unmerged, "base-model")


def test_training_evaluation_and_export_swap_the_same_lfm2_templates() -> None:
    from trl.chat_template_utils import lfm2_chat_template, lfm2_v2_chat_template

    from browser_control.models.chat_template import use_tool_calling_template

    # A tokenizer saved by another transformers release may end the template with a newline; the swap must
    # not depend on it (evaluation once compared exactly and training after strip(), so they disagreed).
    for template in (lfm2_chat_template, lfm2_chat_template + "\n", "\n" + lfm2_chat_template.strip()):
        assert use_tool_calling_template(SimpleNamespace(chat_template=template)).chat_template == lfm2_v2_chat_template
    for other in ("{{ messages }}", None, lfm2_v2_chat_template):
        assert use_tool_calling_template(SimpleNamespace(chat_template=other)).chat_template == other


def test_the_vllm_generator_exposes_the_turn_budget_the_policy_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model policy cuts each turn to `generator.max_new_tokens`; the vLLM backend lacked it (GPU run)."""
    import sys
    import types

    from browser_control.evaluation.generation import TransformersGenerator, VLLMGenerator

    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM = lambda **kwargs: SimpleNamespace(kwargs=kwargs)  # type: ignore[attr-defined]
    fake_vllm.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    for name in ("VLLM_USE_FLASHINFER_SAMPLER", "VLLM_WORKER_MULTIPROC_METHOD"):
        monkeypatch.setenv(name, "unchanged")
    generator = VLLMGenerator("/models/x", eos_token_ids=[7], max_new_tokens=96)
    assert generator.max_new_tokens == 96 == generator.params.max_tokens
    # Both backends answer the same question the same way.
    assert TransformersGenerator(None, 0, [7], 96).max_new_tokens == 96
