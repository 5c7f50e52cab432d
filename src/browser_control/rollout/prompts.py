"""Prompt and observation text shared by training, evaluation and demonstrations."""

from __future__ import annotations

from browser_control.protocol import Observation

SYSTEM_PROMPT = (
    "You operate a web browser to complete the user's task. The page is given as an accessibility tree; "
    "elements you can act on have a bid in brackets, e.g. [13] button 'Submit'. Call exactly one tool per "
    "turn, passing bids as quoted strings, e.g. click(bid='13'). When the task is complete, stop calling "
    "tools."
)


def task_prompt(task_name: str) -> list[dict[str, str]]:
    """The chat that starts an episode; the first observation is appended to the last message."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"MiniWoB task '{task_name}'.\n"},
    ]


def format_observation(observation: Observation, step: int, max_steps: int) -> str:
    error = observation.last_action_error or "none"
    return (
        f"Goal: {observation.goal}\n"
        f"Step {step} of {max_steps}. Last action error: {error}\n"
        f"Page:\n{observation.axtree_txt}"
    )


def format_episode_end(success: bool, step: int) -> str:
    outcome = "the task is solved" if success else "the task was not solved"
    return f"The episode is over after {step} actions: {outcome}. Do not call any more tools."


def format_step_limit(max_steps: int) -> str:
    return f"The episode is over: the limit of {max_steps} actions is reached. Do not call any more tools."
