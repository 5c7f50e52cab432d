"""The TRL environment class against the real service."""

from __future__ import annotations

import inspect

from browser_control.env_service.actions import ACTIONS
from browser_control.rollout.environment import BrowserEnvironment


def test_every_tool_maps_to_a_whitelisted_action_and_is_documented() -> None:
    tools = [
        name for name, fn in inspect.getmembers(BrowserEnvironment, predicate=inspect.isfunction)
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
    assert env._episode.steps == 1
    env._close()


def test_invalid_action_text_goes_back_to_the_model_and_counts(env_url: str) -> None:
    env = BrowserEnvironment(base_url=env_url, max_episode_steps=2)
    env.reset(task_name="miniwob.click-test", seed=1)
    reply = env.press(bid="13", key="Enter; rm -rf /")
    assert reply.startswith("Invalid action:") and "key name" in reply
    reply = env.click(bid="13 or 1")
    assert reply.startswith("Invalid action:") and "expects a bid" in reply
    assert env._episode.invalid_actions == 2 and env._episode.truncated
    assert env.get_reward() == 0.0
    env._close()
