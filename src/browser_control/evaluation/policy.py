"""What the evaluation harness runs: a policy decides tool calls for a batch of live episodes.

A tool call names one :class:`~browser_control.rollout.environment.BrowserEnvironment` tool with its
keyword arguments, exactly what TRL's tool loop calls during training, so model decisions, scripted
decisions and recorded demonstrations are interchangeable.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from browser_control.rollout.environment import BrowserEnvironment, tool_names
from browser_control.rollout.episode import action_text


@dataclass
class ToolCall:
    """One tool call: ``click(bid='13')`` is ``ToolCall('click', {'bid': '13'})``."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def action(self) -> str:
        """The action string the tool sends to the service, e.g. ``click('13')``.

        Raises ValueError when the call does not fit the tool's signature (what the tool would raise).
        """
        method = getattr(BrowserEnvironment, self.name, None)
        if self.name not in tool_names() or method is None:
            raise ValueError(f"unknown tool {self.name!r}")
        params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
        unknown = set(self.arguments) - {p.name for p in params}
        missing = [p.name for p in params if p.name not in self.arguments]
        if unknown or missing:
            raise ValueError(f"{self.name} takes {', '.join(p.name for p in params)}; got {sorted(self.arguments)}")
        return action_text(self.name, *(self.arguments[p.name] for p in params))

    def as_message_call(self) -> dict[str, Any]:
        """The ``tool_calls`` entry of an assistant message (the shape TRL's response parser returns)."""
        return {"type": "function", "function": {"name": self.name, "arguments": dict(self.arguments)}}


@dataclass
class Decision:
    """A policy's answer for one episode turn: the calls to run, or none (the episode ends)."""

    calls: list[ToolCall]
    assistant_message: dict[str, Any] | None = None  # what goes into the transcript; built from calls if None
    # Why there is no call when the policy did not simply stop: "context_limit", or a scripted policy's reason.
    stop_reason: str | None = None
    # The model's generated text as decoded, special tokens included, for recordings; None for scripted policies.
    raw_output: str | None = None

    def message(self) -> dict[str, Any]:
        if self.assistant_message is not None:
            return self.assistant_message
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if self.calls:
            message["tool_calls"] = [c.as_message_call() for c in self.calls]
        return message


@dataclass
class Episode:
    """One live episode as the harness and the policy see it."""

    task_name: str
    seed: int
    index: int
    env: BrowserEnvironment
    messages: list[dict[str, Any]]
    observation: str
    calls: list[ToolCall] = field(default_factory=list)
    tool_failures: int = 0
    # (raw output, calls) of every turn, for the episode's recording.
    turns: list[tuple[str | None, list[ToolCall]]] = field(default_factory=list)
    # Private to the policy (token ids for a model); the harness never reads it.
    state: dict[str, Any] = field(default_factory=dict)


class Policy(ABC):
    """Decides tool calls for every live episode at once (one batched generation per turn for a model)."""

    #: Name of the policy in reports and charts, e.g. a model path.
    label: str = "policy"
    #: "model" or "scripted", recorded in reports.
    kind: str = "policy"

    def start(self, episode: Episode) -> None:  # noqa: B027 - optional hook
        """Called once the episode's first observation is in ``episode.messages``."""

    @abstractmethod
    def decide(self, episodes: Sequence[Episode]) -> list[Decision]:
        """One decision per episode, in order."""

    def observe(self, episode: Episode, decision: Decision, tool_messages: list[dict[str, Any]]) -> None:  # noqa: B027
        """Called after the decision's calls ran, when the episode goes on; ``tool_messages`` are the results."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the policy holds (a model, a GPU engine)."""


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall]:
    """The tool calls of a chat message as TRL's response parser writes them (``function`` wrapped or not)."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        calls.append(ToolCall(str(name) if name else "unknown", arguments if arguments is not None else {}))
    return calls
