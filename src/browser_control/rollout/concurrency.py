"""Run the environment calls of all rollouts concurrently inside TRL's GRPOTrainer, without forking it.

TRL 1.16 resets every rollout's environment one after another and, in ``_tool_call_loop``, calls the tools
of one rollout after another, each blocking on the service. With 16-64 rollouts per step the browser
latency adds up serially. Two small, version-pinned hooks make it concurrent:

1. **Deferred tool results.** While a trainer turn is being played, a tool returns a placeholder token at
   once and its HTTP call runs on the environment's own lane (one thread per environment, so one
   rollout's calls keep their order). TRL first calls the tools of *every* rollout of the turn, then
   tokenises each rollout's tool messages through ``GRPOTrainer._get_tool_suffix_ids``; the mixin below
   overrides that method to swap each placeholder for its real result first. So all calls of a turn are
   in flight together and the turn costs about one call's latency instead of the sum.
2. **Prefetched resets.** Before ``_generate_and_score_completions`` the mixin hands out environments the
   way TRL does (the pool, in order) and starts every ``reset`` concurrently; TRL's own serial ``reset``
   calls then collect the results. A reset whose arguments differ from the prefetched one simply runs.

If a TRL upgrade stopped calling either hook, placeholders would reach the model: the mixin therefore
checks after every generation batch that nothing is left unresolved and fails loudly if so, and
tests/test_concurrent_rollouts.py pins the behaviour against the installed TRL.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from browser_control.client import EnvServiceUnavailable

log = logging.getLogger(__name__)

# The TRL releases whose GRPOTrainer internals the hooks were read from and tested against.
TESTED_TRL_VERSIONS = ("1.16.0",)
PLACEHOLDER_PREFIX = "\x00browser-control:pending-tool-result:"


class ConcurrentRollouts:
    """Lanes (one single-thread executor per environment), pending tool results and prefetched resets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lanes: dict[int, ThreadPoolExecutor] = {}
        self._pending: dict[str, Future[str]] = {}
        self._resets: dict[int, tuple[tuple[str, int], Future[str]]] = {}
        self.deferred_calls = 0
        self.prefetched_resets = 0
        # Seconds the trainer spent blocked on environment results (summed per generation batch).
        self.env_wait_s = 0.0

    def _lane(self, env: object) -> ThreadPoolExecutor:
        with self._lock:
            lane = self._lanes.get(id(env))
            if lane is None:
                lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"env-lane-{len(self._lanes)}")
                self._lanes[id(env)] = lane
            return lane

    def defer(self, env: object, call: Callable[[], str]) -> str:
        """Start ``call`` on the environment's lane and return a placeholder for its result."""
        future = self._lane(env).submit(call)
        token = PLACEHOLDER_PREFIX + uuid.uuid4().hex
        with self._lock:
            self._pending[token] = future
            self.deferred_calls += 1
        return token

    def resolve(self, content: Any) -> Any:
        """The real tool result for a placeholder; anything else is returned unchanged.

        A failing tool becomes ``{'error': ...}`` text, as TRL does for the tools it calls itself; a dead
        environment service is re-raised, because training on episodes that never ran is worse than stopping.
        """
        if not isinstance(content, str) or not content.startswith(PLACEHOLDER_PREFIX):
            return content
        with self._lock:
            future = self._pending.pop(content)
        started = time.perf_counter()
        try:
            return future.result()
        except EnvServiceUnavailable:
            raise
        except Exception as exc:
            return str({"error": str(exc)})
        finally:
            self.env_wait_s += time.perf_counter() - started

    def drain(self, env: object) -> None:
        """Wait until every call already started for ``env`` has finished."""
        lane = self._lanes.get(id(env))
        if lane is not None:
            lane.submit(lambda: None).result()

    def prefetch_resets(self, envs: Sequence[Any], rows: Sequence[dict[str, Any]]) -> None:
        for env, row in zip(envs, rows, strict=False):
            if "task_name" not in row or "seed" not in row:
                continue
            key = (str(row["task_name"]), int(row["seed"]))
            future = self._lane(env).submit(env._reset_now, *key)
            with self._lock:
                self._resets[id(env)] = (key, future)
                self.prefetched_resets += 1

    def take_reset(self, env: object, task_name: str, seed: int) -> str | None:
        """The prefetched first observation for this exact reset, or None when there is none."""
        with self._lock:
            entry = self._resets.pop(id(env), None)
        if entry is None:
            return None
        key, future = entry
        started = time.perf_counter()
        observation = future.result()  # also when unused: the lane must be idle before a fresh reset
        self.env_wait_s += time.perf_counter() - started
        return observation if key == (str(task_name), int(seed)) else None

    def unresolved(self) -> int:
        with self._lock:
            return len(self._pending)

    def shutdown(self) -> None:
        for lane in self._lanes.values():
            lane.shutdown(wait=True)
        self._lanes.clear()


class ConcurrentRolloutsMixin:
    """Mix into a GRPOTrainer subclass (before GRPOTrainer) to run environment calls concurrently."""

    _rollouts: ConcurrentRollouts | None = None

    def enable_concurrent_rollouts(self) -> ConcurrentRollouts:
        import trl

        parent = super()
        missing = [
            name
            for name in ("_get_tool_suffix_ids", "_generate_and_score_completions")
            if not callable(getattr(parent, name, None))
        ]
        if missing or not hasattr(self, "_environment_pool"):
            raise RuntimeError(
                f"trl {trl.__version__} lacks the GRPOTrainer internals concurrent rollouts hook into "
                f"({', '.join(missing) or '_environment_pool'}); set concurrent_env_calls: false"
            )
        if trl.__version__ not in TESTED_TRL_VERSIONS:
            log.warning(
                "concurrent environment calls were tested with trl %s, not %s: every generation batch is "
                "checked for unresolved tool results, set concurrent_env_calls: false if that check fails",
                ", ".join(TESTED_TRL_VERSIONS),
                trl.__version__,
            )
        self._rollouts = ConcurrentRollouts()
        return self._rollouts

    _weight_sync_s = 0.0

    def _log_rollout_time(self, rollout_s: float, env_wait_s: float | None) -> None:
        """Where a generation batch's time went, logged with TRL's metrics (TensorBoard: time/*).

        rollout_s covers generation, environment calls, weight sync to vLLM and reward scoring; the
        optimizer's share is TRL's own step_time minus it.
        """
        metrics = getattr(self, "_metrics", None)
        if metrics is None:
            return
        train = metrics["train"]
        train["time/rollout_s"].append(rollout_s)
        train["time/weight_sync_s"].append(self._weight_sync_s)
        if env_wait_s is not None:
            train["time/env_wait_s"].append(env_wait_s)
            train["time/generation_s"].append(max(0.0, rollout_s - env_wait_s - self._weight_sync_s))
        self._weight_sync_s = 0.0
        import torch

        if torch.cuda.is_available():
            # Peak torch allocations of this process so far: the trainer's and, colocated, vLLM's.
            train["gpu/peak_allocated_gib"].append(torch.cuda.max_memory_allocated() / 2**30)

    def enable_weight_sync_timing(self) -> None:
        """Time TRL's copy of the weights into the colocated vLLM engine (absent without vLLM)."""
        engine = getattr(self, "vllm_generation", None)
        sync = getattr(engine, "sync_weights", None)
        if sync is None:
            return

        def timed_sync(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return sync(*args, **kwargs)
            finally:
                self._weight_sync_s += time.perf_counter() - started

        engine.sync_weights = timed_sync

    def _get_tool_suffix_ids(self, tool_messages):  # type: ignore[no-untyped-def]
        if self._rollouts is not None:
            for message in tool_messages:
                message["content"] = self._rollouts.resolve(message.get("content"))
        return super()._get_tool_suffix_ids(tool_messages)  # type: ignore[misc]

    def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
        rollouts = self._rollouts
        factories = getattr(self, "environment_factories", None)
        if rollouts is not None and factories is not None and not getattr(self, "_multi_environment", False):
            # Hand out environments exactly as TRL will (pool order, growing it if needed), then reset them all.
            pool = self._environment_pool[None]  # type: ignore[attr-defined]
            while len(pool) < len(inputs):
                pool.append(factories[None]())
            for env in pool:
                env._rollouts = rollouts
            rollouts.prefetch_resets(pool[: len(inputs)], inputs)
        started, waited = time.perf_counter(), rollouts.env_wait_s if rollouts is not None else 0.0
        output = super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        self._log_rollout_time(
            time.perf_counter() - started, rollouts.env_wait_s - waited if rollouts is not None else None
        )
        if rollouts is not None and rollouts.unresolved():
            raise RuntimeError(
                f"{rollouts.unresolved()} tool results were never handed back by GRPOTrainer "
                "(its _get_tool_suffix_ids hook was not called): this TRL version is incompatible with "
                "concurrent environment calls; set concurrent_env_calls: false"
            )
        return output
