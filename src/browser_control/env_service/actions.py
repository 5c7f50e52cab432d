"""Action whitelist: the only gate between model text and BrowserGym's exec().

BrowserGym turns an action string into Python source and exec()s it with the Playwright page in
scope; it is not a sandbox. Every action is therefore parsed here with :mod:`ast` (never evaluated),
must be exactly one call of a whitelisted function whose arguments are literals of the expected type
and size, and is re-serialised from the parsed values into a canonical string. Only that canonical
string ever reaches BrowserGym.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

from browser_control.threadsafe_ast import parse_expression

MAX_ACTION_CHARS = 2_000
MAX_TEXT_CHARS = 1_000
MAX_OPTIONS = 20
MAX_WAIT_MS = 5_000
MAX_SCROLL_PX = 10_000
MAX_COORD_PX = 4_000

_BID_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")
# Playwright key names ("Enter", "ArrowDown", "Control+a", "Shift+Tab", "a").
_KEY_RE = re.compile(r"^[A-Za-z0-9 +_\-]{1,64}$|^[^\s]$")
_BUTTONS = ("left", "middle", "right")
_MODIFIERS = ("Alt", "Control", "ControlOrMeta", "Meta", "Shift")


class ActionError(ValueError):
    """The action was refused; the message says what a valid action looks like."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "bid" | "text" | "key" | "number" | "bool" | "button" | "modifiers" | "options"
    required: bool = True
    default: Any = None
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class ActionSpec:
    name: str
    params: tuple[Param, ...]
    example: str
    doc: str

    def usage(self) -> str:
        parts = []
        for p in self.params:
            parts.append(p.name if p.required else f"{p.name}={p.default!r}")
        return f"{self.name}({', '.join(parts)})"


def _bid(name: str = "bid") -> Param:
    return Param(name, "bid")


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            "click",
            (_bid(), Param("button", "button", False, "left"), Param("modifiers", "modifiers", False, [])),
            "click('13')",
            "Click the element with this bid.",
        ),
        ActionSpec(
            "dblclick",
            (_bid(), Param("button", "button", False, "left"), Param("modifiers", "modifiers", False, [])),
            "dblclick('13')",
            "Double-click the element with this bid.",
        ),
        ActionSpec("hover", (_bid(),), "hover('13')", "Move the mouse over the element."),
        ActionSpec(
            "fill",
            (_bid(), Param("value", "text")),
            "fill('14', 'hello')",
            "Replace the text of an input field.",
        ),
        ActionSpec(
            "select_option",
            (_bid(), Param("options", "options")),
            "select_option('15', 'Red')",
            "Choose option(s) of a <select> element by label.",
        ),
        ActionSpec(
            "press",
            (_bid(), Param("key_comb", "key")),
            "press('14', 'Enter')",
            "Focus the element and press a key combination.",
        ),
        ActionSpec("focus", (_bid(),), "focus('14')", "Focus the element."),
        ActionSpec("clear", (_bid(),), "clear('14')", "Clear an input field."),
        ActionSpec(
            "check",
            (_bid(),),
            "check('16')",
            "Tick a checkbox or radio button.",
        ),
        ActionSpec("uncheck", (_bid(),), "uncheck('16')", "Untick a checkbox."),
        ActionSpec(
            "drag_and_drop",
            (_bid("from_bid"), _bid("to_bid")),
            "drag_and_drop('20', '21')",
            "Drag one element onto another.",
        ),
        ActionSpec(
            "scroll",
            (
                Param("delta_x", "number", bounds=(-MAX_SCROLL_PX, MAX_SCROLL_PX)),
                Param("delta_y", "number", bounds=(-MAX_SCROLL_PX, MAX_SCROLL_PX)),
            ),
            "scroll(0, 200)",
            "Scroll the page by pixels.",
        ),
        ActionSpec(
            "mouse_click",
            (
                Param("x", "number", bounds=(0, MAX_COORD_PX)),
                Param("y", "number", bounds=(0, MAX_COORD_PX)),
                Param("button", "button", False, "left"),
            ),
            "mouse_click(50, 80)",
            "Click at page coordinates (canvas tasks).",
        ),
        ActionSpec(
            "keyboard_press",
            (Param("key", "key"),),
            "keyboard_press('Enter')",
            "Press a key combination on the focused element.",
        ),
        ActionSpec(
            "keyboard_type",
            (Param("text", "text"),),
            "keyboard_type('hello')",
            "Type text into the focused element.",
        ),
        ActionSpec(
            "noop",
            (Param("wait_ms", "number", False, 1000, bounds=(0, MAX_WAIT_MS)),),
            "noop()",
            "Do nothing and wait (milliseconds).",
        ),
        ActionSpec(
            "send_msg_to_user",
            (Param("text", "text"),),
            "send_msg_to_user('The answer is 42.')",
            "Send a message to the user (tasks that ask for an answer in chat).",
        ),
    )
}


@dataclass(frozen=True)
class ParsedAction:
    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]

    def canonical(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


def describe_actions() -> str:
    """One line per allowed action, for error messages, prompts and docs."""
    return "\n".join(f"{s.usage()}: {s.doc} e.g. {s.example}" for s in ACTIONS.values())


def _literal(node: ast.expr, where: str) -> Any:
    """Accept only plain literals: str, int, float, bool, negative numbers and lists of str."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.List | ast.Tuple):
        if len(node.elts) > MAX_OPTIONS:
            raise ActionError(f"{where}: at most {MAX_OPTIONS} list items are allowed")
        return [_literal(e, where) for e in node.elts]
    kind = type(node).__name__
    raise ActionError(f"{where} must be a literal value (a quoted string or a number), not {kind}")


def _coerce(spec: ActionSpec, param: Param, value: Any) -> Any:
    where = f"{spec.name}: argument '{param.name}'"
    if param.kind == "bid":
        if isinstance(value, bool):
            raise ActionError(f"{where} expects a bid like {spec.example}")
        if isinstance(value, int) and value >= 0:
            value = str(value)  # click(13) -> click('13'): bids are strings in BrowserGym
        if not isinstance(value, str) or not _BID_RE.match(value):
            raise ActionError(f"{spec.name} expects a bid like {spec.example}, got {value!r:.60}")
        return value
    if param.kind == "text":
        if not isinstance(value, str):
            raise ActionError(f"{where} must be a quoted string, e.g. {spec.example}")
        if len(value) > MAX_TEXT_CHARS:
            raise ActionError(f"{where} is longer than {MAX_TEXT_CHARS} characters")
        return value
    if param.kind == "key":
        if not isinstance(value, str) or not _KEY_RE.match(value):
            raise ActionError(f"{where} must be a key name like 'Enter' or 'Control+a', got {value!r:.60}")
        return value
    if param.kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ActionError(f"{where} must be a number, e.g. {spec.example}")
        lo, hi = param.bounds or (-math.inf, math.inf)
        if not lo <= value <= hi:
            raise ActionError(f"{where} must be between {lo:g} and {hi:g}")
        return value
    if param.kind == "button":
        if value not in _BUTTONS:
            raise ActionError(f"{where} must be one of {', '.join(_BUTTONS)}")
        return value
    if param.kind == "modifiers":
        if not isinstance(value, list) or any(m not in _MODIFIERS for m in value):
            raise ActionError(f"{where} must be a list drawn from {', '.join(_MODIFIERS)}")
        return value
    if param.kind == "options":
        items = value if isinstance(value, list) else [value]
        if not items or any(not isinstance(o, str) or len(o) > MAX_TEXT_CHARS for o in items):
            raise ActionError(f"{where} must be a string or a list of strings, e.g. {spec.example}")
        return value
    raise AssertionError(f"unknown parameter kind {param.kind}")  # pragma: no cover


def parse_action(text: str) -> ParsedAction:
    """Parse, validate and normalise one action. Raises :class:`ActionError` with a fix-it message."""
    if not isinstance(text, str):
        raise ActionError("the action must be a string such as click('13')")
    text = text.strip()
    if not text:
        raise ActionError("empty action; expected one call such as click('13')")
    if len(text) > MAX_ACTION_CHARS:
        raise ActionError(f"the action is longer than {MAX_ACTION_CHARS} characters")
    try:
        tree = parse_expression(text)
    except SyntaxError:
        raise ActionError(f"could not parse {text[:80]!r}; write exactly one call such as click('13')") from None
    call = tree.body
    if not isinstance(call, ast.Call):
        raise ActionError("the action must be a single function call such as click('13')")
    if not isinstance(call.func, ast.Name):
        raise ActionError("only plain action names are allowed, e.g. click('13') (no attributes)")
    spec = ACTIONS.get(call.func.id)
    if spec is None:
        allowed = ", ".join(ACTIONS)
        raise ActionError(f"unknown action '{call.func.id:.40}'; allowed actions: {allowed}")

    if len(call.args) > len(spec.params):
        raise ActionError(f"{spec.name} takes at most {len(spec.params)} arguments: {spec.usage()}")
    values: dict[str, Any] = {}
    for param, node in zip(spec.params, call.args, strict=False):
        values[param.name] = _literal(node, f"{spec.name}: argument '{param.name}'")
    names = {p.name: p for p in spec.params}
    for kw in call.keywords:
        if kw.arg is None:
            raise ActionError(f"{spec.name}: **kwargs are not allowed")
        if kw.arg not in names:
            raise ActionError(f"{spec.name} has no argument '{kw.arg:.40}': {spec.usage()}")
        if kw.arg in values:
            raise ActionError(f"{spec.name}: argument '{kw.arg}' given twice")
        values[kw.arg] = _literal(kw.value, f"{spec.name}: argument '{kw.arg}'")

    args: list[Any] = []
    kwargs: list[tuple[str, Any]] = []
    for param in spec.params:
        if param.name not in values:
            if param.required:
                raise ActionError(f"{spec.name} is missing '{param.name}': e.g. {spec.example}")
            continue
        value = _coerce(spec, param, values[param.name])
        if param.required:
            args.append(value)
        else:
            kwargs.append((param.name, value))
    return ParsedAction(spec.name, tuple(args), tuple(kwargs))
