"""BrowserGym's code for an action is made once per distinct action text, and is the same code."""

from __future__ import annotations

import pytest

from browser_control.env_service import browser
from browser_control.env_service.actions import parse_action


def test_the_same_action_text_reuses_the_compiled_code_of_browsergyms_own() -> None:
    action = parse_action("click('13')")
    first = browser._compiled_action(action.canonical())
    assert browser._compiled_action(parse_action("click( '13' )").canonical()) is first
    source, _definitions = browser._action_definitions()
    expected = compile(browser.browsergym_code(action)[len(source) :], "<action>", "exec")
    assert first.co_code == expected.co_code and first.co_consts == expected.co_consts
    assert first.co_names == expected.co_names
    other = browser._compiled_action(parse_action("fill('7', 'hello')").canonical())
    assert other is not first and "hello" in repr(other.co_consts)


def test_an_action_browsergym_refuses_is_refused_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def refuse(canonical: str) -> str:
        calls.append(canonical)
        raise ValueError("refused")

    browser._compiled_action.cache_clear()
    monkeypatch.setattr(browser, "_browsergym_code_for", refuse)
    for _ in range(2):
        with pytest.raises(ValueError, match="refused"):
            browser._compiled_action("click('99')")
    assert calls == ["click('99')", "click('99')"]
    browser._compiled_action.cache_clear()
