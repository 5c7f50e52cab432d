"""Evaluation: success rates of a model (or a scripted policy) on MiniWoB tasks, with confidence intervals.

``evaluate_policy(policy, tasks, episodes, seed_offset, env_url) -> EvaluationReport`` is the core; the
``browser-control evaluate`` command and in-training evaluation both call it.
"""

from browser_control.evaluation.policy import Decision, Episode, Policy, ToolCall
from browser_control.evaluation.report import EvaluationReport, TaskResult, write_reports
from browser_control.evaluation.runner import EvaluationError, evaluate_policy
from browser_control.evaluation.scripted import SCRIPTED_TASKS, ScriptedPolicy, scripted_step

__all__ = [
    "SCRIPTED_TASKS",
    "Decision",
    "Episode",
    "EvaluationError",
    "EvaluationReport",
    "Policy",
    "ScriptedPolicy",
    "TaskResult",
    "ToolCall",
    "evaluate_policy",
    "scripted_step",
    "write_reports",
]
