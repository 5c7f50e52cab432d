"""The HTTP contract between the environment service and its clients (trainer, evaluator, health checks).

This module is the only code the service and the trainer share. Changing a field here changes the wire
format: docs/http-api.md documents it and tests/test_env_service_contract.py pins it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_SEED = 2**31 - 1

# Where the service is when nothing says otherwise: `browser-control serve-env` on this machine.
DEFAULT_BROWSERGYM_URL = "http://127.0.0.1:8000"
# docker/compose.yaml sets it to the service's name on the Compose network.
BROWSERGYM_URL_VARIABLE = "BROWSERGYM_URL"
# Actions per episode when nothing says otherwise (training, SFT, demonstrations, evaluation alike). Ten,
# because the scripted policies need up to seven (click-checkboxes); every shipped config sets its own.
# The service itself truncates an episode only when a reset asks it to.
DEFAULT_MAX_EPISODE_STEPS = 10
# BrowserGym's namespace for MiniWoB task ids; the service accepts a task name with or without it.
TASK_PREFIX = "miniwob."


def service_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Where the environment service is: an explicit address, else BROWSERGYM_URL, else the local default.

    Every client resolves the address here, so an address given in code or on a command line is never
    silently replaced by the variable. (The training config folds BROWSERGYM_URL into its own value and
    passes that on as the explicit address: see training/config.py.)
    """
    environ = os.environ if environ is None else environ
    return explicit or environ.get(BROWSERGYM_URL_VARIABLE) or DEFAULT_BROWSERGYM_URL


def bare_task_name(name: str) -> str:
    """'miniwob.click-test' and ' click-test' name the task 'click-test' (what the service lists)."""
    return name.strip().removeprefix(TASK_PREFIX)


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
