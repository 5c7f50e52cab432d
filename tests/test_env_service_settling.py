"""Observations are taken after the page has settled, and match BrowserGym's own environment.

Widgets of MiniWoB's jQuery UI pages appear a little after the event that opens them (the autocomplete
list 300 ms after typing, submenus after a click). The service waits for the page's pending work before
it reads the page, so they must be in the very next observation, every element with a bid. The last test
plays the same actions in BrowserGym's BrowserEnv (``gym.make("browsergym/miniwob.<task>")``, default
timing: slow_mo and a 0.5 s sleep before each observation) and compares the trees after every step.
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser]

# A line of the tree that stands for an element (not text, not a list bullet) must start with its bid.
_TEXT_LINE = re.compile(r"^\t*(StaticText |ListMarker |image ''$|RootWebArea )")


def _unmarked_lines(tree: str) -> list[str]:
    return [
        line
        for line in tree.splitlines()
        if line.strip() and not re.match(r"^\t*\[\w+\] ", line) and not _TEXT_LINE.match(line)
    ]


def _reset(http: httpx.Client, task: str, seed: int, session_id: str | None = None) -> dict:
    r = http.post("/reset", json={"task_name": task, "seed": seed, "session_id": session_id})
    assert r.status_code == 200, r.text
    return r.json()


def _step(http: httpx.Client, session_id: str, action: str) -> dict:
    r = http.post("/step", json={"session_id": session_id, "action": action})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["observation"]["last_action_error"] == "", (action, body["observation"])
    return body


def _textbox(tree: str, name: str | None = None) -> str:
    pattern = r"\[(\w+)\] (?:textbox|combobox) '" + (re.escape(name) if name else r"[^']*") + "'"
    match = re.search(pattern, tree)
    assert match, f"no textbox {name!r} in\n{tree}"
    return match.group(1)


def _autocomplete_prefix(goal: str) -> str:
    match = re.search(r'starts with "([^"]+)"', goal)
    assert match, goal
    return match.group(1)


def autocomplete_actions(goal: str, tree: str) -> list[str]:
    return [f"fill('{_textbox(tree)}', {_autocomplete_prefix(goal)!r})"]


def menu_actions(goal: str, tree: str) -> list[str]:
    top = goal.removeprefix("Select ").split(">")[0]
    match = re.search(rf"\[(\w+)\] menuitem '{re.escape(top)}'", tree)
    assert match, f"no menu item {top!r} in\n{tree}"
    return [f"click('{match.group(1)}')"]


def book_flight_actions(goal: str, tree: str) -> list[str]:
    return [f"fill('{_textbox(tree, 'From:')}', {_flight_origin(goal)[:3]!r})"]


def _flight_origin(goal: str) -> str:
    match = re.search(r"from: (.+?) to:", goal)
    assert match, goal
    return match.group(1)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_autocomplete_suggestions_have_bids_right_after_fill(env_url: str, seed: int) -> None:
    with httpx.Client(base_url=env_url, timeout=60) as http:
        reset = _reset(http, "use-autocomplete", seed)
        obs = reset["observation"]
        prefix = _autocomplete_prefix(obs["goal"])
        (action,) = autocomplete_actions(obs["goal"], obs["axtree_txt"])
        tree = _step(http, reset["session_id"], action)["observation"]["axtree_txt"]
        http.post("/close", json={"session_id": reset["session_id"]})
    suggestions = re.findall(r"\[(\w+)\] listitem ''\n\t+ListMarker ''\n\t+image ''\n\t+StaticText '([^']*)'", tree)
    assert suggestions, f"no suggestion list after {action} (seed {seed}):\n{tree}"
    assert all(text.lower().startswith(prefix.lower()) for _bid, text in suggestions), suggestions
    assert _unmarked_lines(tree) == [], tree


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [0, 2, 3, 4, 5, 6])
def test_click_menu_shows_the_submenu_after_the_click(env_url: str, seed: int) -> None:
    with httpx.Client(base_url=env_url, timeout=60) as http:
        reset = _reset(http, "click-menu", seed)
        obs = reset["observation"]
        path = obs["goal"].removeprefix("Select ").split(">")
        (action,) = menu_actions(obs["goal"], obs["axtree_txt"])
        tree = _step(http, reset["session_id"], action)["observation"]["axtree_txt"]
        http.post("/close", json={"session_id": reset["session_id"]})
    if len(path) > 1:
        assert re.search(rf"\[\w+\] menuitem '{re.escape(path[1])}'", tree), f"no submenu after {action}:\n{tree}"
    assert _unmarked_lines(tree) == [], tree


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [0, 1])
def test_book_flight_autocomplete_appears_after_fill(env_url: str, seed: int) -> None:
    with httpx.Client(base_url=env_url, timeout=60) as http:
        reset = _reset(http, "book-flight", seed)
        obs = reset["observation"]
        (action,) = book_flight_actions(obs["goal"], obs["axtree_txt"])
        tree = _step(http, reset["session_id"], action)["observation"]["axtree_txt"]
        http.post("/close", json={"session_id": reset["session_id"]})
    city = _flight_origin(obs["goal"])
    assert re.search(rf"\[\w+\] listitem ''\n(\t+.*\n)*?\t+StaticText '[^']*{re.escape(city[:3])}", tree, re.I), (
        f"no suggestion for {city!r} after {action}:\n{tree}"
    )
    assert _unmarked_lines(tree) == [], tree


# -- the same episodes in BrowserGym's own environment -------------------------------------------------

ScriptFn = Callable[[str, str], list[str]]
REFERENCE_EPISODES: list[tuple[str, int, ScriptFn]] = [
    ("use-autocomplete", 0, autocomplete_actions),
    ("use-autocomplete", 1, autocomplete_actions),
    ("click-menu", 0, menu_actions),
    ("click-menu", 2, menu_actions),
    ("book-flight", 0, book_flight_actions),
]


class ReferenceEnv:
    """BrowserGym's BrowserEnv, driven on a thread of its own.

    BrowserGym keeps one module-global sync Playwright, bound to the thread that starts it and leaving an
    event loop installed there; on the main thread it would break later tests that call asyncio.run().
    """

    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor, env: Any):
        self._pool, self._env = pool, env

    def reset(self, seed: int) -> tuple[dict, dict]:
        return self._pool.submit(self._env.reset, seed=seed).result(timeout=300)

    def step(self, action: str) -> tuple:
        return self._pool.submit(self._env.step, action).result(timeout=300)


@pytest.fixture(scope="module")
def browsergym_env_factory(chromium: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable]:
    """BrowserGym's BrowserEnv with default timing, on the same Chromium as the service."""
    import gymnasium as gym

    from browser_control.env_service.tasks import miniwob_base_url

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="browsergym-reference")
    saved = {k: os.environ.get(k) for k in ("MINIWOB_URL", "PLAYWRIGHT_BROWSERS_PATH")}
    os.environ["MINIWOB_URL"] = miniwob_base_url()
    if chromium:
        # BrowserEnv's chat window launches Playwright's own Chromium whatever the env is given: point
        # Playwright's browser folder at the same binary.
        def playwright_layout() -> Path:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                return Path(pw.chromium.executable_path)

        layout = pool.submit(playwright_layout).result(timeout=120)
        browsers = tmp_path_factory.mktemp("pw-browsers")
        relative = layout.relative_to(layout.parents[2])  # chromium-NNNN/chrome-linux/chrome
        target = browsers / relative
        target.parent.mkdir(parents=True)
        target.symlink_to(chromium)
        os.environ["PLAYWRIGHT_BROWSERS_PATH"] = str(browsers)
    import browsergym.miniwob  # noqa: F401 - registers the tasks

    envs = []

    def make(task: str) -> ReferenceEnv:
        kwargs = {"pw_chromium_kwargs": {"executable_path": chromium}} if chromium else {}
        env = pool.submit(gym.make, f"browsergym/miniwob.{task}", **kwargs).result(timeout=120)
        envs.append(env)
        return ReferenceEnv(pool, env)

    def shut_down() -> None:
        import browsergym.core

        for env in envs:
            env.close()
        if browsergym.core._PLAYWRIGHT is not None:
            browsergym.core._PLAYWRIGHT.stop()
            browsergym.core._set_global_playwright(None)

    try:
        yield make
    finally:
        pool.submit(shut_down).result(timeout=120)
        pool.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _browsergym_tree(obs: dict) -> str:
    """BrowserGym's observation as text, with the service's flattening settings."""
    from browsergym.utils.obs import flatten_axtree_to_str

    from browser_control.env_service.browser import (
        AXTREE_IGNORED_PROPERTIES,
        AXTREE_IGNORED_ROLES,
        _mark_clickable_generics,
    )

    axtree = copy.deepcopy(obs["axtree_object"])
    clickable = {bid for bid, props in obs["extra_element_properties"].items() if props["clickable"]}
    _mark_clickable_generics(axtree, clickable)
    return flatten_axtree_to_str(
        axtree, ignored_roles=AXTREE_IGNORED_ROLES, ignored_properties=AXTREE_IGNORED_PROPERTIES
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("task", "seed", "script"), REFERENCE_EPISODES, ids=lambda v: getattr(v, "__name__", v))
def test_trees_match_browsergym_after_every_step(
    env_url: str, browsergym_env_factory: Callable, task: str, seed: int, script: ScriptFn
) -> None:
    env = browsergym_env_factory(task)
    with httpx.Client(base_url=env_url, timeout=60) as http:
        for _attempt in range(3):
            if _play_both(http, env, task, seed, script):
                return
    pytest.fail("BrowserGym's own actions timed out in 3 attempts (its 500 ms action budget on a loaded machine)")


def _play_both(http: httpx.Client, env: ReferenceEnv, task: str, seed: int, script: ScriptFn) -> bool:
    """Play the episode in both; False when BrowserGym's action ran out of its fixed 500 ms budget."""
    reference, _info = env.reset(seed=seed)
    reset = _reset(http, task, seed)
    try:
        ours = reset["observation"]
        assert ours["goal"] == reference["goal"]
        assert ours["axtree_txt"] == _browsergym_tree(reference), "trees differ at reset"
        for action in script(ours["goal"], ours["axtree_txt"]):
            reference, _reward, _done, _trunc, _info = env.step(action)
            if reference["last_action_error"].startswith("TimeoutError"):
                return False
            assert reference["last_action_error"] == "", reference["last_action_error"]
            ours = _step(http, reset["session_id"], action)["observation"]
            assert ours["axtree_txt"] == _browsergym_tree(reference), f"trees differ after {action}"
    finally:
        http.post("/close", json={"session_id": reset["session_id"]})
    return True


@pytest.mark.timeout(120)
def test_an_element_added_after_marking_is_marked_again(chromium: str | None, monkeypatch) -> None:
    """A page timer that fires between marking and reading the tree must not leave an element without a bid."""
    from browser_control.env_service.browser import BrowserOptions, BrowserSession, BrowserWorker
    from browser_control.env_service.tasks import miniwob_base_url, task_classes

    original = BrowserSession._settle_and_mark
    injected = []

    def mark_then_add_an_element(self: BrowserSession, wait: bool = True) -> None:
        original(self, wait)
        if not injected and self.steps == 0 and self._marked is not None:
            injected.append(True)
            self._page.evaluate(
                "() => { const b = document.createElement('button'); b.textContent = 'Late';"
                " document.body.appendChild(b); }"
            )

    monkeypatch.setattr(BrowserSession, "_settle_and_mark", mark_then_add_an_element)
    worker = BrowserWorker(0, BrowserOptions(chromium_executable=chromium))
    try:
        session = BrowserSession("late-element", worker)
        observation = worker.submit(
            lambda: session.reset(task_classes()["click-test"], "click-test", 0, miniwob_base_url(), None)
        ).result(timeout=60)
        worker.submit(session.close).result(timeout=30)
    finally:
        worker.stop()
    assert injected
    assert re.search(r"\[\w+\] button 'Late'", observation["axtree_txt"]), observation["axtree_txt"]
    assert _unmarked_lines(observation["axtree_txt"]) == [], observation["axtree_txt"]
