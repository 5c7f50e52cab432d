"""Checks that fail a run before a model loads: the environment service is up, knows the tasks and has
room; optional packages exist; the model can be found. No torch, so ``train --dry-run`` runs them in seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import TYPE_CHECKING

from browser_control.client import EnvRequestError
from browser_control.env_pool import EnvPool, make_client
from browser_control.protocol import bare_task_name
from browser_control.training.plan import RunPlan, TrainingSetupError

if TYPE_CHECKING:
    from browser_control.models.source import ModelSource

log = logging.getLogger(__name__)


def wait_for_service(url: str, timeout_s: float, report_every_s: float = 10.0) -> None:
    """Poll GET /health until it answers 200, saying what is awaited and how long is left.

    A service that is still starting (Compose, or a serve-env launched a moment ago) is waited for; one
    that never comes is reported after ``timeout_s`` (env_wait_s) with the last problem seen.
    """
    import httpx

    from browser_control.client import EnvServiceUnavailable

    started = time.monotonic()
    deadline = started + max(timeout_s, 1.0)
    next_report = started
    problem = ""
    with httpx.Client(base_url=url, timeout=min(10.0, max(timeout_s, 1.0))) as http:
        while True:
            try:
                response = http.get("/health")
                if response.status_code == 200:
                    if problem:
                        log.info("environment service at %s is up after %.0f s", url, time.monotonic() - started)
                    return
                problem = f"GET /health answered {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            now = time.monotonic()
            if now >= deadline:
                raise EnvServiceUnavailable(
                    f"the environment service at {url} was not healthy within {timeout_s:.0f} s (env_wait_s): "
                    f"{problem}. Start it with `browser-control serve-env` (or `make fine-tune-local`, which "
                    "starts it in Docker), or set BROWSERGYM_URL / browsergym_url to where it runs"
                )
            if now >= next_report:
                log.warning(
                    "waiting for the environment service at %s (%s): %.0f s left of env_wait_s=%g; "
                    "start it with `browser-control serve-env`",
                    url,
                    problem,
                    deadline - now,
                    timeout_s,
                )
                next_report = now + report_every_s
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))


def preflight(plan: RunPlan) -> None:
    """Fail before loading a model: the service is up, knows the tasks, has room; optional packages exist."""
    config = plan.config
    if config.use_vllm and importlib.util.find_spec("vllm") is None:
        raise TrainingSetupError(
            "use_vllm: true but vLLM is not installed here. The CUDA training image ships it; elsewhere set "
            "use_vllm: false (generation with transformers) or pip install 'trl[vllm]'"
        )
    if config.use_vllm:
        from browser_control.models.vllm_setup import prepare_vllm_environment

        prepare_vllm_environment()
    if config.distributed != "ddp" and importlib.util.find_spec("deepspeed") is None:
        raise TrainingSetupError(f"distributed: {config.distributed} needs DeepSpeed: pip install deepspeed, or ddp")
    if config.use_peft and importlib.util.find_spec("peft") is None:
        raise TrainingSetupError("use_peft: true but peft is not installed: pip install peft")
    with make_client(config.browsergym_url, timeout_s=config.env_timeout_s, retries=config.env_retries) as client:
        # EnvServiceUnavailable propagates: the CLI reports it as the fatal "service unavailable" error.
        if isinstance(client, EnvPool):  # replicas: wait for one, give the others a grace, skip the rest
            health = client.wait_until_healthy(timeout_s=config.env_wait_s)
        else:
            wait_for_service(config.browsergym_url, config.env_wait_s)
            health = client.wait_until_healthy(timeout_s=max(config.env_timeout_s, 1.0))
        plan.service = health.model_dump()
        available = set(client.tasks())
        wanted = [t.name for t in config.tasks] + list(config.eval_tasks or [])
        unknown = [name for name in dict.fromkeys(wanted) if bare_task_name(name) not in available]
        if unknown:
            import difflib

            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, sorted(available), n=3, cutoff=0.6)
                hints.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise TrainingSetupError(
                f"tasks/eval_tasks: the environment service at {config.browsergym_url} does not know "
                f"{', '.join(hints)}; GET {config.browsergym_url}/tasks lists all {len(available)}"
            )
        if health.max_sessions < plan.environments_per_process * plan.world_size:
            raise TrainingSetupError(
                f"the environment service allows {health.max_sessions} sessions but this run keeps "
                f"{plan.environments_per_process * plan.world_size} episodes open at once "
                "(per_device_train_batch_size x gradient_accumulation_steps x processes): raise MAX_SESSIONS of "
                "the service, add replicas (docs/scaling.md) or lower the batch"
            )
        # One real episode start proves the service can serve the first task before a model is loaded.
        try:
            probe = client.reset(config.tasks[0].name, seed=0, max_episode_steps=config.max_episode_steps)
        except EnvRequestError as exc:
            raise TrainingSetupError(f"the environment service cannot start {config.tasks[0].name}: {exc}") from exc
        try:
            client.close_session(probe.session_id)
        except EnvRequestError:
            pass  # already reaped: nothing to free


def locate_model_or_fail(model_name: str) -> ModelSource:
    """Where model_name loads from, or TrainingSetupError at once: never minutes of Hub retries for a typo."""
    from browser_control.models.source import ModelNotFound, locate_model

    try:
        return locate_model(model_name)
    except ModelNotFound as exc:
        raise TrainingSetupError(f"model_name: {exc}") from None
