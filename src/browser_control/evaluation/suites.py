"""Named task lists shipped with the package (src/browser_control/suites/*.yaml).

A suite file holds ``name``, ``description`` and ``tasks``: a list of task names, or ``all`` for every
task the environment service registers (resolved at run time with GET /tasks).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources

import yaml

from browser_control.evaluation.runner import EvaluationError

ALL = "all"


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple[str, ...] | None  # None: every task of the service

    def resolve(self, available: list[str]) -> list[str]:
        return list(available) if self.tasks is None else list(self.tasks)


def _files() -> dict[str, str]:
    root = resources.files("browser_control") / "suites"
    return {p.name.removesuffix(".yaml"): p.read_text() for p in root.iterdir() if p.name.endswith(".yaml")}


def list_suites() -> list[Suite]:
    return [load_suite(name) for name in sorted(_files())]


def load_suite(name: str) -> Suite:
    files = _files()
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise EvaluationError(f"unknown suite {name!r}; available suites: {', '.join(sorted(files))}.{hint}")
    data = yaml.safe_load(files[name]) or {}
    tasks = data.get("tasks")
    if tasks == ALL:
        return Suite(name, str(data.get("description", "")), None)
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise EvaluationError(f"suite file {name}.yaml needs `tasks:` as a list of task names or `all`")
    return Suite(name, str(data.get("description", "")), tuple(tasks))
