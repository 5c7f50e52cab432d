"""Serve MiniWoB++ tasks over HTTP (FastAPI + Playwright/Chromium).

Endpoints: GET /health, GET /tasks, POST /reset, POST /step, POST /close (docs/http-api.md).
Every option can also be set by the environment variable shown in brackets; a flag wins.

Examples:
  browser-control serve-env --port 8000
  CHROMIUM_EXECUTABLE=/usr/lib/chromium/chromium-headless-shell browser-control serve-env
"""

from __future__ import annotations

import argparse
import os

from browser_control.arg_types import non_negative_int, positive_float, positive_int


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(name, default)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}






def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                        help="interface to bind; 0.0.0.0 inside a container [HOST]")
    parser.add_argument("--port", type=int, default=int(_env("PORT", "8000") or 8000), help="[PORT]")
    parser.add_argument("--max-sessions", type=positive_int,
                        default=_env("MAX_SESSIONS", "32"),
                        help="open sessions allowed at once; more gets 503 [MAX_SESSIONS]")
    parser.add_argument("--session-ttl-s", type=positive_float, default=_env("SESSION_TTL_S", "600"),
                        help="idle seconds after which a session is closed [SESSION_TTL_S]")
    parser.add_argument("--workers", type=positive_int, default=_env("BROWSER_WORKERS", "4"),
                        help="browser threads, each with its own Chromium; sessions are spread over "
                        "them (see benchmarks/RESULTS.md for the trade-off) [BROWSER_WORKERS]")
    parser.add_argument("--chromium-executable", default=_env("CHROMIUM_EXECUTABLE", None),
                        help="path of a Chromium binary; unset uses Playwright's own browser "
                        "[CHROMIUM_EXECUTABLE]")
    parser.add_argument("--max-obs-chars", type=positive_int, default=_env("MAX_OBS_CHARS", "8000"),
                        help="cap on the accessibility-tree text of one observation [MAX_OBS_CHARS]")
    parser.add_argument("--settle-timeout-ms", type=non_negative_int, default=_env("SETTLE_TIMEOUT_MS", "1000"),
                        help="longest wait after an action or reset for the page's pending timers, animations "
                        "and requests before it is observed; 0 observes at once (docs/http-api.md) "
                        "[SETTLE_TIMEOUT_MS]")
    parser.add_argument("--screenshots", action=argparse.BooleanOptionalAction,
                        default=_truthy(_env("SCREENSHOTS", "0")),
                        help="add a base64 PNG screenshot to observations [SCREENSHOTS]")
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="[LOG_LEVEL]")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from browser_control.env_service.app import ServiceSettings, configure_logging, create_app
    except ImportError as exc:
        raise SystemExit(
            f"serve-env needs the 'env' extra ({exc.name} is missing): pip install 'browser-control[env]'"
        ) from exc
    if args.chromium_executable and not os.access(args.chromium_executable, os.X_OK):
        raise SystemExit(f"CHROMIUM_EXECUTABLE={args.chromium_executable} is not an executable file")
    if args.workers > args.max_sessions:
        args.workers = args.max_sessions  # a worker without sessions would only hold memory
    configure_logging(args.log_level)
    settings = ServiceSettings(
        max_sessions=args.max_sessions,
        session_ttl_s=args.session_ttl_s,
        workers=args.workers,
        chromium_executable=args.chromium_executable,
        max_obs_chars=args.max_obs_chars,
        screenshots=args.screenshots,
        settle_timeout_ms=args.settle_timeout_ms,
        # Reap often enough that a session never outlives its TTL by much, without busy-looping.
        reap_interval_s=min(10.0, max(0.5, args.session_ttl_s / 2)),
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                access_log=False)
    return 0
