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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from browser_control.env_service.actions import ActionError, describe_actions
from browser_control.env_service.browser import (
    BrowserOptions,
    BrowserUnavailableError,
    EpisodeOverError,
    SessionLostError,
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
        description="MiniWoB++ tasks of browsergym-miniwob over HTTP. Actions accepted:\n\n"
        + describe_actions(),
        version="1",
        lifespan=lifespan,
    )

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

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(problems)[:1000],
                      "send a JSON object as documented in docs/http-api.md")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal_error", f"{type(exc).__name__}: {str(exc)[:300]}",
                      "the session may be broken: POST /reset to start a new one")

    @app.get("/health", response_model=HealthResponse,
             responses={503: {"model": ErrorResponse}})
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

    @app.post("/reset", response_model=ResetResponse,
              responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def reset(body: ResetRequest, request: Request) -> ResetResponse:
        request.state.log_fields.update(task=body.task_name[:100], seed=body.seed)
        session_id, result = await manager(request).reset(
            body.task_name, body.seed, body.session_id, body.max_episode_steps
        )
        request.state.log_fields.update(session_id=session_id)
        return ResetResponse(session_id=session_id, **result)

    @app.post("/step", response_model=StepResponse,
              responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}})
    async def step(body: StepRequest, request: Request) -> StepResponse:
        request.state.log_fields.update(session_id=body.session_id[:64], action=body.action[:120])
        result = await manager(request).step(body.session_id, body.action)
        request.state.log_fields.update(reward=result.reward, done=result.done, step=result.step)
        return StepResponse(
            observation=result.observation, reward=result.reward, done=result.done,
            truncated=result.truncated, step=result.step,
        )

    @app.post("/close", response_model=CloseResponse, responses={404: {"model": ErrorResponse}})
    async def close(body: CloseRequest, request: Request) -> CloseResponse:
        request.state.log_fields.update(session_id=body.session_id[:64])
        await manager(request).close(body.session_id)
        return CloseResponse(ok=True)

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
