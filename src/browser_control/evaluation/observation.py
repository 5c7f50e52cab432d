"""Read back the observation text the model sees: the goal and the accessibility tree as nodes.

Scripted policies look at exactly what a model gets (``rollout.prompts.format_observation`` output, as
returned by :class:`~browser_control.rollout.environment.BrowserEnvironment`), never at the DOM, so a
scripted success proves the observation carries enough information to solve the task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from browser_control.threadsafe_ast import literal_eval

_GOAL_RE = re.compile(r"^Goal: (?P<goal>.*?)\nStep \d+ of \d+\. Last action error: (?P<error>.*?)\nPage:\n", re.DOTALL)
# One flattened axtree line: tabs, an optional "[bid] ", a role, an optional quoted name, then ", key=value" pairs.
_LINE_RE = re.compile(
    r"^(?P<indent>\t*)(?:\[(?P<bid>[^\]\s]+)\] )?(?P<role>\S+)"
    r"(?: (?P<name>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"))?(?P<rest>.*)$"
)
_PROP_RE = re.compile(r", (?P<key>\w+)(?:=(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,]+))?")


@dataclass
class AxNode:
    role: str
    name: str
    bid: str | None
    depth: int
    properties: dict[str, str | bool] = field(default_factory=dict)
    parent: AxNode | None = field(default=None, repr=False)

    def ancestors(self) -> list[AxNode]:
        found, node = [], self.parent
        while node is not None:
            found.append(node)
            node = node.parent
        return found


@dataclass
class PageView:
    goal: str
    last_action_error: str
    nodes: list[AxNode]

    def find(self, role: str | tuple[str, ...], name: str | None = None, *, casefold: bool = False) -> list[AxNode]:
        """Nodes with a bid, of ``role`` and (when given) exactly this ``name``."""
        roles = (role,) if isinstance(role, str) else role

        def same(a: str, b: str) -> bool:
            return a.casefold() == b.casefold() if casefold else a == b

        return [
            n
            for n in self.nodes
            if n.bid is not None and n.role in roles and (name is None or same(n.name.strip(), name))
        ]


def _unquote(text: str) -> str:
    try:
        value = literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip("'\"")
    return value if isinstance(value, str) else str(value)


def parse_axtree(text: str) -> list[AxNode]:
    """Parse ``flatten_axtree_to_str`` output into nodes with parents (indentation gives the tree)."""
    nodes: list[AxNode] = []
    stack: list[AxNode] = []
    for line in text.splitlines():
        match = _LINE_RE.match(line)
        if not match or not line.strip():
            continue
        depth = len(match["indent"])
        properties: dict[str, str | bool] = {}
        for prop in _PROP_RE.finditer(match["rest"] or ""):
            value = prop["value"]
            properties[prop["key"]] = True if value is None else _unquote(value) if value[0] in "'\"" else value
        while stack and stack[-1].depth >= depth:
            stack.pop()
        node = AxNode(
            match["role"],
            _unquote(match["name"]) if match["name"] else "",
            match["bid"],
            depth,
            properties,
            stack[-1] if stack else None,
        )
        nodes.append(node)
        stack.append(node)
    return nodes


def parse_observation(text: str) -> PageView:
    """Split an observation text into goal, last action error and axtree nodes.

    Raises ValueError for text that is not an observation (e.g. the end-of-episode message).
    """
    match = _GOAL_RE.match(text)
    if not match:
        raise ValueError(f"not an observation text: {text[:80]!r}")
    error = match["error"]
    return PageView(match["goal"].strip(), "" if error == "none" else error, parse_axtree(text[match.end() :]))
