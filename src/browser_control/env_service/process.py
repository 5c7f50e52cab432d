"""`browser-control serve-env` as a child process on a free loopback port, for tests and benchmarks.

One launcher, so every test and benchmark starts the service the same way (the container's own command,
this package on the child's PYTHONPATH) and waits for it with a deadline rather than a fixed sleep.
Imports neither Playwright nor FastAPI: the child process does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

# The directory that holds the browser_control package (src/ in a checkout), so the child imports the same code.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nothing listens on now (other services, and other runs, may hold any fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, with this package first on PYTHONPATH and unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ServiceProcess:
    """A running ``browser-control serve-env``; ``args`` are its options (``--workers 2`` ...).

    Output goes to ``log_path`` (None: discarded). The child gets its own session, so a test that kills it
    takes its browsers along; :meth:`stop` terminates it and, past a grace period, kills the group.
    """

    def __init__(
        self,
        *args: str,
        log_path: Path | None = None,
        chromium: str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "browser_control", "serve-env", "--port", str(self.port), *args]
        if chromium:
            cmd += ["--chromium-executable", chromium]
        self._log: IO[bytes] | None = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=child_env(**(env or {})),
            start_new_session=True,
        )

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Poll GET /health until it answers 200; RuntimeError (with the log's tail) when it exits or the
        deadline passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-env exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve-env not healthy after {timeout_s} s: {self.log()}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log kept)"
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
