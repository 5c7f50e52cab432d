"""Scripted policies against the real service: they solve their tasks from the observation text alone."""

from __future__ import annotations

import time

import pytest

from browser_control.client import EnvClient
from browser_control.evaluation import SCRIPTED_TASKS, ScriptedPolicy, evaluate_policy, scripted_step
from browser_control.rollout.environment import BrowserEnvironment
from browser_control.seeds import train_seed

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SEEDS_PER_TASK = 20


def test_scripted_policies_solve_their_tasks_on_evaluation_seeds(env_url: str) -> None:
    started = time.perf_counter()
    report = evaluate_policy(
        ScriptedPolicy(),
        list(SCRIPTED_TASKS),
        SEEDS_PER_TASK,
        seed_offset=500,
        env_url=env_url,
        concurrency=16,
        progress=False,
    )
    elapsed = time.perf_counter() - started
    failures = {t.task: t.ended_by for t in report.tasks if t.success_rate < 0.95}
    assert not failures, f"scripted policies below 95%: {failures}"
    assert report.overall.episodes == SEEDS_PER_TASK * len(SCRIPTED_TASKS)
    assert report.task("click-test").success_rate == 1.0
    # Each successful episode took between 1 action and the step limit, and every action was a tool call.
    for episode in report.episodes:
        assert episode.success == (episode.ended_by == "success")
        assert 1 <= episode.steps == len(episode.actions) <= 10
    print(f"{report.overall.episodes} scripted episodes in {elapsed:.1f} s")


def test_a_scripted_episode_is_a_tool_call_conversation(env_url: str) -> None:
    """What demonstrations are recorded from: each step a (tool, arguments) pair, in training's chat shape."""
    report = evaluate_policy(
        ScriptedPolicy(), ["login-user"], 1, env_url=env_url, progress=False, keep_transcripts=True
    )
    episode = report.episodes[0]
    assert episode.success and episode.messages is not None
    roles = [m["role"] for m in episode.messages]
    assert roles == ["system", "user"] + ["assistant", "tool"] * 3
    assert episode.messages[1]["content"].startswith("MiniWoB task 'login-user'.\nGoal: Enter the username")
    calls = [m["tool_calls"][0]["function"] for m in episode.messages if m["role"] == "assistant"]
    assert [c["name"] for c in calls] == ["fill", "fill", "click"]
    assert episode.actions == [
        f"fill('{calls[0]['arguments']['bid']}', '{calls[0]['arguments']['value']}')",
        f"fill('{calls[1]['arguments']['bid']}', '{calls[1]['arguments']['value']}')",
        f"click('{calls[2]['arguments']['bid']}')",
    ]
    assert "task is solved" in episode.messages[-1]["content"]


def test_scripted_steps_drive_the_training_environment_directly(env_url: str) -> None:
    """The same planners on training seeds, through BrowserEnvironment's tools (how SFT data is recorded)."""
    env = BrowserEnvironment(max_episode_steps=10, client=EnvClient(env_url))
    try:
        for index in range(3):
            observation = env.reset(task_name="click-checkboxes", seed=train_seed(index))
            history = []
            while (call := scripted_step("click-checkboxes", observation, history)) is not None:
                history.append(call)
                observation = getattr(env, call.name)(**call.arguments)
                if env.episode.done:
                    break
            assert env.get_reward() == 1.0, observation
            assert env.episode.steps == len(history)
    finally:
        env._close()
