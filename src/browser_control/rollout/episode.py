"""What one episode leaves behind: its statistics (the per-batch episode log serialises them whole), the
tool calls as the environment saw them (for recordings), and the text of actions and faults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def format_fault(reason: str) -> str:
    return f"The environment failed ({reason}); this episode is not scored. Do not call any more tools."


def action_text(name: str, *args: Any) -> str:
    """Build an action call; repr() keeps every argument a literal (the service re-checks anyway)."""
    return f"{name}({', '.join(repr(a) for a in args)})"


@dataclass
class EpisodeStats:
    task_name: str = ""
    seed: int = 0
    steps: int = 0
    invalid_actions: int = 0
    success: bool = False
    done: bool = False
    truncated: bool = False
    # Set when the environment, not the model, ended the episode (browser crashed, session lost, service
    # answering 5xx): the episode is no data, scored None rather than 0.
    fault: str | None = None
    env_latency_s: list[float] = field(default_factory=list)


@dataclass
class StepAnswer:
    """One tool call as the environment saw it, kept for episode recordings (``browser-control view``).

    Not part of :class:`EpisodeStats`, which the per-batch episode log serialises whole.
    """

    action: str
    observation: str  # the text the model had in front of it when it chose the action
    result: str  # the text the tool returned to the model
    error: str = ""  # the page's last_action_error, or the service's reason for refusing the action
    reward: float | None = None
    done: bool = False
    truncated: bool = False
    reached_service: bool = True  # False when the episode was already over and nothing was sent
    screenshot_png_b64: str | None = None
