"""The action whitelist: what may reach BrowserGym's exec() and what may not."""

from __future__ import annotations

import pytest

from browser_control.env_service.actions import ACTIONS, ActionError, parse_action


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("click('13')", "click('13')"),
        ("click(13)", "click('13')"),  # int bids are normalised: the reference model wrote these
        ('click("a51", button="right")', "click('a51', button='right')"),
        ("  fill('14', 'it\\'s \"quoted\"')  ", "fill('14', 'it\\'s \"quoted\"')"),
        ("fill(bid='14', value='x')", "fill('14', 'x')"),
        ("press('14', 'Control+a')", "press('14', 'Control+a')"),
        ("select_option('7', ['a', 'b'])", "select_option('7', ['a', 'b'])"),
        ("scroll(0, -200.5)", "scroll(0, -200.5)"),
        ("noop()", "noop()"),
        ("noop(wait_ms=250)", "noop(wait_ms=250)"),
        ("mouse_click(10, 20)", "mouse_click(10, 20)"),
        ("keyboard_type('hello\\nworld')", "keyboard_type('hello\\nworld')"),
        ("drag_and_drop(3, '4')", "drag_and_drop('3', '4')"),
    ],
)
def test_valid_actions_are_normalised(text: str, canonical: str) -> None:
    assert parse_action(text).canonical() == canonical


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty action"),
        ("click", "single function call"),
        ("click('13'); click('14')", "could not parse"),
        ("click('13')\nclick('14')", "could not parse"),
        ("__import__('os').system('id')", "plain action names"),
        ("os.system('id')", "plain action names"),
        ("eval('1')", "unknown action"),
        ("exec('import os')", "unknown action"),
        ("goto('file:///etc/passwd')", "unknown action"),
        ("page.evaluate('1')", "plain action names"),
        ("click(open('/etc/passwd').read())", "must be a literal"),
        ("click(bid)", "must be a literal"),
        ("click(f'{1}')", "must be a literal"),
        ("click('1' + '3')", "must be a literal"),
        ("click(lambda: 1)", "must be a literal"),
        ("click([x for x in 'ab'])", "must be a literal"),
        ("click(**{'bid': '13'})", "**kwargs"),
        ("click('13', evil='x')", "no argument 'evil'"),
        ("click('13', bid='14')", "given twice"),
        ("click()", "missing 'bid'"),
        ("click('13', 'left', [], 'extra')", "at most 3 arguments"),
        ("click(\"13') or __import__('os').system('id') or ('\")", "expects a bid"),
        ("click(-1)", "expects a bid"),
        ("click(True)", "expects a bid"),
        ("click('13', button='fourth')", "must be one of"),
        ("click('13', modifiers=['Hyper'])", "must be a list drawn from"),
        ("fill('14', 42)", "quoted string"),
        ("fill('14', '" + "x" * 1001 + "')", "longer than 1000"),
        ("fill('14', '" + "x" * 3000 + "')", "longer than 2000"),
        ("press('14', 'Enter; rm -rf /')", "key name"),
        ("noop(10**9)", "must be a literal"),
        ("noop(1e12)", "between"),
        ("scroll(float('nan'), 0)", "must be a literal"),
        ("select_option('7', [" + ", ".join(["'a'"] * 21) + "])", "at most 20"),
        ("click('13')  # comment", None),
    ],
)
def test_malicious_or_malformed_actions_are_refused(text: str, fragment: str | None) -> None:
    if fragment is None:  # comments are harmless and dropped by ast
        assert parse_action(text).canonical() == "click('13')"
        return
    with pytest.raises(ActionError, match=fragment.replace("(", r"\(").replace("*", r"\*")):
        parse_action(text)


def test_every_whitelisted_action_exists_in_browsergym_and_has_a_valid_example() -> None:
    from browsergym.core.action import functions

    for name, spec in ACTIONS.items():
        assert callable(getattr(functions, name)), name
        assert parse_action(spec.example).name == name


def test_browsergym_parses_our_canonical_form_back_to_the_same_call() -> None:
    """Our re-serialised text must mean the same thing to BrowserGym's own parser (no smuggling)."""
    from browser_control.env_service.browser import browsergym_action_set

    action_set = browsergym_action_set()
    for text in ("fill('14', 'a\\'); import os; (\\'')", "click('13', button='right')", "keyboard_type('\\x00\\n\\t')"):
        parsed = parse_action(text)
        code = action_set.to_python_code(parsed.canonical())
        assert code.rstrip().splitlines()[-1] == parsed.canonical()


def test_browsergym_action_set_refuses_anything_outside_the_whitelist() -> None:
    from browser_control.env_service.browser import browsergym_action_set

    with pytest.raises(NameError):
        browsergym_action_set().to_python_code("goto('http://example.com')")
