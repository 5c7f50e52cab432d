"""The HTTP contract between the environment service and its clients (trainer, evaluator, health checks).

This module is the only code the service and the trainer share. Changing a field here changes the wire
format: docs/http-api.md documents it and tests/test_env_service_contract.py pins it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_SEED = 2**31 - 1


def _json_integer(value: Any) -> Any:
    # Lax parsing would take `"seed": true` as 1 and `"5"` as 5, turning a client bug into a silently
    # different episode. A JSON number with no fraction (5 or 5.0) is an integer, as JSON Schema says.
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer (not true/false, not a string)")
    return value


# Bounds inside the Annotated, so they reach the integer schema (and OpenAPI's minimum/maximum).
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_json_integer)]
EpisodeSteps = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_json_integer)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Observation(BaseModel):
    goal: str = Field(description="The task instruction, e.g. 'Click the button.'")
    axtree_txt: str = Field(description="Accessibility tree as text; [bid] prefixes name clickable nodes")
    url: str
    last_action_error: str = Field("", description="'' or 'ExcType: message' from the last action")
    screenshot_png_b64: str | None = Field(None, description="Only when the service runs with screenshots")


class ResetRequest(_Strict):
    task_name: str = Field(description="'click-test' or 'miniwob.click-test'", max_length=200)
    seed: Seed | None = Field(None, description="Same task + seed = same page")
    session_id: str | None = Field(None, max_length=64, description="Reset this session in place")
    max_episode_steps: EpisodeSteps | None = Field(None, description="Steps after which the episode is truncated")


class ResetResponse(BaseModel):
    session_id: str
    task_name: str
    seed: int
    observation: Observation
    reward: float = 0.0
    done: bool = False


class StepRequest(_Strict):
    session_id: str = Field(max_length=64)
    # The whitelist enforces its own, smaller limit with a helpful message; this one only stops abuse.
    action: str = Field(max_length=100_000)


class StepResponse(BaseModel):
    observation: Observation
    reward: float
    done: bool
    truncated: bool
    step: int = Field(description="Actions taken in this episode, this one included")


class CloseRequest(_Strict):
    session_id: str = Field(max_length=64)


class CloseResponse(BaseModel):
    ok: bool


class HealthResponse(BaseModel):
    status: str
    sessions: int
    max_sessions: int


class TasksResponse(BaseModel):
    tasks: list[str]


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable kind: unknown_task, invalid_action, ...")
    message: str = Field(description="What went wrong and how to fix it")
    hint: str | None = None
