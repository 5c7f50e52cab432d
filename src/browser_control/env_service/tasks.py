"""MiniWoB++ task registry: names, aliases and where the task pages live."""

from __future__ import annotations

import difflib
import os
from functools import cache
from pathlib import Path

from browsergym.miniwob import ALL_MINIWOB_TASKS
from browsergym.miniwob.base import AbstractMiniwobTask

from browser_control.protocol import bare_task_name


class UnknownTaskError(KeyError):
    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        super().__init__(name)

    @property
    def hint(self) -> str:
        if self.suggestions:
            return f"did you mean {', '.join(repr(s) for s in self.suggestions)}? GET /tasks lists all"
        return "GET /tasks lists every available task"


def miniwob_base_url() -> str:
    """The URL prefix of the MiniWoB++ HTML pages: MINIWOB_URL, else the pages the miniwob package ships."""
    url = os.environ.get("MINIWOB_URL")
    if url:
        return url if url.endswith("/") else url + "/"
    import miniwob

    html_dir = Path(miniwob.__file__).resolve().parent / "html" / "miniwob"
    if not (html_dir / "click-test.html").is_file():
        raise RuntimeError(f"MiniWoB pages not found under {html_dir}; reinstall 'miniwob' or set MINIWOB_URL")
    return html_dir.as_uri() + "/"


@cache
def task_classes() -> dict[str, type[AbstractMiniwobTask]]:
    """Short task name ("click-test") -> BrowserGym task class, for every registered MiniWoB task."""
    return {cls.subdomain: cls for cls in ALL_MINIWOB_TASKS}


def canonical_task_name(name: str) -> str:
    """Accept "click-test" or "miniwob.click-test"; raise UnknownTaskError with close matches otherwise."""
    short = bare_task_name(name)
    if short in task_classes():
        return short
    raise UnknownTaskError(name, difflib.get_close_matches(short, list(task_classes()), n=3, cutoff=0.6))
