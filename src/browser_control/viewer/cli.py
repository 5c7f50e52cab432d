"""Browse recorded episodes in a local web page: runs, success per task, episodes step by step, side by side.

Serves on 127.0.0.1 only by default; nothing is fetched from the network. It reads the directories it is
given and refuses every path outside them:

  --logs DIR         searched for recordings: evaluation reports (browser-control evaluate --output DIR)
                     and anything else holding an episodes.jsonl; repeat for several directories
  --checkpoints DIR  the checkpoint directory: finished checkpoints with their metrics, their evaluation
                     reports (NAME/eval/) and the training runs' recorded rollouts (runs/NAME/)

Examples:
  browser-control view --logs evaluations --checkpoints checkpoints
  browser-control view --logs evaluations/20260101-120000 --port 8051

In Docker: `make view` serves the logs and checkpoints volumes on http://127.0.0.1:8050/.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from browser_control.arg_types import positive_int

    parser.add_argument(
        "--logs",
        action="append",
        default=None,
        metavar="DIR",
        help="a directory of recordings (evaluation reports, logs); repeat for several",
    )
    parser.add_argument("--checkpoints", default=None, metavar="DIR", help="the checkpoint directory")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; anything but loopback shows the recordings to the network",
    )
    parser.add_argument("--port", type=positive_int, default=8050, help="port to listen on")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="'info' logs every request",
    )


def _fail(message: str) -> int:
    print(f"browser-control view: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from browser_control.viewer.app import make_server
    from browser_control.viewer.store import Store

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.logs and not args.checkpoints:
        return _fail("give --logs DIR and/or --checkpoints DIR: the directories whose recordings to show")
    if args.port > 65535:
        return _fail(f"--port {args.port} is not a port (1-65535)")
    roots = [("logs", d) for d in args.logs or []] + ([("checkpoints", args.checkpoints)] if args.checkpoints else [])
    for label, given in roots:
        path = Path(given).expanduser()
        # A missing directory is shown on the page (a volume may fill later); a file where a directory should be
        # is a mistake in the command.
        if path.exists() and not path.is_dir():
            return _fail(f"--{label} {given} is a file, not a directory")
        if not path.exists():
            print(f"browser-control view: warning: --{label} {given} does not exist (yet)", file=sys.stderr)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(
            f"browser-control view: warning: listening on {args.host}: anyone who can reach this address can "
            "read the recordings",
            file=sys.stderr,
        )
    store = Store(roots)
    try:
        server = make_server(store, args.host, args.port)
    except OSError as exc:
        return _fail(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} (is another viewer running? "
            "choose another --port)"
        )
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"browser-control view: http://{shown}:{server.server_address[1]}/ ({store.describe_roots()})", flush=True)
    # Ctrl-C stops the viewer even when SIGINT was inherited as ignored (a job started with `&` by a
    # non-interactive shell, or by a test runner started that way), as it does the demo.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
