"""The pieces TRL's GRPOTrainer calls during rollouts: the environment factory and the metrics reward.

Neither imports torch: they are plain callables that TRL drives, which keeps them testable on their own.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from browser_control.client import EnvClient, EnvServiceUnavailable, ServiceDeathLatch, service_answers
from browser_control.env_pool import EnvPool, is_pool
from browser_control.evaluation.policy import ToolCall, tool_calls_of
from browser_control.recording import EpisodeRecorder, EpisodeTrace, trace_from_answers, trace_id
from browser_control.rollout.environment import BrowserEnvironment

log = logging.getLogger(__name__)

# The reward TRL derives from BrowserEnvironment.get_reward is named after the class; the wiring check
# and the docs refer to it by these names.
ENV_REWARD_NAME = BrowserEnvironment.__name__
METRICS_REWARD_NAME = "EpisodeMetrics"
# Generation batches in a row in which every episode was an environment fault before the run stops: a
# service that answers but can play nothing would otherwise train forever on no data.
MAX_ALL_FAULT_BATCHES = 3


class LatchingEnvClient(EnvClient):
    """An EnvClient shared by every environment of a run that stays failed once the service is declared dead.

    Each rollout's tool call would otherwise wait through the full retry backoff on its own before
    TRL moves to the next rollout, serially: minutes of dead time before the run stops. Retries that ran
    out against a service that still answers (503 from one broken browser) are one episode's fault, not
    a dead service, so they do not latch.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dead = ServiceDeathLatch()

    def _request(
        self, method: str, path: str, payload: dict[str, Any] | None = None, retry_on_session_cap: bool = False
    ) -> dict[str, Any]:
        self.dead.raise_if_tripped()
        try:
            return super()._request(method, path, payload, retry_on_session_cap)
        except EnvServiceUnavailable as exc:
            if not service_answers(self):
                self.dead.trip(exc)
            raise


class EnvironmentFactory:
    """TRL calls ``environment_factory()`` with no arguments; this binds the service and the episode length.

    Every instance shares one latching client and is remembered, so the trainer can close the browser
    sessions at the end (TRL never closes environments).
    """

    def __init__(
        self, base_url: str, max_episode_steps: int, timeout_s: float = 60.0, retries: int = 4, backoff_s: float = 0.5
    ):
        self.base_url = base_url
        self.max_episode_steps = max_episode_steps
        # Several comma-separated addresses: a pool of replicas (env_pool.py), which latches on its own.
        self.client: LatchingEnvClient | EnvPool = (
            EnvPool(base_url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
            if is_pool(base_url)
            else LatchingEnvClient(base_url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        )
        self.environments: list[BrowserEnvironment] = []

    def __call__(self) -> BrowserEnvironment:
        env = BrowserEnvironment(
            base_url=self.base_url,
            max_episode_steps=self.max_episode_steps,
            client=self.client,
            faults_are_no_data=True,
        )
        self.environments.append(env)
        return env

    def raise_if_dead(self) -> None:
        for env in self.environments:
            if env.service_error is not None:
                self.client.dead.trip(env.service_error)
        self.client.dead.raise_if_tripped()

    def close(self) -> None:
        for env in self.environments:
            env._close()
        self.client.close()


class SaturationMonitor:
    """Counts, per task, consecutive generation batches in which every GRPO group had identical rewards.

    Such a group has zero advantage: the task teaches nothing (all solved, or none). A task that stays
    there for ``patience`` batches is reported once per streak.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.streak: dict[str, int] = defaultdict(int)
        self.saturated: set[str] = set()
        self.warnings: list[str] = []

    def update(self, groups_by_task: dict[str, list[list[float]]], step: int) -> dict[str, bool]:
        state = {}
        for task, groups in groups_by_task.items():
            flat = all(len(set(rewards)) <= 1 for rewards in groups)
            self.streak[task] = self.streak[task] + 1 if flat else 0
            if self.streak[task] >= self.patience and task not in self.saturated:
                self.saturated.add(task)
                rate = statistics.fmean(r for rewards in groups for r in rewards)
                message = (
                    f"task '{task}' is saturated: every GRPO group had identical rewards (success rate "
                    f"{rate:.2f}) for {self.streak[task]} steps running, so it gives no learning signal; "
                    "drop it from the mixture, lower its weight or raise temperature"
                )
                self.warnings.append(f"step {step}: {message}")
                log.warning("COLLAPSE GUARD: %s", message)
            elif not flat:
                self.saturated.discard(task)
            state[task] = task in self.saturated
        return state


class EpisodeMetrics:
    """A zero-weight reward function: it scores nothing and logs what the episodes did.

    TRL passes reward functions the batch's environments (aligned with the completions), the dataset
    columns and ``log_metric``; the values land in TensorBoard with TRL's own metrics. It also stops
    training when the service died during the rollouts, and checks that every environment played the
    row it was given (a misaligned batch would train on someone else's rewards).
    """

    __name__ = METRICS_REWARD_NAME  # TRL names reward functions by __name__

    def __init__(
        self,
        factory: EnvironmentFactory,
        monitor: SaturationMonitor,
        step_getter: Callable[[], int] = lambda: 0,
        episode_log: Path | None = None,
        recorder: EpisodeRecorder | None = None,
        record_every: int | None = None,
        record_episodes: int = 4,
        run_name: str = "training",
        curriculum: Any = None,
    ):
        self.factory = factory
        self.curriculum = curriculum  # training.curriculum.Curriculum: fed every batch's groups
        self.monitor = monitor
        self.step_getter = step_getter
        self.episode_log = episode_log
        self.batches = 0
        # Recordings for browser-control view: a few rollouts of the first generation batch of step 1 and of
        # every record_every-th step after it, their traces next to the episode log that points at them.
        self.recorder = recorder if record_every else None
        self.record_every = record_every or 0
        self.record_episodes = record_episodes
        self.run_name = run_name
        self._recorded_step: int | None = None
        self._warned_no_screenshots = False
        self.faulted_episodes = 0
        self._all_fault_streak = 0

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        environments: Sequence[BrowserEnvironment] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        task_name: Sequence[str] | None = None,
        seed: Sequence[int] | None = None,
        **_: Any,
    ) -> list[float | None]:
        self.factory.raise_if_dead()
        if environments is None or log_metric is None:
            raise RuntimeError(
                "the trainer did not pass environments= and log_metric= to the reward functions; "
                "browser-control needs trl==1.16.0 with environment_factory"
            )
        if len(environments) != len(completions):
            raise RuntimeError(f"{len(environments)} environments for {len(completions)} completions")
        for env in environments:
            if env._rollouts is not None:  # concurrent calls: wait for this rollout's last action
                env._rollouts.drain(env)
        self.factory.raise_if_dead()
        episodes = [env.episode for env in environments]
        if task_name is not None and seed is not None:
            for i, (episode, name, row_seed) in enumerate(zip(episodes, task_name, seed, strict=True)):
                if episode.task_name != name or episode.seed != int(row_seed):
                    raise RuntimeError(
                        f"rollout {i} played {episode.task_name}#{episode.seed} but its row asks for "
                        f"{name}#{row_seed}: environments and rows are misaligned, rewards would be wrong"
                    )
        self.batches += 1
        step = self.step_getter()
        log_episode_metrics(episodes, log_metric)
        traces = self._record(step, environments, completions)
        if self.episode_log is not None:
            self._append_episode_log(step, episodes, traces)
        faulted = sum(e.fault is not None for e in episodes)
        self.faulted_episodes += faulted
        self._all_fault_streak = self._all_fault_streak + 1 if episodes and faulted == len(episodes) else 0
        if self._all_fault_streak >= MAX_ALL_FAULT_BATCHES:
            raise EnvServiceUnavailable(
                f"every episode of the last {self._all_fault_streak} generation batches failed in the environment "
                f"service at {self.factory.base_url} (last: {episodes[-1].fault}); it answers but cannot play "
                "episodes. Check `docker compose logs browsergym`, restart it, and resume"
            )

        groups: dict[tuple[str, int], list[float]] = defaultdict(list)
        for episode in episodes:
            if episode.fault is None:  # no data: it neither solves nor fails the task
                groups[(episode.task_name, episode.seed)].append(1.0 if episode.success else 0.0)
        by_task: dict[str, list[list[float]]] = defaultdict(list)
        for (task, _seed), rewards in groups.items():
            by_task[task].append(rewards)
        for task, saturated in self.monitor.update(by_task, step).items():
            log_metric(f"collapse/saturated/{task}", 1.0 if saturated else 0.0)
        log_metric("collapse/saturated_tasks", float(len(self.monitor.saturated)))
        if self.curriculum is not None:
            for key, value in self.curriculum.observe(groups).items():
                log_metric(key, value)
        # None = "not scored by this function": TRL turns it into NaN, which its weighted nansum and
        # its metric averages skip, so this function changes neither the reward nor reward_std.
        return [None] * len(completions)

    def _record(
        self, step: int, environments: Sequence[BrowserEnvironment], completions: Sequence[Any]
    ) -> dict[int, str]:
        """Write the traces of a sample of this batch's rollouts; returns {rollout index: trace path}."""
        recorder = self.recorder
        if recorder is None or self._recorded_step == step or (step - 1) % self.record_every:
            return {}
        self._recorded_step = step
        n = len(environments)
        # Spread over the batch: consecutive rollouts are one GRPO group, i.e. the same task instance.
        stride = max(1, n // self.record_episodes)
        traces: dict[int, str] = {}
        for i in list(range(0, n, stride))[: self.record_episodes]:
            env = environments[i]
            if recorder.screenshots and env.first_screenshot is None and not self._warned_no_screenshots:
                self._warned_no_screenshots = True
                log.warning(
                    "record_screenshots: true but the environment service sends no screenshots; start it "
                    "with --screenshots (SCREENSHOTS=1)"
                )
            completion = completions[i] if i < len(completions) else []
            steps, shots = trace_from_answers(env.answers, _turns(completion))
            stats = env.episode
            trace = EpisodeTrace(
                source="training",
                run=self.run_name,
                task=stats.task_name,
                seed=stats.seed,
                goal=env.goal,
                success=stats.success,
                ended_by=_ended_by(stats),
                training_step=step,
                first_observation=env.first_observation,
                steps=steps,
            )
            name = trace_id(
                self.episode_log.stem if self.episode_log else "episodes",
                f"step{step:06d}",
                i,
                stats.task_name,
                stats.seed,
            )
            try:
                path = recorder.write_trace(trace, name, {0: env.first_screenshot, **shots})
            except OSError as exc:  # a full disk must not stop training for the sake of a recording
                log.warning("could not record an episode in %s: %s", recorder.directory, exc)
                break
            if path is None:
                break
            traces[i] = path
        return traces

    def _append_episode_log(self, step: int, episodes: Sequence[Any], traces: dict[int, str] | None = None) -> None:
        """One JSON line per generation batch, in rollout order: which instance each rollout played and how.

        Flushed and fsync'd: a crash later in the run leaves every earlier batch readable.
        """
        rows = []
        for i, e in enumerate(episodes):
            row = {k: v for k, v in asdict(e).items() if k != "env_latency_s"}
            if traces and i in traces:
                row["trace"] = traces[i]
            rows.append(row)
        record = {"step": step, "episodes": rows}
        with self.episode_log.open("a", encoding="utf-8") as f:  # type: ignore[union-attr]
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _ended_by(stats: Any) -> str:
    if stats.fault is not None:  # the environment, not the model, ended it: no data
        return "env_fault"
    if stats.done:
        return "success" if stats.success else "failed"
    return "step_limit" if stats.truncated else "no_tool_call"


def _turns(completion: Any) -> list[tuple[str | None, list[ToolCall]]]:
    """(output, calls) of each assistant message of a TRL completion (a list of chat messages)."""
    turns: list[tuple[str | None, list[ToolCall]]] = []
    if not isinstance(completion, list):
        return turns
    for message in completion:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        calls = tool_calls_of(message)
        # TRL keeps the parsed message, not the generated text: show its text and the calls as parsed.
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content) if content else ""
        rendered = ", ".join(
            f"{c.name}({', '.join(f'{k}={v!r}' for k, v in c.arguments.items())})"
            if isinstance(c.arguments, dict)
            else f"{c.name}({c.arguments!r})"
            for c in calls
        )
        turns.append(((text + ("\n" if text and rendered else "") + (f"[{rendered}]" if rendered else "")), calls))
    return turns


def log_episode_metrics(episodes: Sequence[Any], log_metric: Callable[[str, float], None]) -> None:
    """Episode metrics over the scored episodes (environment faults are no data) and the fault rate."""
    if not episodes:
        return
    log_metric("env/fault_rate", sum(e.fault is not None for e in episodes) / len(episodes))
    latencies = [t for e in episodes for t in e.env_latency_s]
    if latencies:
        log_metric("env/latency_s", statistics.fmean(latencies))
        log_metric("env/latency_max_s", max(latencies))
    episodes = [e for e in episodes if e.fault is None]
    n = len(episodes)
    if not n:
        return
    log_metric("success/overall", sum(e.success for e in episodes) / n)
    log_metric("episode/steps", sum(e.steps for e in episodes) / n)
    log_metric("episode/done_rate", sum(e.done for e in episodes) / n)
    log_metric("episode/truncated_rate", sum(e.truncated for e in episodes) / n)
    steps = sum(e.steps for e in episodes)
    log_metric("episode/invalid_action_rate", sum(e.invalid_actions for e in episodes) / steps if steps else 0.0)
    log_metric("episode/no_action_rate", sum(e.steps == 0 for e in episodes) / n)
    per_task: dict[str, list[bool]] = defaultdict(list)
    for e in episodes:
        per_task[e.task_name].append(e.success)
    for task, successes in sorted(per_task.items()):
        log_metric(f"success/{task}", sum(successes) / len(successes))
