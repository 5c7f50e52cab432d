"""MiniWoB++ task registry: names, aliases, where the task pages live, and the server that serves them."""

from __future__ import annotations

import difflib
import http.server
import logging
import os
import threading
from functools import cache
from pathlib import Path

from browsergym.miniwob import ALL_MINIWOB_TASKS
from browsergym.miniwob.base import AbstractMiniwobTask

from browser_control.protocol import bare_task_name

log = logging.getLogger("browser_control.env_service")


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


def miniwob_html_root() -> Path:
    """The folder of the pages the miniwob package ships (``miniwob/`` with the tasks, ``core/``, ``common/``)."""
    import miniwob

    root = Path(miniwob.__file__).resolve().parent / "html"
    if not (root / "miniwob" / "click-test.html").is_file():
        raise RuntimeError(f"MiniWoB pages not found under {root}; reinstall 'miniwob' or set MINIWOB_URL")
    return root


def miniwob_base_url() -> str:
    """The URL prefix of the MiniWoB++ HTML pages: MINIWOB_URL, else the pages the miniwob package ships."""
    url = os.environ.get("MINIWOB_URL")
    if url:
        return url if url.endswith("/") else url + "/"
    return (miniwob_html_root() / "miniwob").as_uri() + "/"


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    # Chromium keeps file:// pages in no cache: every reset read, parsed and compiled jQuery, jQuery UI
    # and d3 again. Served over HTTP with a long max-age they come from the context's memory cache, with
    # V8's compiled code, after the first episode (benchmarks/RESULTS.md). The files are the installed
    # package's and do not change while the service runs.
    CACHE_CONTROL = "max-age=86400"

    def end_headers(self) -> None:
        self.send_header("Cache-Control", self.CACHE_CONTROL)
        super().end_headers()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "no directory listings")
        return None

    def log_message(self, format: str, *args: object) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        log.debug("page server: " + format, *args)


class _PageHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests = 0  # answered requests, for tests and benchmarks


class MiniwobPageServer:
    """Serves the installed MiniWoB++ pages on 127.0.0.1 (an ephemeral port) for the service's browsers.

    Read-only: GET and HEAD of files under the package's html folder, no listings, nothing outside it
    (``SimpleHTTPRequestHandler`` resolves ``..`` within its folder). Episodes see the same pages and
    the same task code as with file:// URLs; only the observation's ``url`` starts with
    ``http://127.0.0.1:<port>/`` instead of ``file://``.
    """

    def __init__(self, root: Path | None = None):
        self.root = root or miniwob_html_root()
        handler = lambda *args, **kwargs: _PageHandler(*args, directory=str(self.root), **kwargs)  # noqa: E731
        self._server = _PageHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="miniwob-pages", daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        """The URL prefix of the task pages, as BrowserGym's MINIWOB_URL expects it (trailing slash)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/miniwob/"

    @property
    def requests(self) -> int:
        return self._server.requests

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_miniwob_pages() -> tuple[str, MiniwobPageServer | None]:
    """Where the browsers load task pages from: MINIWOB_URL when set (as is, no server), else a
    :class:`MiniwobPageServer` of the installed pages, which the caller stops."""
    if os.environ.get("MINIWOB_URL"):
        return miniwob_base_url(), None
    server = MiniwobPageServer()
    return server.base_url, server


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
