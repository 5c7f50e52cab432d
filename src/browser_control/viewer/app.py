"""The viewer's HTTP server: the standard library's threading server, so it runs from any install of the package.

Every answer is a page: a bad request, a refused path or a damaged file gives an error page with its reason
and the right status, and an unexpected fault gives a 500 page that says what failed, never an empty reply.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from browser_control.viewer import pages
from browser_control.viewer.store import Store, ViewerError

log = logging.getLogger(__name__)

MAX_SCREENSHOT_BYTES = 20 * 1024 * 1024


class Response:
    def __init__(
        self, body: bytes | str, status: int = 200, content_type: str = "text/html; charset=utf-8", cache: bool = False
    ):
        self.body = body.encode() if isinstance(body, str) else body
        self.status, self.content_type, self.cache = status, content_type, cache


def _params(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


class Viewer:
    """Routes a GET path and its query to a page."""

    def __init__(self, store: Store):
        self.store = store
        self.routes: dict[str, Callable[[dict[str, str]], Response]] = {
            "/": self.home,
            "/run": self.run,
            "/episode": self.episode,
            "/compare": self.compare,
            "/shot": self.shot,
            "/health": self.health,
        }

    def handle(self, path: str, query: str) -> Response:
        try:
            route = self.routes.get(path)
            if route is None:
                raise ViewerError(404, "Not found", f"there is no page {path!r} here")
            return route(_params(query))
        except ViewerError as exc:
            return Response(pages.error_page(exc), exc.status)
        except Exception as exc:  # a page, not a dropped connection, even for a bug
            log.exception("viewer: %s?%s failed", path, query)
            error = ViewerError(500, "Internal error", f"{type(exc).__name__}: {exc}")
            return Response(pages.error_page(error), 500)

    def home(self, params: dict[str, str]) -> Response:
        return Response(pages.home(self.store))

    def health(self, params: dict[str, str]) -> Response:
        return Response(json.dumps({"status": "ok"}), content_type="application/json")

    def run(self, params: dict[str, str]) -> Response:
        recording = self.store.recording(params.get("r", ""))
        return Response(pages.run_page(self.store, recording, params))

    def episode(self, params: dict[str, str]) -> Response:
        recording = self.store.recording(params.get("r", ""))
        row = self.store.row(recording, params.get("n", ""))
        return Response(pages.episode_page(self.store, recording, row))

    def compare(self, params: dict[str, str]) -> Response:
        return Response(pages.compare_page(self.store, params))

    def shot(self, params: dict[str, str]) -> Response:
        recording = self.store.recording(params.get("r", ""))
        row = self.store.row(recording, params.get("n", ""))
        if row.trace is None:
            raise ViewerError(404, "No screenshot", "this episode has no trace, so no screenshots")
        path = self.store.trace_file(recording, row.trace, params.get("f", ""))
        try:
            size = path.stat().st_size
            if size > MAX_SCREENSHOT_BYTES:
                raise ViewerError(413, "Too large", f"{params.get('f')} is {size} bytes; not a screenshot")
            data = path.read_bytes()
        except FileNotFoundError:
            raise ViewerError(404, "Screenshot missing", f"{params.get('f')} is not there") from None
        except IsADirectoryError:
            raise ViewerError(404, "Screenshot missing", f"{params.get('f')} is a directory") from None
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ViewerError(422, "Not a PNG", f"{params.get('f')} is not a PNG image (damaged?)")
        return Response(data, content_type=mimetypes.types_map.get(".png", "image/png"), cache=True)


class _Handler(BaseHTTPRequestHandler):
    viewer: Viewer
    server_version = "browser-control-view"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        response = self.viewer.handle(parts.path, parts.query)
        self.send_response(
            response.status,
            HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else None,
        )
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        # Nothing here is fetched from elsewhere; the policy makes sure of it in the browser too.
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; img-src 'self'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "private, max-age=3600" if response.cache else "no-store")
        self.end_headers()
        try:
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser navigated away

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)


def make_server(store: Store, host: str = "127.0.0.1", port: int = 8050) -> ThreadingHTTPServer:
    handler = type("ViewerHandler", (_Handler,), {"viewer": Viewer(store)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
