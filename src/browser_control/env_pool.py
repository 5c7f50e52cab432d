"""Several environment-service replicas behind one client: sessions are spread, a dead replica is skipped.

One service runs a fixed number of browser workers; past that, rollouts queue. A pool is a list of
replicas (``BROWSERGYM_URL=http://a:8000,http://b:8000``; Compose ``--scale browsergym=N`` names them
``browser-control-browsergym-1`` ... ``-N``) and an :class:`EnvPool` that speaks the :class:`EnvClient`
interface, so the trainer and ``BrowserEnvironment`` use it unchanged:

* a **new session** goes to the healthy replica on which this process holds the fewest sessions (ties
  rotate, starting at the process's rank, so the ranks of a multi-GPU run do not all begin on replica 0);
* a session **stays on its replica**: the service keeps a session's browser context in its own memory, so
  every later ``step``/``reset``/``close`` of that id is sent to the replica that created it;
* a replica that **fails its health check** (no answer, or not 200) gets no new sessions, and a warning
  says so; it is probed again every ``recheck_s`` and taken back when it is healthy;
* a replica that **dies**: its sessions are lost. Their next call answers ``410 session_lost`` at once,
  which the trainer already treats as a no-data episode (docs/failure-modes.md); the next ``reset`` of
  that environment opens a new session on another replica. A new session whose replica fails is retried
  on the next one. Only when no replica answers at all is the pool dead (:class:`EnvServiceUnavailable`,
  the run stops), and it stays so (``dead``, a ServiceDeathLatch), like the single-service client of the trainer.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from browser_control.client import EnvClient, EnvRequestError, EnvServiceUnavailable, ServiceDeathLatch
from browser_control.protocol import CloseResponse, HealthResponse, ResetResponse, StepResponse

log = logging.getLogger(__name__)

_URL = re.compile(r"^https?://[^/\s,]+")
# How long one health probe may take: it asks whether the replica is up, not how fast it is.
PROBE_TIMEOUT_S = 5.0
# Once one replica is healthy at start, how long the others get to catch up before they are skipped.
START_GRACE_S = 30.0


class PoolConfigError(ValueError):
    """The list of replica addresses cannot be used; the message says which entry and why."""


def parse_urls(value: str) -> list[str]:
    """``"http://a:8000, http://b:8000/"`` -> ``["http://a:8000", "http://b:8000"]`` (order kept, no repeats)."""
    urls: list[str] = []
    for raw in value.split(","):
        url = raw.strip().rstrip("/")
        if not url:
            continue
        if not _URL.match(url):
            raise PoolConfigError(f"{raw.strip()!r} is not an http(s) URL such as http://browsergym:8000")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise PoolConfigError("no address given: expected an http(s) URL, or several separated by commas")
    return urls


def is_pool(value: str) -> bool:
    return len(parse_urls(value)) > 1


def process_rank() -> int:
    """This process's rank in a torchrun/accelerate launch (0 alone)."""
    try:
        return max(int(os.environ.get("RANK", "0") or 0), 0)
    except ValueError:
        return 0


def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S, http: httpx.Client | None = None) -> str | None:
    """None when ``GET url/health`` answers 200, else what is wrong (for the log line)."""
    try:
        if http is not None:
            response = http.get("/health", timeout=timeout_s)
        else:
            response = httpx.get(url + "/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if response.status_code == 200:
        return None
    return f"GET /health answered {response.status_code}"


def pick_healthy_url(value: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """One address for a job that needs a single service (evaluation): the first healthy replica.

    A single address is returned as it is, without a probe; when no replica is healthy the first is
    returned, so the caller's own error names a real address.
    """
    urls = parse_urls(value)
    if len(urls) == 1:
        return urls[0]
    for url in urls:
        problem = probe(url, timeout_s)
        if problem is None:
            return url
        log.warning("environment replica %s fails its health check (%s); trying the next one", url, problem)
    return urls[0]


@dataclass
class Replica:
    url: str
    client: EnvClient
    up: bool | None = None  # None: not probed yet
    problem: str = ""
    checked_at: float = 0.0
    sessions: int = 0  # sessions this process holds there
    created: int = 0  # sessions this process ever opened there (benchmarks, tests)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class EnvPool:
    """An :class:`EnvClient` look-alike over several replicas of the environment service (module doc)."""

    def __init__(
        self,
        urls: list[str] | str,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        rank: int | None = None,
        recheck_s: float = 10.0,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ):
        urls = parse_urls(urls) if isinstance(urls, str) else list(urls)
        if not urls:
            raise PoolConfigError("an environment pool needs at least one address")
        self.replicas = [
            Replica(url, EnvClient(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)) for url in urls
        ]
        self.base_url = ",".join(urls)  # what error messages and logs name
        self.recheck_s = recheck_s
        self.probe_timeout_s = probe_timeout_s
        self._lock = threading.Lock()
        self._first_probe = threading.Lock()
        self._bound: dict[str, Replica] = {}
        self._next = (process_rank() if rank is None else rank) % len(self.replicas)
        self.dead = ServiceDeathLatch()

    # -- life cycle --------------------------------------------------------------------------------
    def close(self) -> None:
        for replica in self.replicas:
            replica.client.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def healthy_urls(self) -> list[str]:
        return [r.url for r in self.replicas if r.up]

    # -- health ------------------------------------------------------------------------------------
    def check(self, replica: Replica) -> bool:
        """Probe one replica now and log when it changes between healthy and skipped."""
        problem = probe(replica.url, self.probe_timeout_s, replica.client._http)
        with replica.lock:
            was = replica.up
            replica.up, replica.problem, replica.checked_at = problem is None, problem or "", time.monotonic()
        if problem is not None and was is not False:
            log.warning(
                "environment replica %s fails its health check (%s): it gets no new sessions until it "
                "is healthy again; %d of %d replicas in use",
                replica.url,
                problem,
                sum(bool(r.up) for r in self.replicas),
                len(self.replicas),
            )
        elif problem is None and was is False:
            log.warning("environment replica %s is healthy again: new sessions go there too", replica.url)
        return problem is None

    def _refresh(self) -> None:
        """Probe the replicas never probed, and the skipped ones whose last probe is older than recheck_s.

        Many rollout lanes call this at once: the first probe of each replica is waited for by all of them
        (nobody may conclude that no replica is up before it is known), while a re-probe of a skipped
        replica is claimed by one lane and the others go on without it (a silent host takes the probe's
        whole timeout).
        """
        if any(r.up is None for r in self.replicas):
            with self._first_probe:
                for replica in self.replicas:
                    if replica.up is None:
                        self.check(replica)
        now = time.monotonic()
        due = []
        with self._lock:
            for replica in self.replicas:
                if replica.up is False and now - replica.checked_at >= self.recheck_s:
                    replica.checked_at = now  # claimed
                    due.append(replica)
        for replica in due:
            self.check(replica)

    def answers(self, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """Whether any replica's process answers HTTP at all (any status): the pool is alive."""
        for replica in self.replicas:
            try:
                replica.client._http.get("/health", timeout=timeout_s)
            except httpx.HTTPError:
                continue
            return True
        return False

    def wait_until_healthy(self, timeout_s: float = 120.0, grace_s: float = START_GRACE_S) -> HealthResponse:
        """Wait for the replicas; once one is healthy the others get ``grace_s`` more, then are skipped.

        Raises EnvServiceUnavailable, naming each replica's problem, when none is healthy in ``timeout_s``.
        """
        started = time.monotonic()
        deadline = started + max(timeout_s, 0.0)
        first_up: float | None = None
        while True:
            for replica in self.replicas:
                if not replica.up:
                    problem = probe(replica.url, self.probe_timeout_s, replica.client._http)
                    with replica.lock:
                        replica.up, replica.problem = problem is None, problem or ""
                        replica.checked_at = time.monotonic()
            now = time.monotonic()
            healthy = [r for r in self.replicas if r.up]
            if healthy and first_up is None:
                first_up = now
            if len(healthy) == len(self.replicas):
                break
            if healthy and (now - (first_up or now) >= grace_s or now >= deadline):
                break
            if now >= deadline:
                problems = "; ".join(f"{r.url}: {r.problem}" for r in self.replicas)
                raise EnvServiceUnavailable(
                    f"no replica of the environment pool was healthy within {timeout_s:.0f} s ({problems}). "
                    "Start them (`docker compose up --scale browsergym=N`, or one `browser-control serve-env` "
                    "per address) or correct BROWSERGYM_URL / browsergym_url"
                )
            time.sleep(0.5)
        for replica in self.replicas:
            if not replica.up:
                log.warning(
                    "environment replica %s fails its health check (%s): skipped; %d of %d replicas in use",
                    replica.url,
                    replica.problem,
                    len(healthy),
                    len(self.replicas),
                )
        return self.health()

    def health(self) -> HealthResponse:
        """The pool as one service: the healthy replicas' sessions and session caps added up."""
        self._refresh()
        answers = []
        for replica in self.replicas:
            if not replica.up:
                continue
            try:
                answers.append(replica.client.health())
            except (EnvServiceUnavailable, EnvRequestError) as exc:
                self._failed(replica, exc)
        if not answers:
            raise self._dead("GET /health")
        return HealthResponse(
            status="ok", sessions=sum(a.sessions for a in answers), max_sessions=sum(a.max_sessions for a in answers)
        )

    def tasks(self) -> list[str]:
        return self._on_any("GET /tasks", lambda client: client.tasks())

    # -- sessions ----------------------------------------------------------------------------------
    def reset(
        self,
        task_name: str,
        seed: int | None = None,
        session_id: str | None = None,
        max_episode_steps: int | None = None,
    ) -> ResetResponse:
        self._raise_if_dead()
        if session_id is not None:
            replica = self._replica_of(session_id)
            return self._bound_call(
                replica,
                session_id,
                lambda c: c.reset(task_name, seed=seed, session_id=session_id, max_episode_steps=max_episode_steps),
            )
        tried: set[str] = set()
        last: Exception | None = None
        while True:
            replica = self._choose(tried)
            if replica is None:
                if last is not None and self.answers():
                    raise last  # replicas answer but cannot start episodes: one episode's fault, not the run's
                raise self._dead("POST /reset", last)
            tried.add(replica.url)
            try:
                response = replica.client.reset(task_name, seed=seed, max_episode_steps=max_episode_steps)
            except (EnvServiceUnavailable, EnvRequestError) as exc:
                with self._lock:
                    replica.sessions -= 1  # _choose counted it
                if isinstance(exc, EnvRequestError):
                    raise
                last = exc  # dead, full (session_cap) or broken: the next replica may take it
                self._failed(replica, exc)
                continue
            with self._lock:
                self._bound[response.session_id] = replica
                replica.created += 1
            return response

    def step(self, session_id: str, action: str) -> StepResponse:
        self._raise_if_dead()
        replica = self._replica_of(session_id)
        return self._bound_call(replica, session_id, lambda c: c.step(session_id, action))

    def close_session(self, session_id: str) -> CloseResponse:
        with self._lock:
            replica = self._bound.pop(session_id, None)
            if replica is not None:
                replica.sessions -= 1
        if replica is None:
            raise EnvRequestError(404, "unknown_session", f"session {session_id} is not held by this pool")
        return replica.client.close_session(session_id)

    def sessions_by_replica(self) -> dict[str, int]:
        with self._lock:
            return {r.url: r.sessions for r in self.replicas}

    # -- internals ---------------------------------------------------------------------------------
    def _choose(self, exclude: set[str]) -> Replica | None:
        """The healthy replica with the fewest of our sessions (ties rotate); its count is taken at once."""
        self._refresh()
        with self._lock:
            n = len(self.replicas)
            candidates = [
                (r.sessions, (i - self._next) % n, i, r)
                for i, r in enumerate(self.replicas)
                if r.up and r.url not in exclude
            ]
            if not candidates:
                return None
            _, _, index, replica = min(candidates, key=lambda c: c[:3])
            self._next = (index + 1) % n
            replica.sessions += 1
            return replica

    def _replica_of(self, session_id: str) -> Replica:
        with self._lock:
            replica = self._bound.get(session_id)
        if replica is None:
            raise EnvRequestError(
                410,
                "session_lost",
                f"session {session_id} was on an environment replica that stopped answering",
                "reset without a session_id to start a new one on another replica",
            )
        return replica

    def _bound_call(self, replica: Replica, session_id: str, call: Any) -> Any:
        if replica.up is False:
            raise self._lost(replica, session_id, replica.problem)
        try:
            return call(replica.client)
        except EnvServiceUnavailable as exc:
            if self._failed(replica, exc):
                raise  # the replica still answers (one broken browser): the caller judges, as with one service
            raise self._lost(replica, session_id, str(exc)) from exc

    def _lost(self, replica: Replica, session_id: str, problem: str) -> Exception:
        """Forget a session of a dead replica; 410 when another replica can take over, else the pool is dead."""
        with self._lock:
            if self._bound.pop(session_id, None) is not None:
                replica.sessions -= 1
        self._refresh()
        if not any(r.up for r in self.replicas) and not self.answers():
            return self._dead("a session's call")
        return EnvRequestError(
            410,
            "session_lost",
            f"the environment replica at {replica.url} holding session {session_id} stopped answering ({problem})",
            "reset without a session_id: the new session goes to a healthy replica",
        )

    def _failed(self, replica: Replica, exc: Exception) -> bool:
        """After a call ran out of retries: probe the replica; True when it is still healthy."""
        return self.check(replica)

    def _on_any(self, what: str, call: Any) -> Any:
        self._raise_if_dead()
        self._refresh()
        last: Exception | None = None
        for replica in self.replicas:
            if not replica.up:
                continue
            try:
                return call(replica.client)
            except EnvServiceUnavailable as exc:
                last = exc
                self._failed(replica, exc)
        raise self._dead(what, last)

    def _raise_if_dead(self) -> None:
        self.dead.raise_if_tripped()

    def _dead(self, what: str, last: Exception | None = None) -> EnvServiceUnavailable:
        problems = "; ".join(f"{r.url}: {r.problem or 'failed'}" for r in self.replicas)
        error = EnvServiceUnavailable(
            f"no replica of the environment pool can serve {what} ({problems})"
            + (f"; last error: {last}" if last else "")
            + ". Check `docker compose logs browsergym` and restart the replicas"
        )
        if not self.answers():
            self.dead.trip(error)  # every later call fails at once instead of waiting through retries
        return error


def make_client(url: str, timeout_s: float = 60.0, retries: int = 4, backoff_s: float = 0.5) -> EnvClient | EnvPool:
    """An EnvPool for a comma-separated list of addresses, a plain EnvClient for one."""
    urls = parse_urls(url)
    if len(urls) > 1:
        return EnvPool(urls, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    return EnvClient(urls[0], timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
