"""What the goal-conditioned learning benchmark stands on: goal-blind demonstrations (sft.demos.shuffle_answers),
the best fixed-answer bar (evaluation.fixed) and a tiny tokenizer that keeps bids whole (models.tiny)."""

from __future__ import annotations

from collections import Counter

import pytest

from browser_control.evaluation.fixed import FixedAnswerPolicy, best_fixed_answers, demo_answers
from browser_control.evaluation.policy import ToolCall
from browser_control.sft.demos import shuffle_answers
from tests.conftest import load_benchmark


def _call(name: str, **arguments: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _demo(task: str, goal: str, *turns: list[dict[str, object]]) -> dict[str, object]:
    messages: list[dict[str, object]] = [{"role": "system", "content": "s"}, {"role": "user", "content": goal}]
    for calls in turns:
        messages += [
            {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "name": calls[0]["function"]["name"], "content": "ok"},
        ]  # type: ignore[index]
    messages.append({"role": "assistant", "content": ""})
    return {"task_name": task, "seed": len(goal), "messages": messages, "tools": []}


def _first_bid(record: dict[str, object]) -> str:
    message = next(m for m in record["messages"] if m.get("tool_calls"))  # type: ignore[attr-defined, union-attr]
    return message["tool_calls"][0]["function"]["arguments"]["bid"]


def test_shuffled_answers_keep_prompts_and_answer_frequencies_but_break_the_goal_link() -> None:
    records = [
        _demo("focus-text-2", f"Goal: the {i % 3 + 1}th box {i}", [_call("focus", bid=str(12 + i % 3))])
        for i in range(30)
    ]
    records.append(
        _demo("enter-text", "Goal: enter Ann", [_call("fill", bid="14", value="Ann")], [_call("click", bid="15")])
    )
    records.append(_demo("enter-text", "Goal: enter Bob", [_call("fill", bid="14", value="Bob")]))
    shuffled = shuffle_answers(records, seed=1)
    assert shuffle_answers(records, seed=1) == shuffled and shuffle_answers(records, seed=2) != shuffled
    assert records[0]["messages"][2]["tool_calls"][0]["function"]["arguments"]["bid"] == "12"  # input untouched
    assert [r["messages"][1] for r in shuffled] == [r["messages"][1] for r in records]  # same goals and pages
    focus = [(r, s) for r, s in zip(records, shuffled, strict=True) if r["task_name"] == "focus-text-2"]
    assert Counter(_first_bid(s) for _, s in focus) == Counter(_first_bid(r) for r, _ in focus)
    matching = sum(_first_bid(r) == _first_bid(s) for r, s in focus)
    assert matching < 20, "the answers still follow the goals"  # ~1/3 by chance
    # a two-action demonstration whose donor acted once stops after that action, with the stop turn
    ann = next(s for s in shuffled if s["messages"][1]["content"] == "Goal: enter Ann")
    calls = [m["tool_calls"] for m in ann["messages"] if m.get("tool_calls")]
    assert len(calls) in (1, 2) and ann["messages"][-1] == {"role": "assistant", "content": ""}
    assert sum(len(demo_answers([s])["enter-text"]) for s in shuffled if s["task_name"] == "enter-text") == 2


@pytest.mark.browser
@pytest.mark.slow
def test_each_focus_text_2_instance_is_solved_by_exactly_one_fixed_answer(env_url: str) -> None:
    from browser_control.evaluation.runner import evaluate_policy

    episodes = 9
    successes = []
    for bid in ("12", "13", "14"):
        report = evaluate_policy(
            FixedAnswerPolicy([ToolCall("focus", {"bid": bid})]),
            ["focus-text-2"],
            episodes,
            env_url=env_url,
            max_episode_steps=2,
            progress=False,
        )
        assert all(e.seed >= 1_000_000_000 for e in report.episodes)  # evaluation seeds
        successes.append(report.tasks[0].successes)
    # the three boxes are the only answers: a goal-blind policy solves only the instances that ask for its box
    assert sum(successes) == episodes and max(successes) < episodes

    records = [
        _demo("focus-text-2", f"g{i}", [_call("focus", bid=bid)]) for i, bid in enumerate(["12", "13", "14", "14"])
    ]
    best = best_fixed_answers(records, ["focus-text-2"], episodes, env_url=env_url, max_episode_steps=2)["focus-text-2"]
    assert best.tried == 3 and best.successes == max(successes)
    assert (
        best.answer == f"focus('{('12', '13', '14')[successes.index(max(successes))]}')"
        or successes.count(max(successes)) > 1
    )
    with pytest.raises(ValueError, match="at least one call"):
        FixedAnswerPolicy([])


def test_the_digit_split_tokenizer_keeps_bids_whole_and_the_prompt_short(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from browser_control.models.tiny import BID_CORPUS, build_tokenizer
    from browser_control.rollout.environment import bound_tools
    from browser_control.rollout.prompts import task_prompt

    bids = list(BID_CORPUS)
    words = build_tokenizer(tmp_path / "words", extra_corpus=bids)
    digits = build_tokenizer(tmp_path / "digits", extra_corpus=bids, split="digits", vocab_size=2048)
    messages = task_prompt("focus-text-2")
    messages[-1]["content"] += "Goal: Focus into the 3rd input textbox.\nPage:\n\t[12] textbox ''\n\t[14] textbox ''"
    lengths = {}
    for name, tokenizer in (("words", words), ("digits", digits)):
        text = tokenizer.apply_chat_template(messages, tools=bound_tools(), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        lengths[name] = len(ids)
    assert lengths["digits"] * 4 < lengths["words"], lengths  # the fixed system prompt and tool list merge
    pieces = [digits.decode([i]) for i in digits(messages[-1]["content"] + "[focus(bid='14')]")["input_ids"]]
    assert pieces.count("14") == 2 and "3" in pieces  # the bid is one token in the page and in the call
    with pytest.raises(ValueError, match="split"):
        build_tokenizer(tmp_path / "bad", split="chars")


def test_the_recipe_sweep_holds_out_later_seeds_and_scores_the_scripted_bid() -> None:
    sweep = load_benchmark("learning_sweep")
    rows = [{"task": t, "seed": s, "bid": str(12 + s % 3), "prompt": f"{t} {s}"} for t in ("a", "b") for s in range(10)]
    train, test = sweep.split_prompts(rows, held_out_share=0.3)
    for task in ("a", "b"):
        train_seeds = {r["seed"] for r in train if r["task"] == task}
        test_seeds = {r["seed"] for r in test if r["task"] == task}
        assert train_seeds == set(range(7)) and test_seeds == {7, 8, 9}  # no prompt in both
    # The first call decides; another bid, no call, or a right bid after a wrong one score 0.
    completions = ["[focus(bid='14')]", "[click(bid='12')]", "I would click 14", "[click(bid='13'), click(bid='14')]"]
    assert sweep.bid_reward(completions, bid=["14", "14", "14", "14"]) == [1.0, 0.0, 0.0, 0.0]
    # Training seeds 0-6 answer 12, 13, 14, 12, 13, 14, 12 -> always "12"; held out 7, 8, 9 want 13, 14, 12.
    assert sweep.fixed_answer_rates(train, test) == {"a": 0.333, "b": 0.333}


def test_the_recipe_sweep_refuses_bad_models_and_grids_with_the_expected_form() -> None:
    sweep = load_benchmark("learning_sweep")
    assert sweep.ModelSpec.parse("256:6:1,3,5").name == "h256-l6-a135"
    for bad in ("256:6", "256:x:1", "128:4:4"):
        with pytest.raises(ValueError, match=r"ATTENTION_LAYERS|must lie in"):
            sweep.ModelSpec.parse(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        sweep.parse_grid('[{"learning_rate": 1e-3}]')
    with pytest.raises(ValueError, match="non-empty JSON list"):
        sweep.parse_grid("{}")
    # Replicates: seed 0 keeps the bare names; other seeds name their start and runs apart.
    spec = sweep.ModelSpec.parse("256:6:1,3,5")
    assert sweep.parse_seeds("0,1,2") == [0, 1, 2]
    names = {sweep.run_name(spec, {"lr": 2e-4, "batch": 256}, seed) for seed in (0, 1, 2)}
    assert names == {"h256-l6-a135-lr0.0002-batch256"} | {f"h256-l6-a135-seed{s}-lr0.0002-batch256" for s in (1, 2)}
    for bad in ("0,0", "1,x", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            sweep.parse_seeds(bad)


def test_the_recipe_sweep_summary_reads_runs_that_were_stopped_early(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    sweep = load_benchmark("learning_sweep")
    lines = [
        {"fixed_answer": {"focus-text-2": 0.42}, "train_prompts": 72, "held_out": 48},
        {"step": 0, "success": {"focus-text-2": 0.42}, "tool_call_share": 1.0},
        {"step": 50, "success": {"focus-text-2": 0.75}, "tool_call_share": 1.0},
        {"step": 75, "success": {"focus-text-2": 0.71}, "tool_call_share": 0.98},
    ]  # no final line: the run was stopped at the deadline
    (tmp_path / "h256-l6-a135-lr0.0002.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    table = sweep.summary(tmp_path)
    assert "| best fixed answer | | 42% |" in table
    assert "| h256-l6-a135-lr0.0002 | 75 | 42 / 75 / 71% | 0.98 |" in table
