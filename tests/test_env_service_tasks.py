"""Task semantics survive the service's speed-ups: scripted solutions reach reward 1.0 through HTTP.

The service drops BrowserGym's slow_mo, its 0.5 s pre-observation sleep and its per-reset browser
relaunch. If any of that changed what a task rewards, these solutions (written from the goal and the
accessibility tree only, as a model would) would stop scoring.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

Solver = Callable[[str, str], list[str]]


def _bid(tree: str, role: str, name: str) -> str:
    match = re.search(rf"\[(\w+)\] {role} '{re.escape(name)}'", tree)
    assert match, f"no {role} {name!r} in\n{tree}"
    return match.group(1)


def _bids(tree: str, role: str) -> list[str]:
    return re.findall(rf"\[(\w+)\] {role} ", tree)


def _quoted(goal: str) -> list[str]:
    return re.findall(r'"([^"]*)"', goal)


def solve_click_test(goal: str, tree: str) -> list[str]:
    return [f"click('{_bid(tree, 'button', 'Click Me!')}')"]


def solve_click_button(goal: str, tree: str) -> list[str]:
    return [f"click('{_bid(tree, 'button', _quoted(goal)[0])}')"]


def solve_enter_text(goal: str, tree: str) -> list[str]:
    box = _bids(tree, "textbox")[0]
    return [f"fill('{box}', {_quoted(goal)[0]!r})", f"click('{_bid(tree, 'button', 'Submit')}')"]


def solve_focus_text(goal: str, tree: str) -> list[str]:
    return [f"click('{_bids(tree, 'textbox')[0]}')"]


def solve_click_checkboxes(goal: str, tree: str) -> list[str]:
    wanted = re.match(r"Select (.*) and click Submit\.", goal)
    assert wanted, goal
    names = [] if wanted.group(1) == "nothing" else [n.strip() for n in wanted.group(1).split(",")]
    return [f"click('{_bid(tree, 'checkbox', n)}')" for n in names] + [f"click('{_bid(tree, 'button', 'Submit')}')"]


def solve_login_user(goal: str, tree: str) -> list[str]:
    user, password = _quoted(goal)
    username_box, password_box = _bids(tree, "textbox")[:2]
    return [
        f"fill('{username_box}', {user!r})",
        f"fill('{password_box}', {password!r})",
        f"click('{_bid(tree, 'button', 'Login')}')",
    ]


def solve_click_link(goal: str, tree: str) -> list[str]:
    # Links are <span>s: the service keeps their bid by marking them clickable.
    text = _quoted(goal)[0]
    match = re.search(rf"\[(\w+)\] generic, clickable=True\n\t+StaticText '{re.escape(text)}'", tree)
    assert match, f"no clickable link {text!r} in\n{tree}"
    return [f"click('{match.group(1)}')"]


SOLVERS: dict[str, Solver] = {
    "click-link": solve_click_link,
    "click-test": solve_click_test,
    "click-button": solve_click_button,
    "enter-text": solve_enter_text,
    "focus-text": solve_focus_text,
    "click-checkboxes": solve_click_checkboxes,
    "login-user": solve_login_user,
}


@pytest.mark.parametrize("task", sorted(SOLVERS))
def test_scripted_solution_scores_one_through_the_service(env_url: str, task: str) -> None:
    with httpx.Client(base_url=env_url, timeout=60) as http:
        session_id = None
        for seed in range(4):
            reset = http.post("/reset", json={"task_name": task, "seed": seed, "session_id": session_id})
            assert reset.status_code == 200, reset.text
            body = reset.json()
            session_id = body["session_id"]
            obs = body["observation"]
            actions = SOLVERS[task](obs["goal"], obs["axtree_txt"])
            for i, action in enumerate(actions):
                step = http.post("/step", json={"session_id": session_id, "action": action}).json()
                assert step["observation"]["last_action_error"] == "", (action, step["observation"])
                last = i == len(actions) - 1
                assert step["done"] is last, (task, seed, action, step)
            assert step["reward"] == 1.0, (task, seed, obs["goal"], actions)
        http.post("/close", json={"session_id": session_id})
