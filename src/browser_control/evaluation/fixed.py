"""The best fixed-answer policy: the bar that a policy ignoring the goal and the page can reach.

A model that learnt one answer per task (always click bid 13 on click-test-2) looks like it learnt the task
on every instance that happens to want that answer. To claim that a model reads the goal and the page, its
success must beat the best *fixed* answer: one action sequence, played unchanged on every instance.

Candidates are the action sequences of scripted demonstrations (training seeds), i.e. answers known to
solve some instances, most frequent first; each is played through the evaluation harness on the same
evaluation seeds as the model, and the best per task is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from browser_control.evaluation.policy import Decision, Episode, Policy, ToolCall, tool_calls_of
from browser_control.evaluation.stats import wilson_interval


class FixedAnswerPolicy(Policy):
    """Plays the same calls, one per turn, on every episode, then stops: it reads neither goal nor page."""

    kind = "fixed"

    def __init__(self, calls: Sequence[ToolCall]):
        if not calls:
            raise ValueError("a fixed answer needs at least one call")
        self.calls = list(calls)
        self.label = " ".join(c.action() for c in self.calls)

    def decide(self, episodes: Sequence[Episode]) -> list[Decision]:
        return [
            Decision([self.calls[len(e.calls)]]) if len(e.calls) < len(self.calls) else Decision([]) for e in episodes
        ]


@dataclass
class FixedAnswer:
    task: str
    answer: str | None  # the best sequence, as actions; None when no candidate was found
    successes: int
    episodes: int
    tried: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "success": self.success_rate,
            "successes": self.successes,
            "episodes": self.episodes,
            "interval": list(self.interval),
            "tried": self.tried,
        }


def demo_answers(records: Iterable[dict[str, Any]]) -> dict[str, Counter[str]]:
    """Per task, how often each action sequence (JSON of its calls) occurs in the demonstrations."""
    answers: dict[str, Counter[str]] = {}
    for record in records:
        calls = [
            [c.as_message_call() for c in tool_calls_of(m)]
            for m in record["messages"]
            if m.get("role") == "assistant" and m.get("tool_calls")
        ]
        answers.setdefault(record["task_name"], Counter())[json.dumps(calls, sort_keys=True)] += 1
    return answers


def best_fixed_answers(
    records: Iterable[dict[str, Any]],
    tasks: Sequence[str],
    episodes: int,
    *,
    env_url: str,
    max_episode_steps: int,
    seed_offset: int = 0,
    candidates: int = 12,
    concurrency: int = 16,
) -> dict[str, FixedAnswer]:
    """For each task, the best success of its ``candidates`` most frequent demonstrated answers, played
    unchanged on evaluation seeds ``eval_seed(i, seed_offset)``, i < ``episodes`` (the harness's seeds)."""
    from browser_control.evaluation.runner import evaluate_policy

    answers = demo_answers(records)
    results = {}
    for task in tasks:
        best = FixedAnswer(task, None, 0, episodes, 0)
        for encoded, _count in answers.get(task, Counter()).most_common(candidates):
            calls = [
                ToolCall(c["function"]["name"], dict(c["function"]["arguments"]))
                for turn in json.loads(encoded)
                for c in turn
            ]
            policy = FixedAnswerPolicy(calls)
            report = evaluate_policy(
                policy,
                [task],
                episodes,
                seed_offset=seed_offset,
                env_url=env_url,
                max_episode_steps=max_episode_steps,
                concurrency=concurrency,
                progress=False,
            )
            best.tried += 1
            successes = report.tasks[0].successes
            if best.answer is None or successes > best.successes:
                best.answer, best.successes = policy.label, successes
        results[task] = best
    return results
