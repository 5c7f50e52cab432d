"""HTTP client of the environment service, used by the trainer, the evaluator and the benchmarks.

Transient failures (connection refused while the service restarts, timeouts, 502/503/504) are retried
with exponential backoff; when retries run out the client raises :class:`EnvServiceUnavailable`, which
callers treat as fatal. Errors the service answers deliberately (unknown task, invalid action, ...)
raise :class:`EnvRequestError` at once, carrying the service's message.

Every attempt of one call carries the same ``Idempotency-Key``: a request that timed out on the client
may still be running on the service, and the key makes the service answer the retry with that request's
outcome instead of running the action (or creating the session) a second time.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from browser_control.protocol import (
    CloseResponse,
    HealthResponse,
    ResetResponse,
    StepResponse,
    TasksResponse,
)

RETRYABLE_STATUS = {502, 503, 504}
# The service runs a POST at most once per key (env_service/idempotency.py); kept here as a plain string so
# the client does not import the service.
IDEMPOTENCY_HEADER = "Idempotency-Key"


class EnvServiceUnavailable(RuntimeError):
    """The service cannot be reached or keeps failing: stop, do not train on zero rewards."""


class ServiceDeathLatch:
    """Remembers that the service was found dead, so every later call fails at once with the same error.

    One implementation for every place that must not forget it: a run's shared client (each rollout would
    otherwise wait through the whole retry backoff on its own) and an environment whose tool met the error
    (TRL turns a tool's exception into text for the model; ``get_reward`` raises it again).
    """

    def __init__(self) -> None:
        self.error: EnvServiceUnavailable | None = None

    def trip(self, exc: EnvServiceUnavailable) -> None:
        if self.error is None:
            self.error = exc

    def clear(self) -> None:
        self.error = None

    def raise_if_tripped(self) -> None:
        if self.error is not None:
            # A new exception each time: re-raising one instance splices every raise site into its traceback.
            raise EnvServiceUnavailable(str(self.error)) from self.error


class EnvRequestError(RuntimeError):
    """The service refused a request; ``message`` says why and ``hint`` how to fix it."""

    def __init__(self, status: int, error: str, message: str, hint: str | None = None):
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message, self.hint = status, error, message, hint


class EnvClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        client: httpx.Client | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = client or httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EnvClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, payload: dict[str, Any] | None = None, retry_on_session_cap: bool = False
    ) -> dict[str, Any]:
        last_problem = ""
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex} if method == "POST" else None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._http.request(method, path, json=payload, headers=headers)
            except httpx.TransportError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 400:
                return response.json()
            body = _json_or_text(response)
            error = body.get("error", "http_error")
            if response.status_code in RETRYABLE_STATUS and (error != "session_cap" or retry_on_session_cap):
                last_problem = f"{response.status_code} {error}: {body.get('message', '')}"
                continue
            raise EnvRequestError(response.status_code, error, body.get("message", str(body)), body.get("hint"))
        raise EnvServiceUnavailable(
            f"the environment service at {self.base_url} failed {self.retries + 1} times "
            f"({method} {path}); last problem: {last_problem}. Is it running? "
            "Check `docker compose logs browsergym` or start it with `browser-control serve-env`."
        )

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate(self._request("GET", "/health"))

    def tasks(self) -> list[str]:
        return TasksResponse.model_validate(self._request("GET", "/tasks")).tasks

    def reset(
        self,
        task_name: str,
        seed: int | None = None,
        session_id: str | None = None,
        max_episode_steps: int | None = None,
    ) -> ResetResponse:
        payload = {
            "task_name": task_name,
            "seed": seed,
            "session_id": session_id,
            "max_episode_steps": max_episode_steps,
        }
        return ResetResponse.model_validate(self._request("POST", "/reset", payload, retry_on_session_cap=True))

    def step(self, session_id: str, action: str) -> StepResponse:
        return StepResponse.model_validate(self._request("POST", "/step", {"session_id": session_id, "action": action}))

    def close_session(self, session_id: str) -> CloseResponse:
        return CloseResponse.model_validate(self._request("POST", "/close", {"session_id": session_id}))

    def wait_until_healthy(self, timeout_s: float = 120.0) -> HealthResponse:
        deadline = time.monotonic() + timeout_s
        problem = ""
        while time.monotonic() < deadline:
            try:
                response = self._http.get("/health")
                if response.status_code == 200:
                    return HealthResponse.model_validate(response.json())
                problem = _json_or_text(response).get("message", response.text[:200])
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise EnvServiceUnavailable(
            f"the environment service at {self.base_url} was not healthy within {timeout_s:.0f} s: {problem}"
        )


# How long a liveness probe waits: it only asks whether the service process answers at all.
PROBE_TIMEOUT_S = 5.0


def service_answers(client: EnvClient, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the service process answers HTTP at all (any status, even 503): then it is alive and only a
    browser or a session failed, which costs one episode; a service that does not answer ends the run."""
    pool_answers = getattr(client, "answers", None)  # an EnvPool (env_pool.py): any replica answering counts
    if callable(pool_answers):
        return bool(pool_answers(timeout_s))
    http = getattr(client, "_http", None)
    if not isinstance(http, httpx.Client):
        return False
    try:
        http.get("/health", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True


def _json_or_text(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:500]}
    return body if isinstance(body, dict) else {"message": str(body)[:500]}
