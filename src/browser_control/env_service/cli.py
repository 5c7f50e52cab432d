"""Serve MiniWoB++ tasks over HTTP (FastAPI + Playwright/Chromium).

Endpoints: GET /health, GET /tasks, POST /reset, POST /step, POST /close (docs/http-api.md).
Every option can also be set by the environment variable shown in brackets; a flag wins.

Examples:
  browser-control serve-env --port 8000
  CHROMIUM_EXECUTABLE=/usr/lib/chromium/chromium-headless-shell browser-control serve-env
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from browser_control.arg_types import (
    boolean,
    env_default,
    non_negative_int,
    one_of,
    port_number,
    positive_float,
    positive_int,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults stay strings here and are converted by each option's type when the option is not given:
    # a bad environment value then fails this command only, in one line that names the variable.
    parser.add_argument(
        "--host", default=env_default("HOST", "127.0.0.1"), help="interface to bind; 0.0.0.0 inside a container [HOST]"
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=env_default("PORT", "8000"),
        help="TCP port, 1-65535; checked to be free before any browser starts [PORT]",
    )
    parser.add_argument(
        "--max-sessions",
        type=positive_int,
        default=env_default("MAX_SESSIONS", "32"),
        help="open sessions allowed at once; more gets 503 [MAX_SESSIONS]",
    )
    parser.add_argument(
        "--session-ttl-s",
        type=positive_float,
        default=env_default("SESSION_TTL_S", "600"),
        help="idle seconds after which a session is closed [SESSION_TTL_S]",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=env_default("BROWSER_WORKERS", "4"),
        help="browser threads, each with its own Chromium; sessions are spread over "
        "them (see benchmarks/RESULTS.md for the trade-off) [BROWSER_WORKERS]",
    )
    parser.add_argument(
        "--chromium-executable",
        default=env_default("CHROMIUM_EXECUTABLE", None),
        help="path of a Chromium binary; unset uses Playwright's own browser [CHROMIUM_EXECUTABLE]",
    )
    parser.add_argument(
        "--max-obs-chars",
        type=positive_int,
        default=env_default("MAX_OBS_CHARS", "8000"),
        help="cap on the accessibility-tree text of one observation [MAX_OBS_CHARS]",
    )
    parser.add_argument(
        "--settle-timeout-ms",
        type=non_negative_int,
        default=env_default("SETTLE_TIMEOUT_MS", "1000"),
        help="longest wait after an action or reset for the page's pending timers, animations "
        "and requests before it is observed; 0 observes at once (docs/http-api.md) "
        "[SETTLE_TIMEOUT_MS]",
    )
    # BooleanOptionalAction applies no type to a string default: SCREENSHOTS is converted in run().
    parser.add_argument(
        "--screenshots",
        action=argparse.BooleanOptionalAction,
        default=env_default("SCREENSHOTS", "0"),
        help="add a base64 PNG screenshot to observations [SCREENSHOTS]",
    )
    parser.add_argument(
        "--job-deadline-s",
        type=positive_float,
        default=env_default("JOB_DEADLINE_S", "60"),
        help="longest one reset or step may keep a browser busy; past it the request "
        "gets 410 session_lost and that worker's Chromium is killed and relaunched "
        "[JOB_DEADLINE_S]",
    )
    parser.add_argument(
        "--log-level",
        type=one_of(*LOG_LEVELS),
        choices=LOG_LEVELS,
        default=env_default("LOG_LEVEL", "info"),
        help="[LOG_LEVEL]",
    )


def _fail(message: str) -> int:
    print(f"browser-control serve-env: error: {message}", file=sys.stderr)
    return 2


def port_problem(host: str, port: int) -> str | None:
    """None when ``host:port`` can be listened on now; otherwise what is wrong, in one sentence.

    Checked before the browsers start: uvicorn binds only after the app's startup, which launches them.
    """
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"--host {host!r} [HOST] is not an address or name of this machine ({exc.strerror})"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            # The same options asyncio's create_server (uvicorn) uses, so the answer is the one it would get.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} on {host} is already in use (another serve-env, or the browsergym "
                        f"container? `ss -ltnp 'sport = :{port}'` names the process); stop it or choose "
                        "another port with --port or PORT"
                    )
                if exc.errno == errno.EACCES:
                    return f"no permission to listen on port {port} (ports below 1024 need root); use --port >= 1024"
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"--host {host!r} [HOST] is not an address of this machine"
                return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def run(args: argparse.Namespace) -> int:
    if isinstance(args.screenshots, str):
        try:
            args.screenshots = boolean(args.screenshots)
        except argparse.ArgumentTypeError as exc:
            return _fail(f"argument --screenshots: {exc}")
    if args.chromium_executable and not os.access(args.chromium_executable, os.X_OK):
        return _fail(f"CHROMIUM_EXECUTABLE={args.chromium_executable} is not an executable file")
    problem = port_problem(args.host, args.port)
    if problem:
        return _fail(problem)
    try:
        import uvicorn

        from browser_control.env_service.app import ServiceSettings, configure_logging, create_app
    except ImportError as exc:
        raise SystemExit(
            f"serve-env needs the 'env' extra ({exc.name} is missing): pip install 'browser-control[env]'"
        ) from exc
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
        job_deadline_s=args.job_deadline_s,
        # Reap often enough that a session never outlives its TTL by much, without busy-looping.
        reap_interval_s=min(10.0, max(0.5, args.session_ttl_s / 2)),
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
