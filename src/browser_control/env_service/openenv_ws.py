"""OpenEnv's WebSocket protocol on `/ws`, so OpenEnv's `BrowserGymEnv` and `GenericEnvClient` (and TRL's
OpenEnv examples built on them) train against this service unchanged.

One connection is one session of the shared :class:`SessionManager`: the same cap, the same worker
threads, the same idle expiry as the HTTP API, and the session is closed when the connection ends for
any reason. The frames are OpenEnv 0.10's (`openenv.core.env_server.types`, the `BrowserGymObservation`
and `BrowserGymState` of its browsergym env); docs/http-api.md documents them and tests/test_openenv_ws.py
drives them with OpenEnv's own client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketState

from browser_control.env_service.actions import ActionError
from browser_control.env_service.browser import BrowserUnavailableError, SessionLostError
from browser_control.env_service.sessions import ServiceError, SessionManager
from browser_control.env_service.tasks import UnknownTaskError
from browser_control.protocol import MAX_SEED

log = logging.getLogger("browser_control.env_service")
access_log = logging.getLogger("browser_control.env_service.access")

PATH = "/ws"
# RFC 6455 "try again later": the server is at its session cap.
CLOSE_TRY_AGAIN_LATER = 1013


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- client frames ---------------------------------------------------------------------------------
class ResetData(_Strict):
    task_name: str | None = Field(
        None,
        max_length=200,
        description="'click-test' or 'miniwob.click-test'; omitted, the connection's last task",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same task + seed = same page")
    episode_id: str | None = Field(None, max_length=200, description="Echoed by `state`; drawn if omitted")


class StepData(_Strict):
    # The action whitelist enforces its own, smaller limit with a message the model can act on.
    action_str: str = Field(max_length=100_000, description="One action call, e.g. click('13')")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Accepted and ignored")


class ResetFrame(_Strict):
    type: Literal["reset"]
    data: ResetData = Field(default_factory=ResetData)


class StepFrame(_Strict):
    type: Literal["step"]
    data: StepData


class StateRequestFrame(_Strict):
    type: Literal["state"]


class CloseFrame(_Strict):
    type: Literal["close"]


ClientFrame = ResetFrame | StepFrame | StateRequestFrame | CloseFrame
_CLIENT_FRAMES: dict[str, type[ClientFrame]] = {
    "reset": ResetFrame, "step": StepFrame, "state": StateRequestFrame, "close": CloseFrame,
}  # fmt: skip


# -- server frames ---------------------------------------------------------------------------------
class OpenEnvObservation(BaseModel):
    """OpenEnv's `BrowserGymObservation` without `reward`/`done`, which travel beside it."""

    text: str = Field(description="The page as text: the accessibility tree, as in axtree_txt")
    url: str
    screenshot: list[list[list[int]]] | None = Field(
        None, description="RGB pixels [height][width][3]; only when the service runs with --screenshots"
    )
    goal: str
    axtree_txt: str
    pruned_html: str = Field("", description="Always empty: the service extracts no DOM text")
    error: str = Field("", description="Why the last action failed, '' if it did not")
    last_action_error: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class ObservationData(BaseModel):
    observation: OpenEnvObservation
    reward: float | None
    done: bool


class ObservationFrame(BaseModel):
    type: Literal["observation"] = "observation"
    data: ObservationData


class StateData(BaseModel):
    """OpenEnv's `BrowserGymState`, plus the seed so that any episode can be replayed."""

    episode_id: str | None = None
    step_count: int = 0
    benchmark: str = "miniwob"
    task_name: str = ""
    task_id: str | None = None
    goal: str = ""
    current_url: str = ""
    max_steps: int | None = None
    cum_reward: float = 0.0
    seed: int | None = None


class StateFrame(BaseModel):
    type: Literal["state"] = "state"
    data: StateData


class ErrorCode(StrEnum):
    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    EXECUTION_ERROR = "EXECUTION_ERROR"
    CAPACITY_REACHED = "CAPACITY_REACHED"


class ErrorData(BaseModel):
    message: str
    code: ErrorCode
    active_sessions: int | None = None
    max_sessions: int | None = None


class ErrorFrame(BaseModel):
    type: Literal["error"] = "error"
    data: ErrorData


ServerFrame = ObservationFrame | StateFrame | ErrorFrame


class _FrameError(Exception):
    """A frame that gets an error frame back; the connection stays open unless `close` is set."""

    def __init__(self, code: ErrorCode, message: str, close: bool = False, **extra: int):
        super().__init__(message)
        self.frame = ErrorFrame(data=ErrorData(message=message[:2000], code=code, **extra))
        self.close = close


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "frame"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(problems)


def _decode_png(png_b64: str) -> list[list[list[int]]]:
    # OpenEnv's observation carries pixels, not PNG bytes; Pillow comes with browsergym-core.
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(png_b64))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).tolist()


# -- one connection --------------------------------------------------------------------------------
@dataclass
class _Episode:
    episode_id: str
    task_name: str
    seed: int
    page: OpenEnvObservation
    step_count: int = 0
    cum_reward: float = 0.0
    over: str = ""  # why no more actions are taken ('' while the episode runs)


@dataclass
class _Waiting:
    """Connections admitted under the cap that have no session yet (their first reset makes it): they
    count against the cap for later connections, so admission at connect is exact for /ws clients."""

    count: int = 0


class _Connection:
    def __init__(self, manager: SessionManager, waiting: _Waiting):
        self.manager = manager
        self.waiting = waiting
        self.admitted = False  # holds one of `waiting`'s places
        self.session_id: str | None = None
        self.task_name: str | None = None
        self.episode: _Episode | None = None
        self.last_type: str | None = None  # for the access log

    async def handle(self, raw: str) -> tuple[ServerFrame | None, bool]:
        """The reply to one frame (None for none) and whether the connection stays open."""
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _FrameError(ErrorCode.INVALID_JSON, f"Invalid JSON: {exc}") from None
        kind = payload.get("type") if isinstance(payload, dict) else None
        self.last_type = kind if isinstance(kind, str) else None
        if kind not in _CLIENT_FRAMES:
            shown = json.dumps(kind)[:100] if kind is not None else "none"
            raise _FrameError(
                ErrorCode.UNKNOWN_TYPE,
                f"Unknown message type: {shown}; a frame is a JSON object whose 'type' is one of "
                + ", ".join(_CLIENT_FRAMES),
            )
        try:
            frame = _CLIENT_FRAMES[kind].model_validate(payload)
        except ValidationError as exc:
            raise _FrameError(
                ErrorCode.VALIDATION_ERROR,
                f"Invalid {kind} frame: {_validation_message(exc)} (see docs/http-api.md, /ws)",
            ) from None
        if isinstance(frame, ResetFrame):
            return await self.reset(frame.data), True
        if isinstance(frame, StepFrame):
            return await self.step(frame.data), True
        if isinstance(frame, StateRequestFrame):
            return self.state(), True
        return None, False

    async def reset(self, data: ResetData) -> ObservationFrame:
        task_name = data.task_name or self.task_name
        if task_name is None:
            raise _FrameError(
                ErrorCode.VALIDATION_ERROR,
                "the first reset of a connection needs a task: "
                '{"type": "reset", "data": {"task_name": "click-test"}}; later resets reuse it',
            )
        try:
            try:
                session_id, result = await self.manager.reset(task_name, data.seed, self.session_id, None)
            except ServiceError as exc:
                if exc.error != "unknown_session":
                    raise
                # The session expired while idle (SESSION_TTL_S) or a failed reset closed it: start afresh.
                self.session_id = None
                session_id, result = await self.manager.reset(task_name, data.seed, None, None)
        except UnknownTaskError as exc:  # refused before any browser work: the episode is untouched
            raise _FrameError(ErrorCode.EXECUTION_ERROR, f"unknown task '{exc.name[:100]}': {exc.hint}") from None
        except ServiceError as exc:
            if exc.error == "session_cap":
                raise self._capacity_error() from None
            await self._drop_episode()
            raise _FrameError(ErrorCode.EXECUTION_ERROR, exc.message) from None
        except (BrowserUnavailableError, SessionLostError) as exc:
            await self._drop_episode()
            raise _FrameError(ErrorCode.EXECUTION_ERROR, f"reset failed: {exc}") from None
        self.session_id = session_id
        self._leave_waiting()
        self.task_name = result["task_name"]
        page = await self._page(result["observation"], result["task_name"], result["seed"])
        self.episode = _Episode(
            episode_id=data.episode_id or uuid.uuid4().hex,
            task_name=result["task_name"],
            seed=result["seed"],
            page=page,
        )
        return ObservationFrame(data=ObservationData(observation=page, reward=0.0, done=False))

    async def step(self, data: StepData) -> ObservationFrame:
        episode = self.episode
        if episode is None or self.session_id is None:
            raise _FrameError(
                ErrorCode.EXECUTION_ERROR,
                'no episode on this connection yet: send {"type": "reset", "data": {"task_name": ...}} first',
            )
        if episode.over:
            return self._episode_over(episode)
        try:
            result = await self.manager.step(self.session_id, data.action_str)
        except ActionError as exc:
            # A refused action is the model's mistake, not a protocol error: it is a step that changed
            # nothing, and the model reads why in `error`.
            episode.step_count += 1
            episode.page = episode.page.model_copy(
                update={"error": f"invalid action: {exc}", "last_action_error": True}
            )
            return ObservationFrame(data=ObservationData(observation=episode.page, reward=0.0, done=False))
        except ServiceError as exc:
            if exc.error == "episode_over":
                episode.over = exc.message
                return self._episode_over(episode)
            if exc.error == "unknown_session":
                self.session_id, self.episode = None, None
                raise _FrameError(
                    ErrorCode.EXECUTION_ERROR,
                    "this connection's session is gone (closed by the service, or after "
                    f"{self.manager.session_ttl_s:.0f} s idle, SESSION_TTL_S): send reset to start a new episode",
                ) from None
            raise _FrameError(ErrorCode.EXECUTION_ERROR, exc.message) from None
        except (SessionLostError, BrowserUnavailableError) as exc:
            raise _FrameError(
                ErrorCode.EXECUTION_ERROR,
                f"the session's browser stopped ({type(exc).__name__}): send reset to start a new episode",
            ) from None
        episode.step_count += 1
        episode.cum_reward += result.reward
        episode.page = await self._page(result.observation, episode.task_name, episode.seed)
        done = result.done or result.truncated
        if done:
            episode.over = (
                "the episode is over (task done); send reset to start a new one"
                if result.done
                else "the episode is over (step limit reached); send reset to start a new one"
            )
        return ObservationFrame(data=ObservationData(observation=episode.page, reward=result.reward, done=done))

    def state(self) -> StateFrame:
        episode = self.episode
        if episode is None:
            return StateFrame(data=StateData())
        return StateFrame(
            data=StateData(
                episode_id=episode.episode_id,
                step_count=episode.step_count,
                task_name=episode.task_name,
                goal=episode.page.goal,
                current_url=episode.page.url,
                cum_reward=episode.cum_reward,
                seed=episode.seed,
            )
        )

    def admit(self) -> bool:
        if self.manager.session_count + self.waiting.count >= self.manager.max_sessions:
            return False
        self.waiting.count += 1
        self.admitted = True
        return True

    def _leave_waiting(self) -> None:
        if self.admitted:
            self.waiting.count -= 1
            self.admitted = False

    async def release(self) -> None:
        self._leave_waiting()
        session_id, self.session_id = self.session_id, None
        if session_id is not None:
            try:
                await self.manager.close(session_id, missing_ok=True)
            except Exception:
                log.exception("closing the session of a /ws connection failed", extra={"session_id": session_id})

    async def _drop_episode(self) -> None:
        """After a failed reset nothing of the old episode is valid; the next reset starts afresh."""
        self.episode = None
        await self.release()

    def _capacity_error(self) -> _FrameError:
        return _FrameError(
            ErrorCode.CAPACITY_REACHED,
            f"all {self.manager.max_sessions} sessions are in use; reconnect later or raise MAX_SESSIONS",
            close=True,
            active_sessions=self.manager.session_count + self.waiting.count - self.admitted,
            max_sessions=self.manager.max_sessions,
        )

    def _episode_over(self, episode: _Episode) -> ObservationFrame:
        # Nothing runs on the page after the end: the last page again, no new reward.
        page = episode.page.model_copy(update={"metadata": {**episode.page.metadata, "episode_over": episode.over}})
        return ObservationFrame(data=ObservationData(observation=page, reward=0.0, done=True))

    async def _page(self, observation: dict[str, Any], task_name: str, seed: int) -> OpenEnvObservation:
        png = observation.get("screenshot_png_b64")
        screenshot = await asyncio.to_thread(_decode_png, png) if png else None
        error = observation.get("last_action_error") or ""
        return OpenEnvObservation(
            text=observation["axtree_txt"],
            url=observation["url"],
            screenshot=screenshot,
            goal=observation["goal"],
            axtree_txt=observation["axtree_txt"],
            error=error,
            last_action_error=bool(error),
            metadata={"task_name": task_name, "seed": seed},
        )


async def _send(websocket: WebSocket, frame: ServerFrame) -> None:
    await websocket.send_text(frame.model_dump_json(exclude_none=isinstance(frame, ErrorFrame)))


def _text_of(message: dict[str, Any]) -> str:
    if message.get("text") is not None:
        return message["text"]
    try:
        return (message.get("bytes") or b"").decode()
    except UnicodeDecodeError:
        raise _FrameError(ErrorCode.INVALID_JSON, "Invalid JSON: a binary frame that is not UTF-8 text") from None


def mount(app: FastAPI) -> None:
    """Serve OpenEnv's protocol on `/ws`; the app's lifespan must set `app.state.manager`."""

    waiting = _Waiting()

    @app.websocket(PATH)
    async def openenv_ws(websocket: WebSocket) -> None:
        manager: SessionManager = websocket.app.state.manager
        connection = _Connection(manager, waiting)
        # A session needs a task, so the first reset makes it; until then the connection holds a place
        # that only other /ws connections see, taken before the handshake completes so that a client
        # that connects next is counted against it. HTTP clients can still take the last slot meanwhile:
        # that first reset then answers CAPACITY_REACHED and closes, as a refusal at connect does.
        admitted = connection.admit()
        connection_id = uuid.uuid4().hex[:12]
        close_code = 1000
        frames = 0
        try:
            await websocket.accept()
            if not admitted:
                refusal = connection._capacity_error()
                await _send(websocket, refusal.frame)
                close_code = CLOSE_TRY_AGAIN_LATER
                return
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                frames += 1
                started = time.perf_counter()
                fields: dict[str, Any] = {}
                connection.last_type = None
                try:
                    reply, keep_open = await connection.handle(_text_of(message))
                except _FrameError as exc:
                    reply, keep_open = exc.frame, not exc.close
                    fields["error"] = exc.frame.data.code.value
                    if exc.close:
                        close_code = CLOSE_TRY_AGAIN_LATER
                except Exception as exc:
                    # Our own fault, never the client's: say so, keep the connection; a reset recovers.
                    log.exception("/ws frame failed", extra={"request_id": connection_id})
                    reply, keep_open = (
                        ErrorFrame(
                            data=ErrorData(
                                code=ErrorCode.EXECUTION_ERROR,
                                message=f"{type(exc).__name__}: {str(exc)[:300]}; the episode may be broken: reset",
                            )
                        ),
                        True,
                    )
                    fields["error"] = ErrorCode.EXECUTION_ERROR.value
                if isinstance(reply, ObservationFrame):
                    fields.update(reward=reply.data.reward, done=reply.data.done)
                if reply is not None:
                    await _send(websocket, reply)
                access_log.info(
                    "ws frame",
                    extra={
                        "request_id": connection_id,
                        "path": PATH,
                        "session_id": connection.session_id,
                        "frame": frames,
                        "type": (connection.last_type or "?")[:20],
                        "duration_ms": round(1000 * (time.perf_counter() - started), 1),
                        **fields,
                    },
                )
                if not keep_open:
                    break
        except WebSocketDisconnect:
            pass  # the client went away mid-reply: the session is freed below all the same
        except Exception:
            log.exception("/ws connection failed", extra={"request_id": connection_id})
        finally:
            await connection.release()
            if websocket.client_state == WebSocketState.CONNECTED:
                try:
                    await websocket.close(code=close_code)
                except Exception:
                    pass  # the client closed first
