"""Scripted policies: hand-written solutions of MiniWoB tasks that read only the observation text.

Each policy sees what a model sees (the goal and the accessibility tree of
:func:`browser_control.rollout.prompts.format_observation`) and answers with a
:class:`~browser_control.evaluation.policy.ToolCall` of a
:class:`~browser_control.rollout.environment.BrowserEnvironment` tool. They serve three purposes:

* a known-good baseline that checks the evaluation harness end to end (``evaluate --policy scripted``);
* proof that a task is solvable from the observation text alone;
* demonstrations for supervised warm-up: every step is a tool call with its arguments and action string.

A policy is a *planner*: from the current page it lists every call that solves the task, and the step
taken is the first call of that plan not yet taken in this episode. Planning from the current page
(rather than replaying a fixed script) keeps each step justified by the observation it answers; a call
the page reports an error for is retried once another way (a click becomes Enter on the element).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from browser_control.evaluation.observation import AxNode, PageView, parse_observation
from browser_control.evaluation.policy import Decision, Episode, Policy, ToolCall
from browser_control.protocol import bare_task_name

Planner = Callable[[PageView], list[ToolCall]]


class ScriptedPolicyError(ValueError):
    """The page or goal does not look like what the scripted policy expects."""


def _goal(page: PageView, pattern: str) -> re.Match[str]:
    match = re.fullmatch(pattern, page.goal)
    if not match:
        raise ScriptedPolicyError(f"unexpected goal {page.goal!r}")
    return match


def _one(page: PageView, role: str | tuple[str, ...], name: str | None = None) -> AxNode:
    nodes = page.find(role, name) or (page.find(role, name, casefold=True) if name else [])
    if not nodes:
        raise ScriptedPolicyError(f"no {role} named {name!r} on the page")
    return nodes[0]


def _click(node: AxNode) -> ToolCall:
    assert node.bid is not None
    return ToolCall("click", {"bid": node.bid})


def _fill(node: AxNode, value: str) -> ToolCall:
    assert node.bid is not None
    return ToolCall("fill", {"bid": node.bid, "value": value})


def _textbox_labelled(page: PageView, label: str) -> AxNode:
    """The text box whose enclosing block also holds the label text (MiniWoB puts both in one <p>)."""
    for box in page.find("textbox"):
        block = box.parent
        if block is not None and any(
            n.role in ("StaticText", "LabelText") and n.name.strip() == label
            for n in page.nodes
            if block in n.ancestors()
        ):
            return box
    raise ScriptedPolicyError(f"no text box labelled {label!r}")


# -- planners, one per task ----------------------------------------------------------------------
def plan_click_test(page: PageView) -> list[ToolCall]:
    _goal(page, r"Click the button\.")
    return [_click(_one(page, "button"))]


def plan_click_test_2(page: PageView) -> list[ToolCall]:
    match = _goal(page, r"Click button (?P<label>\S+)\.")
    return [_click(_one(page, "button", match["label"]))]


def plan_click_button(page: PageView) -> list[ToolCall]:
    match = _goal(page, r'Click on the "(?P<label>.*)" button\.')
    return [_click(_one(page, "button", match["label"]))]


def plan_click_button_sequence(page: PageView) -> list[ToolCall]:
    match = _goal(page, r"Click button (?P<first>\S+), then click button (?P<second>\S+)\.")
    return [_click(_one(page, "button", match["first"])), _click(_one(page, "button", match["second"]))]


def plan_click_dialog(page: PageView) -> list[ToolCall]:
    _goal(page, r'Close the dialog box by clicking the "x"\.')
    return [_click(_one(page, "button", "Close"))]


def plan_click_dialog_2(page: PageView) -> list[ToolCall]:
    match = _goal(page, r'Click the button in the dialog box labeled "(?P<label>.*)"\.')
    # The title-bar "x" of a jQuery UI dialog is a button whose accessible name is "Close".
    label = "Close" if match["label"] == "x" else match["label"]
    return [_click(_one(page, "button", label))]


def plan_click_option(page: PageView) -> list[ToolCall]:
    match = _goal(page, r"Select (?P<option>\S+) and click Submit\.")
    return [_click(_one(page, "radio", match["option"])), _click(_one(page, "button", "Submit"))]


def plan_click_checkboxes(page: PageView) -> list[ToolCall]:
    match = _goal(page, r"Select (?P<names>.*) and click Submit\.")
    names = [] if match["names"] == "nothing" else [n.strip() for n in match["names"].split(",")]
    steps = []
    for name in names:
        box = _one(page, "checkbox", name)
        if box.properties.get("checked") != "true":
            steps.append(_click(box))
    return [*steps, _click(_one(page, "button", "Submit"))]


def plan_click_tab(page: PageView) -> list[ToolCall]:
    match = _goal(page, r"Click on (?P<tab>Tab #\d)\.")
    return [_click(_one(page, "link", match["tab"]))]


def plan_enter_text(page: PageView) -> list[ToolCall]:
    match = _goal(page, r'Enter "(?P<text>.*)" into the text field and press Submit\.')
    return [_fill(_one(page, "textbox"), match["text"]), _click(_one(page, "button", "Submit"))]


def plan_enter_text_2(page: PageView) -> list[ToolCall]:
    match = _goal(
        page,
        r'Type "(?P<text>.*)" in all (?P<case>upper|lower) case letters in the text input '
        r"and press Submit\.",
    )
    text = match["text"].upper() if match["case"] == "upper" else match["text"].lower()
    return [_fill(_one(page, "textbox"), text), _click(_one(page, "button", "Submit"))]


def plan_focus_text(page: PageView) -> list[ToolCall]:
    _goal(page, r"Focus into the textbox\.")
    return [ToolCall("focus", {"bid": _one(page, "textbox").bid})]


_ORDINALS = {"1st": 0, "2nd": 1, "3rd": 2}


def plan_focus_text_2(page: PageView) -> list[ToolCall]:
    match = _goal(page, r"Focus into the (?P<nth>1st|2nd|3rd) input textbox\.")
    boxes = page.find("textbox")
    index = _ORDINALS[match["nth"]]
    if index >= len(boxes):
        raise ScriptedPolicyError(f"the goal asks for the {match['nth']} text box; the page has {len(boxes)}")
    return [ToolCall("focus", {"bid": boxes[index].bid})]


def plan_login_user(page: PageView) -> list[ToolCall]:
    match = _goal(
        page,
        r'Enter the username "(?P<user>.*)" and the password "(?P<password>.*)" into the text '
        r"fields and press login\.",
    )
    return [
        _fill(_textbox_labelled(page, "Username"), match["user"]),
        _fill(_textbox_labelled(page, "Password"), match["password"]),
        _click(_one(page, "button", "Login")),
    ]


def plan_enter_password(page: PageView) -> list[ToolCall]:
    match = _goal(page, r'Enter the password "(?P<password>.*)" into both text fields and press submit\.')
    return [
        _fill(_textbox_labelled(page, "Password"), match["password"]),
        _fill(_textbox_labelled(page, "Verify password"), match["password"]),
        _click(_one(page, "button", "Submit")),
    ]


def plan_choose_list(page: PageView) -> list[ToolCall]:
    match = _goal(page, r"Select (?P<item>.*) from the list and click Submit\.")
    combo = _one(page, "combobox")
    return [
        ToolCall("select_option", {"bid": combo.bid, "option": match["item"]}),
        _click(_one(page, "button", "Submit")),
    ]


SCRIPTED_TASKS: dict[str, Planner] = {
    "click-test": plan_click_test,
    "click-test-2": plan_click_test_2,
    "click-button": plan_click_button,
    "click-button-sequence": plan_click_button_sequence,
    "click-dialog": plan_click_dialog,
    "click-dialog-2": plan_click_dialog_2,
    "click-option": plan_click_option,
    "click-checkboxes": plan_click_checkboxes,
    "click-tab": plan_click_tab,
    "enter-text": plan_enter_text,
    "enter-text-2": plan_enter_text_2,
    "focus-text": plan_focus_text,
    "focus-text-2": plan_focus_text_2,
    "login-user": plan_login_user,
    "enter-password": plan_enter_password,
    "choose-list": plan_choose_list,
}


def scripted_step(task_name: str, observation: str, history: Sequence[ToolCall] = ()) -> ToolCall | None:
    """The next call of the scripted policy for ``task_name``, or None when its plan is complete.

    ``observation`` is the text a tool (or ``reset``) returned; ``history`` the calls already taken in
    this episode. Raises KeyError for a task without a policy and ScriptedPolicyError for a page the
    policy does not understand.
    """
    planner = SCRIPTED_TASKS[bare_task_name(task_name)]
    try:
        page = parse_observation(observation)
    except ValueError as exc:
        raise ScriptedPolicyError(str(exc)) from None
    taken = list(history)
    # A call the page reported an error for is not done: try it another way once. (MiniWoB places some
    # buttons on top of each other; Playwright's click then times out on the covered one.)
    failed = taken.pop() if page.last_action_error and taken else None
    for call in planner(page):
        if call in taken:
            continue
        if call == failed:
            alternative = _fallback(call)
            if alternative is None or alternative in history:
                continue
            return alternative
        return call
    return None


def _fallback(call: ToolCall) -> ToolCall | None:
    """Another way to the same effect: Enter on a focused button or link fires its click handler."""
    if call.name == "click":
        return ToolCall("press", {"bid": call.arguments["bid"], "key": "Enter"})
    return None


class ScriptedPolicy(Policy):
    """The scripted planners as an evaluation policy (a known-good baseline for the harness)."""

    kind = "scripted"

    def __init__(self, label: str = "scripted") -> None:
        self.label = label

    def decide(self, episodes: Sequence[Episode]) -> list[Decision]:
        decisions = []
        for episode in episodes:
            try:
                call = scripted_step(episode.task_name, episode.observation, episode.calls)
            except ScriptedPolicyError as exc:
                decisions.append(Decision([], stop_reason=f"scripted policy gave up: {exc}"))
                continue
            # A finished plan on a page that is not solved means the policy has nothing left to try.
            decisions.append(Decision([call]) if call else Decision([], stop_reason="scripted plan finished"))
        return decisions
