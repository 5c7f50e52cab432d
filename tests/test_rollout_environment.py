"""The TRL environment class against the real service."""

from __future__ import annotations

import inspect

import pytest

from browser_control.env_service.actions import ACTIONS
from browser_control.protocol import DEFAULT_BROWSERGYM_URL, service_url
from browser_control.rollout.environment import BrowserEnvironment, tool_names


def test_every_tool_maps_to_a_whitelisted_action_and_is_documented() -> None:
    tools = [
        name
        for name, fn in inspect.getmembers(BrowserEnvironment, predicate=inspect.isfunction)
        if not name.startswith("_") and name not in ("reset", "get_reward")
    ]
    assert tools, "no tools exposed"
    for name in tools:
        assert name in ACTIONS, f"tool {name} has no whitelisted action"
        doc = inspect.getdoc(getattr(BrowserEnvironment, name)) or ""
        assert "Args:" in doc and "Returns:" in doc, f"{name} needs a Google-style docstring for TRL"


def test_click_test_episode_reaches_reward_one(env_url: str) -> None:
    env = BrowserEnvironment(base_url=env_url, max_episode_steps=5)
    first = env.reset(task_name="click-test", seed=7, prompt=[{"role": "user", "content": "x"}])
    assert "Goal: Click the button." in first and "[13] button 'Click Me!'" in first
    assert env.get_reward() == 0.0
    end = env.click(bid=13)  # an int bid, as a tool-call parser may produce
    assert "task is solved" in end
    assert env.get_reward() == 1.0
    assert "Do not call any more tools" in env.click(bid="13")  # no further env traffic after done
    assert env.episode.steps == 1
    env._close()


def test_invalid_action_text_goes_back_to_the_model_and_counts(env_url: str) -> None:
    env = BrowserEnvironment(base_url=env_url, max_episode_steps=2)
    env.reset(task_name="miniwob.click-test", seed=1)
    reply = env.press(bid="13", key="Enter; rm -rf /")
    assert reply.startswith("Invalid action:") and "key name" in reply
    reply = env.click(bid="13 or 1")
    assert reply.startswith("Invalid action:") and "expects a bid" in reply
    assert env.episode.invalid_actions == 2 and env.episode.truncated
    assert env.get_reward() == 0.0
    env._close()


def test_an_explicit_address_beats_browsergym_url(env_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1: an environment that followed the variable would fail to reset.
    monkeypatch.setenv("BROWSERGYM_URL", "http://127.0.0.1:1")
    env = BrowserEnvironment(base_url=env_url, max_episode_steps=2)
    try:
        assert "Goal:" in env.reset(task_name="click-test", seed=3)
    finally:
        env._close()


def test_service_url_rule_explicit_then_variable_then_default() -> None:
    assert service_url("http://a:1", {"BROWSERGYM_URL": "http://b:2"}) == "http://a:1"
    assert service_url(None, {"BROWSERGYM_URL": "http://b:2"}) == "http://b:2"
    assert service_url(None, {}) == DEFAULT_BROWSERGYM_URL
    assert service_url("", {"BROWSERGYM_URL": ""}) == DEFAULT_BROWSERGYM_URL


def test_the_episode_view_is_read_only(env_url: str) -> None:
    env = BrowserEnvironment(base_url=env_url, max_episode_steps=3)
    try:
        first = env.reset(task_name="click-test", seed=4)
        env.episode.steps = 99  # a copy: changing it cannot change what the environment scores
        env.episode.env_latency_s.append(1e9)
        assert env.episode.steps == 0 and 1e9 not in env.episode.env_latency_s
        env.click(bid="13")
        assert env.episode.steps == 1 and env.first_observation == first and env.goal
        assert [a.action for a in env.answers] == ["click('13')"] and env.service_error is None
    finally:
        env._close()
    # Properties, so TRL (which turns public methods into tools) offers the model none of them.
    assert not {"episode", "goal", "answers", "service_error"} & set(tool_names())
