"""Evaluation results, their aggregation per task and the JSON / Markdown / PNG reports."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from browser_control.evaluation.stats import difference_interval, wilson_interval

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "success_rates.png"
EPISODES_JSONL = "episodes.jsonl"
ALL_TASKS = "all tasks"


@dataclass
class EpisodeRecord:
    task: str
    seed: int
    success: bool
    steps: int
    tool_calls: int
    invalid_actions: int
    # "success", "failed" (the task ended unsolved), "step_limit", "no_tool_call", "context_limit",
    # or the scripted policy's reason for giving up.
    ended_by: str
    actions: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] | None = None
    # The episode's step-by-step recording, relative to the report directory (browser-control view).
    trace: str | None = None

    def summary_line(self, run: str) -> dict[str, Any]:
        """The episode's line of episodes.jsonl."""
        return {"run": run, **{k: v for k, v in asdict(self).items() if v is not None}}


@dataclass
class TaskResult:
    task: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_steps_to_success: float | None
    tool_calls: int
    invalid_actions: int
    invalid_action_rate: float | None
    ended_by: dict[str, int]

    @classmethod
    def from_episodes(cls, task: str, records: Sequence[EpisodeRecord]) -> TaskResult:
        n = len(records)
        wins = [r for r in records if r.success]
        low, high = wilson_interval(len(wins), n)
        calls = sum(r.tool_calls for r in records)
        invalid = sum(r.invalid_actions for r in records)
        return cls(
            task=task,
            episodes=n,
            successes=len(wins),
            success_rate=len(wins) / n if n else 0.0,
            ci_low=low,
            ci_high=high,
            mean_steps_to_success=sum(r.steps for r in wins) / len(wins) if wins else None,
            tool_calls=calls,
            invalid_actions=invalid,
            invalid_action_rate=invalid / calls if calls else None,
            ended_by=dict(Counter(r.ended_by for r in records).most_common()),
        )


@dataclass
class EvaluationReport:
    """The result of :func:`~browser_control.evaluation.runner.evaluate_policy` for one policy."""

    label: str
    kind: str
    tasks: list[TaskResult]
    overall: TaskResult
    episodes: list[EpisodeRecord]
    settings: dict[str, Any]
    duration_s: float

    @property
    def success_rate(self) -> float:
        return self.overall.success_rate

    def task(self, name: str) -> TaskResult:
        for result in self.tasks:
            if result.task == name:
                return result
        raise KeyError(name)

    def summary(self) -> dict[str, Any]:
        """Everything but the episodes, as plain JSON types."""
        return {
            "label": self.label,
            "kind": self.kind,
            "duration_s": round(self.duration_s, 2),
            "settings": self.settings,
            "overall": asdict(self.overall),
            "tasks": [asdict(t) for t in self.tasks],
        }

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat scalars for TensorBoard: overall and per-task success rates."""
        out = {f"{prefix}/success_rate": self.overall.success_rate}
        if self.overall.invalid_action_rate is not None:
            out[f"{prefix}/invalid_action_rate"] = self.overall.invalid_action_rate
        for t in self.tasks:
            out[f"{prefix}/success_rate/{t.task}"] = t.success_rate
        return out


def build_report(
    label: str,
    kind: str,
    tasks: Sequence[str],
    records: Sequence[EpisodeRecord],
    settings: dict[str, Any],
    duration_s: float,
) -> EvaluationReport:
    by_task = [TaskResult.from_episodes(t, [r for r in records if r.task == t]) for t in tasks]
    return EvaluationReport(
        label, kind, by_task, TaskResult.from_episodes(ALL_TASKS, records), list(records), settings, duration_s
    )


# -- comparison of several runs -----------------------------------------------------------------
def compare(reports: Sequence[EvaluationReport]) -> list[dict[str, Any]]:
    """Each later run against the first (the baseline): per task and overall, the change and its 95 % CI."""
    if len(reports) < 2:
        return []
    base = reports[0]
    rows = []
    for other in reports[1:]:
        for name in [*[t.task for t in base.tasks], ALL_TASKS]:
            a = base.overall if name == ALL_TASKS else base.task(name)
            try:
                b = other.overall if name == ALL_TASKS else other.task(name)
            except KeyError:
                continue
            if not a.episodes or not b.episodes:
                continue
            delta, low, high = difference_interval(a.successes, a.episodes, b.successes, b.episodes)
            rows.append(
                {
                    "baseline": base.label,
                    "run": other.label,
                    "task": name,
                    "delta": delta,
                    "ci_low": low,
                    "ci_high": high,
                    "verdict": "better" if low > 0 else "worse" if high < 0 else "no clear change",
                }
            )
    return rows


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _steps(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def markdown(reports: Sequence[EvaluationReport]) -> str:
    first = reports[0]
    s = first.settings
    lines = [
        "# Evaluation report",
        "",
        f"{s['episodes_per_task']} episodes per task, evaluation seeds {s['seeds'][0]}..{s['seeds'][1]} "
        f"(offset {s['seed_offset']}), at most {s.get('max_episode_steps', s.get('max_steps'))} actions per episode, "
        f"environment service {s['env_url']}.",
        "Success rates carry 95% Wilson intervals; a change is called better/worse only when the 95% "
        "interval of the difference (Newcombe) excludes zero.",
        "Invalid actions are the calls that did nothing: refused by the service (not an allowed action, "
        "bad arguments) or reported as an error by the page. A correct action can be among them, so a "
        "successful episode can have some: MiniWoB places the buttons of click-test-2 and "
        "click-button-sequence at random, sometimes on top of each other, and a click on the covered one "
        "times out (BrowserGym allows an action 500 ms); the scripted policy then presses Enter on the "
        "button. The scripted baseline's rate on those two tasks (13% and 7% of their actions over the "
        "first 20 evaluation seeds) is a floor that no policy can go below.",
        "",
        "## Runs",
        "",
        "| run | kind | success | 95% CI | steps to success | invalid actions | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        o = r.overall
        lines.append(
            f"| {r.label} | {r.kind} | {_pct(o.success_rate)} ({o.successes}/{o.episodes}) | "
            f"{_pct(o.ci_low)}–{_pct(o.ci_high)} | {_steps(o.mean_steps_to_success)} | "
            f"{_pct(o.invalid_action_rate)} | {r.duration_s:.0f} s |"
        )
    lines += ["", "## Per task", ""]
    header = "| task | " + " | ".join(f"{r.label}: success (95% CI) · steps · invalid" for r in reports) + " |"
    lines += [header, "|---" * (len(reports) + 1) + "|"]
    for name in [t.task for t in first.tasks]:
        cells = []
        for r in reports:
            try:
                t = r.task(name)
            except KeyError:
                cells.append("—")
                continue
            cells.append(
                f"{_pct(t.success_rate)} ({_pct(t.ci_low)}–{_pct(t.ci_high)}) · "
                f"{_steps(t.mean_steps_to_success)} · {_pct(t.invalid_action_rate)}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = compare(reports)
    if rows:
        lines += [
            "",
            f"## Change against {first.label}",
            "",
            "| run | task | change | 95% CI | verdict |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['run']} | {row['task']} | {round(100 * row['delta']):+d} pts | "
                f"{round(100 * row['ci_low']):+d}..{round(100 * row['ci_high']):+d} | {row['verdict']} |"
            )
    lines += ["", "## How episodes ended", "", "| run | task | endings |", "|---|---|---|"]
    for r in reports:
        for t in r.tasks:
            endings = ", ".join(f"{k}: {v}" for k, v in t.ended_by.items())
            lines.append(f"| {r.label} | {t.task} | {endings} |")
    lines.append("")
    return "\n".join(lines)


def plot(reports: Sequence[EvaluationReport], path: Path) -> Path:
    """Grouped horizontal bars: one group per task (plus all tasks), one bar per run, Wilson error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers and CI
    import matplotlib.pyplot as plt

    names = [t.task for t in reports[0].tasks] + [ALL_TASKS]
    runs = len(reports)
    bar = 0.8 / runs
    height = max(3.0, len(names) * (0.2 + 0.16 * runs) + 1.5)
    fig, ax = plt.subplots(figsize=(9, height), dpi=110)
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(reports):
        values, low_err, high_err, ys = [], [], [], []
        for j, name in enumerate(names):
            try:
                t = r.overall if name == ALL_TASKS else r.task(name)
            except KeyError:
                continue
            values.append(100 * t.success_rate)
            low_err.append(100 * (t.success_rate - t.ci_low))
            high_err.append(100 * (t.ci_high - t.success_rate))
            # Runs top to bottom in legend order inside each group; tasks top to bottom as listed.
            ys.append((len(names) - 1 - j) + (runs - 1 - i - (runs - 1) / 2) * bar)
        ax.barh(
            ys,
            values,
            height=bar * 0.95,
            xerr=[low_err, high_err],
            color=colors[i % len(colors)],
            ecolor="#333333",
            capsize=2,
            label=r.label,
            error_kw={"linewidth": 0.8},
        )
        for y, v, up in zip(ys, values, high_err, strict=True):
            # Right of the error bar's cap, so the number never sits on the whisker.
            ax.text(v + up + 1.2, y, f"{v:.0f}%", va="center", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(list(reversed(names)), fontsize=8)
    for tick in ax.get_yticklabels():
        if tick.get_text() == ALL_TASKS:
            tick.set_fontweight("bold")
    ax.set_xlim(0, 114)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("success rate (%), error bars: 95% Wilson interval")
    episodes = reports[0].settings["episodes_per_task"]
    ax.set_title(f"MiniWoB success rate per task ({episodes} episodes per task)", fontsize=10)
    ax.grid(axis="x", linestyle=":", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(
        loc="lower center", bbox_to_anchor=(0.5, 1.0 + 0.25 / height), ncol=min(runs, 3), fontsize=8, frameon=False
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def write_reports(
    reports: Sequence[EvaluationReport], output_dir: str | Path, *, episodes_recorded: bool = False
) -> dict[str, Path]:
    """Write report.json, report.md, success_rates.png and episodes.jsonl; returns their paths.

    ``episodes_recorded``: an :class:`~browser_control.recording.EpisodeRecorder` already wrote
    episodes.jsonl during the run, so it is left as it is.
    """
    if not reports:
        raise ValueError("no evaluation to report")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / REPORT_JSON,
        "markdown": out / REPORT_MD,
        "chart": out / REPORT_PNG,
        "episodes": out / EPISODES_JSONL,
    }
    document = {"runs": [r.summary() for r in reports], "comparison": compare(reports)}
    paths["json"].write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown(reports))
    plot(reports, paths["chart"])
    if not episodes_recorded:
        with paths["episodes"].open("w") as fh:
            for r in reports:
                for e in r.episodes:
                    fh.write(json.dumps(e.summary_line(r.label), default=_json_default) + "\n")
    return paths
