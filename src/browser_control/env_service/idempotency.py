"""At-most-once execution of retried requests, keyed by the ``Idempotency-Key`` header.

A client whose request timed out cannot tell whether the service ran it, and the service keeps running a
request whose client gave up. :class:`~browser_control.client.EnvClient` therefore sends one key with every
attempt of a call: the first request with a key runs, and any later one with the same key, while the first
still runs or after it ended, gets the first one's outcome (its response or its error) instead of running
the action again. Requests without the header run as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Random ids (EnvClient sends uuid4 hex); the bounds keep the table small and the log lines readable.
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,64}$"


class IdempotencyKeyReused(Exception):
    """The key came with a different request than the one it was first used for."""


@dataclass
class _Entry:
    fingerprint: str
    task: asyncio.Future[Any]
    finished_at: float | None = None


class RequestDeduplicator:
    """Remembers each keyed request's outcome for ``ttl_s`` after it ended, at most ``max_entries`` of them.

    Outcomes for which ``rerun_after(exc)`` is true (a 503: nothing ran, the client is told to retry) are
    forgotten at once, so the retry runs for real. Event-loop only: no locking needed.
    """

    def __init__(
        self,
        ttl_s: float = 600.0,
        max_entries: int = 2048,
        rerun_after: Callable[[BaseException], bool] = lambda exc: False,
    ):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._rerun_after = rerun_after
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, key: str | None, request: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``work`` once per key; return its result and whether it was a replay of an earlier request."""
        if key is None:
            return await work(), False
        self._evict()
        fingerprint = hashlib.sha256(request.encode()).hexdigest()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise IdempotencyKeyReused(key)
            # Shielded: a retry that gives up too must not cancel the work the first request started.
            return await asyncio.shield(entry.task), True
        # The work runs as its own task: if the client disconnects and the server cancels its request,
        # the browser job still finishes and its outcome is kept for the retry that follows.
        task = asyncio.ensure_future(work())
        entry = _Entry(fingerprint, task)
        self._entries[key] = entry
        task.add_done_callback(lambda done: self._finished(key, entry, done))
        return await asyncio.shield(task), False

    def _finished(self, key: str, entry: _Entry, task: asyncio.Future[Any]) -> None:
        entry.finished_at = time.monotonic()
        exc = None if task.cancelled() else task.exception()  # also marks the exception as retrieved
        if (task.cancelled() or (exc is not None and self._rerun_after(exc))) and self._entries.get(key) is entry:
            del self._entries[key]

    def _evict(self) -> None:
        now = time.monotonic()
        for key, entry in list(self._entries.items()):
            if entry.finished_at is None:
                continue  # still running: its retries must find it
            if now - entry.finished_at > self.ttl_s or len(self._entries) > self.max_entries:
                del self._entries[key]
                continue
            break  # entries are in arrival order, so the rest are younger
