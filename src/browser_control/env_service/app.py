"""FastAPI application: routes, error mapping and per-request structured logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from browser_control.env_service import openenv_ws
from browser_control.env_service.actions import ActionError, describe_actions
from browser_control.env_service.browser import (
    BrowserOptions,
    BrowserUnavailableError,
    EpisodeOverError,
    SessionLostError,
)
from browser_control.env_service.idempotency import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    IdempotencyKeyReused,
    RequestDeduplicator,
)
from browser_control.env_service.sessions import ServiceError, SessionManager
from browser_control.env_service.tasks import UnknownTaskError, task_classes
from browser_control.protocol import (
    CloseRequest,
    CloseResponse,
    ErrorResponse,
    HealthResponse,
    ResetRequest,
    ResetResponse,
    StepRequest,
    StepResponse,
    TasksResponse,
)

log = logging.getLogger("browser_control.env_service")
access_log = logging.getLogger("browser_control.env_service.access")


@dataclass(frozen=True)
class ServiceSettings:
    max_sessions: int = 32
    session_ttl_s: float = 600.0
    workers: int = 4
    chromium_executable: str | None = None
    max_obs_chars: int = 8_000
    screenshots: bool = False
    reap_interval_s: float = 10.0
    settle_timeout_ms: int = 1_000
    job_deadline_s: float = 60.0
    # How long a keyed request's outcome is kept for its retries: longer than any client's retry window.
    idempotency_ttl_s: float = 600.0


ENDPOINTS_HINT = "endpoints: GET /health, GET /tasks, POST /reset, POST /step, POST /close (see /docs)"

# Typed str with a None default where used, not str | None: OpenAPI then documents a plain optional string
# header; a nullable one makes generators send the text "null", which the pattern rightly refuses.
IdempotencyKey = Annotated[
    str,
    Header(
        alias=IDEMPOTENCY_HEADER,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Any random id (8-64 of A-Z a-z 0-9 _ . : -), the same on every retry of one call: the "
        "request then runs at most once, and a retry gets the first attempt's response",
    ),
]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


def _rerun_after(exc: BaseException) -> bool:
    """503s mean nothing ran and the client should retry: such outcomes are not replayed."""
    return isinstance(exc, BrowserUnavailableError) or (isinstance(exc, ServiceError) and exc.status == 503)


def _error(status: int, error: str, message: str, hint: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=error, message=message, hint=hint).model_dump(exclude_none=True)
    return JSONResponse(status_code=status, content=body)


def create_app(settings: ServiceSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = SessionManager(
            workers=settings.workers,
            max_sessions=settings.max_sessions,
            session_ttl_s=settings.session_ttl_s,
            options=BrowserOptions(
                chromium_executable=settings.chromium_executable,
                max_obs_chars=settings.max_obs_chars,
                screenshots=settings.screenshots,
                settle_timeout_ms=settings.settle_timeout_ms,
                job_deadline_s=settings.job_deadline_s,
            ),
        )
        app.state.manager = manager
        await manager.start()

        async def reaper() -> None:
            while True:
                await asyncio.sleep(settings.reap_interval_s)
                try:
                    await manager.reap_idle()
                except Exception:
                    log.exception("reaping idle sessions failed")

        reaper_task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            reaper_task.cancel()
            await manager.stop()

    app = FastAPI(
        title="browser-control BrowserGym service",
        description="MiniWoB++ tasks of browsergym-miniwob over HTTP. Actions accepted:\n\n" + describe_actions(),
        version="1",
        lifespan=lifespan,
    )

    dedup = RequestDeduplicator(ttl_s=settings.idempotency_ttl_s, rerun_after=_rerun_after)
    app.state.dedup = dedup

    def manager(request: Request) -> SessionManager:
        return request.app.state.manager

    @app.middleware("http")
    async def access_logger(request: Request, call_next):  # type: ignore[no-untyped-def]
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        request.state.log_fields = {}
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["x-request-id"] = request_id
            return response
        finally:
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": request.method,
                    "path": request.url.path,
                    "status": status,
                    "duration_ms": round(1000 * (time.perf_counter() - started), 1),
                    **request.state.log_fields,
                },
            )

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.message, exc.hint)

    @app.exception_handler(UnknownTaskError)
    async def _unknown_task(_: Request, exc: UnknownTaskError) -> JSONResponse:
        return _error(404, "unknown_task", f"unknown task '{exc.name[:100]}'", exc.hint)

    @app.exception_handler(ActionError)
    async def _invalid_action(_: Request, exc: ActionError) -> JSONResponse:
        return _error(422, "invalid_action", str(exc), "allowed actions:\n" + describe_actions())

    @app.exception_handler(EpisodeOverError)
    async def _episode_over(_: Request, exc: EpisodeOverError) -> JSONResponse:
        return _error(409, "episode_over", str(exc))

    @app.exception_handler(SessionLostError)
    async def _session_lost(_: Request, exc: SessionLostError) -> JSONResponse:
        return _error(410, "session_lost", str(exc))

    @app.exception_handler(BrowserUnavailableError)
    async def _browser_unavailable(_: Request, exc: BrowserUnavailableError) -> JSONResponse:
        return _error(503, "browser_unavailable", str(exc))

    @app.exception_handler(IdempotencyKeyReused)
    async def _key_reused(_: Request, exc: IdempotencyKeyReused) -> JSONResponse:
        return _error(
            422,
            "idempotency_key_reused",
            f"{IDEMPOTENCY_HEADER} '{str(exc)[:64]}' was already used for a different request",
            "send a new random key for every new call; reuse a key only to retry the same call",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path[:200]
        if exc.status_code == 404:
            return _error(404, "not_found", f"there is no endpoint {path}", ENDPOINTS_HINT)
        if exc.status_code == 405:
            response = _error(405, "method_not_allowed", f"{request.method} is not allowed on {path}", ENDPOINTS_HINT)
            response.headers.update(exc.headers or {})
            return response
        if exc.status_code == 400:
            # Starlette's body parser answers 400 for bodies json.loads cannot take (not UTF-8, nested
            # too deep); to a client that is the same mistake as any other malformed JSON.
            return _error(
                422,
                "invalid_request",
                "the request body is not JSON that can be read: it must be UTF-8 text holding one "
                "JSON object, not nested deeper than a few levels",
                "send a JSON object as documented in docs/http-api.md",
            )
        return _error(exc.status_code, "http_error", str(exc.detail)[:300])

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(
            422, "invalid_request", "; ".join(problems)[:1000], "send a JSON object as documented in docs/http-api.md"
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(
            500,
            "internal_error",
            f"{type(exc).__name__}: {str(exc)[:300]}",
            "the session may be broken: POST /reset to start a new one",
        )

    @app.get("/health", response_model=HealthResponse, responses=_errors(503))
    async def health(request: Request) -> JSONResponse:
        m = manager(request)
        ok, detail = await m.health()
        if not ok:
            return _error(503, "unhealthy", detail, "see the service log for the browser error")
        body = HealthResponse(status="ok", sessions=m.session_count, max_sessions=m.max_sessions)
        return JSONResponse(body.model_dump())

    @app.get("/tasks", response_model=TasksResponse)
    async def tasks() -> TasksResponse:
        return TasksResponse(tasks=sorted(task_classes()))

    @app.post("/reset", response_model=ResetResponse, responses=_errors(404, 410, 422, 500, 503))
    async def reset(body: ResetRequest, request: Request, idempotency_key: IdempotencyKey = None) -> ResetResponse:
        request.state.log_fields.update(task=body.task_name[:100], seed=body.seed)

        async def work() -> ResetResponse:
            session_id, result = await manager(request).reset(
                body.task_name, body.seed, body.session_id, body.max_episode_steps
            )
            return ResetResponse(session_id=session_id, **result)

        response, replayed = await dedup.run(idempotency_key, "/reset " + body.model_dump_json(), work)
        request.state.log_fields.update(session_id=response.session_id, replayed=replayed)
        return response

    @app.post("/step", response_model=StepResponse, responses=_errors(404, 409, 410, 422, 500, 503))
    async def step(body: StepRequest, request: Request, idempotency_key: IdempotencyKey = None) -> StepResponse:
        request.state.log_fields.update(session_id=body.session_id[:64], action=body.action[:120])

        async def work() -> StepResponse:
            result = await manager(request).step(body.session_id, body.action)
            return StepResponse(
                observation=result.observation,
                reward=result.reward,
                done=result.done,
                truncated=result.truncated,
                step=result.step,
            )

        response, replayed = await dedup.run(idempotency_key, "/step " + body.model_dump_json(), work)
        request.state.log_fields.update(
            reward=response.reward, done=response.done, step=response.step, replayed=replayed
        )
        return response

    @app.post("/close", response_model=CloseResponse, responses=_errors(404, 422, 500))
    async def close(body: CloseRequest, request: Request, idempotency_key: IdempotencyKey = None) -> CloseResponse:
        request.state.log_fields.update(session_id=body.session_id[:64])

        async def work() -> CloseResponse:
            await manager(request).close(body.session_id)
            return CloseResponse(ok=True)

        response, _replayed = await dedup.run(idempotency_key, "/close " + body.model_dump_json(), work)
        return response

    openenv_ws.mount(app)  # OpenEnv's WebSocket protocol on /ws, over the same sessions
    return app


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: easy to grep, and `docker compose logs` stays readable."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("browser_control")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
