"""Session bookkeeping on the asyncio side: placement on workers, the cap, idle reaping.

The event loop never runs browser work: it hands each job to the owning worker thread and awaits the
future. Sessions on different workers run in parallel; one session's requests are ordered by its lock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from browser_control.env_service.actions import parse_action
from browser_control.env_service.browser import (
    BrowserOptions,
    BrowserSession,
    BrowserWorker,
    SessionLostError,
    StepResult,
)
from browser_control.env_service.tasks import canonical_task_name, serve_miniwob_pages, task_classes
from browser_control.protocol import MAX_SEED

log = logging.getLogger("browser_control.env_service")


class ServiceError(Exception):
    """An error with an HTTP status and a message that a user or a model can act on."""

    def __init__(self, status: int, error: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.hint = status, error, message, hint


@dataclass
class _Handle:
    session: BrowserSession
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


class SessionManager:
    def __init__(self, workers: int, max_sessions: int, session_ttl_s: float, options: BrowserOptions):
        self.max_sessions = max_sessions
        self.session_ttl_s = session_ttl_s
        self.base_url, self._page_server = serve_miniwob_pages()
        self._workers = [BrowserWorker(i, options) for i in range(workers)]
        self._sessions: dict[str, _Handle] = {}

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def _on_worker(self, worker: BrowserWorker, fn: Any) -> Any:
        return await asyncio.wrap_future(worker.submit(fn))

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Launch every worker's browser now, so the first /reset is fast and /health is truthful."""
        results = await asyncio.gather(*(self._on_worker(w, w.browser) for w in self._workers), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("browser launch failed: %s", result)

    async def stop(self) -> None:
        for session_id in list(self._sessions):
            await self.close(session_id, missing_ok=True)
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self._workers))
        if self._page_server is not None:
            await asyncio.to_thread(self._page_server.stop)

    async def health(self, timeout_s: float = 10.0) -> tuple[bool, str]:
        try:
            versions = await asyncio.wait_for(
                asyncio.gather(*(self._on_worker(w, w.probe) for w in self._workers)), timeout_s
            )
        except TimeoutError:
            return False, f"a browser worker did not answer a probe within {timeout_s:.0f} s"
        except Exception as exc:
            return False, str(exc)
        return True, versions[0] if versions else "no workers"

    async def reap_idle(self) -> int:
        now = time.monotonic()
        expired = [
            sid for sid, h in self._sessions.items() if now - h.last_used > self.session_ttl_s and not h.lock.locked()
        ]
        for sid in expired:
            log.info("session expired", extra={"session_id": sid, "ttl_s": self.session_ttl_s})
            await self.close(sid, missing_ok=True)
        return len(expired)

    # -- requests --------------------------------------------------------------------------------
    def _handle(self, session_id: str) -> _Handle:
        handle = self._sessions.get(session_id)
        if handle is None:
            raise ServiceError(
                404,
                "unknown_session",
                f"session '{session_id[:64]}' does not exist or expired after {self.session_ttl_s:.0f} s idle",
                "POST /reset without session_id to start a new session",
            )
        handle.last_used = time.monotonic()
        return handle

    async def reset(
        self, task_name: str, seed: int | None, session_id: str | None, max_episode_steps: int | None
    ) -> tuple[str, dict[str, Any]]:
        short_name = canonical_task_name(task_name)  # UnknownTaskError -> 404 in the app
        task_cls = task_classes()[short_name]
        if seed is None:
            seed = secrets.randbelow(MAX_SEED)
        in_place = session_id is not None
        if session_id is not None:
            handle = self._handle(session_id)
        else:
            if len(self._sessions) >= self.max_sessions:
                raise ServiceError(
                    503,
                    "session_cap",
                    f"all {self.max_sessions} sessions are in use",
                    "close idle sessions (POST /close) or raise MAX_SESSIONS",
                )
            worker = min(self._workers, key=lambda w: w.session_count)
            worker.session_count += 1
            session_id = secrets.token_hex(8)
            handle = _Handle(BrowserSession(session_id, worker))
            self._sessions[session_id] = handle
        session = handle.session
        async with handle.lock:
            try:
                observation = await self._on_worker(
                    session.worker,
                    lambda: session.reset(task_cls, short_name, seed, self.base_url, max_episode_steps),
                )
            except SessionLostError as exc:
                if in_place:
                    raise  # 410; the session stays, and the next reset in place gets a fresh browser
                await self.close(session_id, missing_ok=True, locked=True)
                # The client never saw this session id, so "reset it" would be no advice: nothing of
                # the request survived and the same request can simply be sent again.
                raise ServiceError(
                    503,
                    "browser_unavailable",
                    f"the browser crashed or hung while starting the session: {exc}",
                    "send the same request again; a fresh browser is started for it",
                ) from exc
            except Exception:
                await self.close(session_id, missing_ok=True, locked=True)
                raise
            handle.last_used = time.monotonic()
        return session_id, {"task_name": short_name, "seed": seed, "observation": observation}

    async def step(self, session_id: str, action_text: str) -> StepResult:
        handle = self._handle(session_id)
        action = parse_action(action_text)  # ActionError -> 422, before any browser work
        session = handle.session
        async with handle.lock:
            if session.done or session.truncated:
                raise ServiceError(
                    409,
                    "episode_over",
                    f"the episode is over ({'task done' if session.done else 'step limit reached'})",
                    "POST /reset with this session_id to start a new episode",
                )
            result = await self._on_worker(session.worker, lambda: session.step(action))
            handle.last_used = time.monotonic()
            return result

    async def close(self, session_id: str, missing_ok: bool = False, locked: bool = False) -> bool:
        handle = self._sessions.pop(session_id, None)
        if handle is None:
            if missing_ok:
                return False
            self._handle(session_id)  # raises the 404
        session = handle.session
        session.worker.session_count -= 1
        try:
            if locked:
                await self._on_worker(session.worker, session.close)
            else:
                async with handle.lock:
                    await self._on_worker(session.worker, session.close)
        except SessionLostError:
            pass  # closing overran its deadline and the browser was killed: the context is gone either way
        return True
