"""The evaluation loop: run a policy on MiniWoB episodes through the environment service.

Episodes are played through :class:`~browser_control.rollout.environment.BrowserEnvironment`, the class
TRL trains with, so a model sees the same prompt, tools and observation text as in training. Up to
``concurrency`` episodes are live at once: the policy decides for all of them in one call (one batched
generation for a model) and their tool calls then run in parallel threads, because the service, not
the policy, is the slow part on a CPU box.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from browser_control.client import EnvClient, EnvRequestError, EnvServiceUnavailable
from browser_control.evaluation.policy import Decision, Episode, Policy
from browser_control.evaluation.report import EpisodeRecord, EvaluationReport, build_report
from browser_control.protocol import DEFAULT_BROWSERGYM_URL, DEFAULT_MAX_EPISODE_STEPS, bare_task_name, service_url
from browser_control.recording import EpisodeRecorder, EpisodeTrace, trace_from_answers, trace_id
from browser_control.rollout.environment import BrowserEnvironment, tool_names
from browser_control.rollout.prompts import task_prompt
from browser_control.seeds import eval_seed

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Bad input or an unusable environment service; the message says what to do."""


def resolve_env_url(env_url: str | None = None) -> str:
    """:func:`~browser_control.protocol.service_url`, checked: an http(s) URL or EvaluationError."""
    import re

    from browser_control.env_pool import PoolConfigError, pick_healthy_url

    url = service_url(env_url)
    given = "--browsergym-url" if env_url else "BROWSERGYM_URL"
    if not re.match(r"^https?://[^/\s]+", url):
        raise EvaluationError(f"{given}={url!r}: expected an http(s) URL such as {DEFAULT_BROWSERGYM_URL}")
    try:
        return pick_healthy_url(url)  # a pool of replicas: an evaluation runs on one healthy replica
    except PoolConfigError as exc:
        raise EvaluationError(f"{given}={url!r}: {exc}") from None


def available_tasks(env_url: str, timeout_s: float = 10.0) -> list[str]:
    """GET /tasks, with one short retry cycle so a stopped service is reported in seconds, not minutes."""
    with EnvClient(env_url, timeout_s=timeout_s, retries=1, backoff_s=0.5) as client:
        try:
            return client.tasks()
        except EnvServiceUnavailable as exc:
            raise EvaluationError(f"{exc} (Set --browsergym-url or BROWSERGYM_URL if it runs elsewhere.)") from None
        except EnvRequestError as exc:
            raise EvaluationError(f"the environment service at {env_url} refused GET /tasks: {exc}") from None


def check_tasks(tasks: Sequence[str], known: Sequence[str]) -> list[str]:
    """Canonical task names (without 'miniwob.'); unknown names raise with the closest known names."""
    known_set = set(known)
    out, problems = [], []
    for task in tasks:
        name = bare_task_name(task)
        if name in known_set:
            out.append(name)
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        problems.append(f"unknown task {task!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if problems:
        raise EvaluationError("; ".join(problems) + ". `curl <service>/tasks` lists every task.")
    if len(set(out)) != len(out):
        raise EvaluationError(f"a task is listed twice: {', '.join(out)}")
    return out


def _start(env: BrowserEnvironment, task: str, index: int, seed_offset: int) -> Episode:
    seed = eval_seed(index, seed_offset)
    observation = env.reset(task_name=task, seed=seed)
    messages: list[dict[str, Any]] = task_prompt(task)
    # TRL appends reset()'s text to the last prompt message with no separator; do the same.
    messages[-1] = {**messages[-1], "content": messages[-1]["content"] + observation}
    return Episode(task_name=task, seed=seed, index=index, env=env, messages=messages, observation=observation)


def _run_calls(episode: Episode, decision: Decision, tools: frozenset[str]) -> list[dict[str, Any]]:
    """Run the decision's calls in order, the way TRL's tool loop does; returns the tool messages."""
    episode.messages.append(decision.message())
    episode.turns.append((decision.raw_output, list(decision.calls)))
    results = []
    for call in decision.calls:
        episode.calls.append(call)
        if call.name not in tools:
            episode.tool_failures += 1
            result: Any = {"error": f"Tool {call.name} not found."}
        elif not isinstance(call.arguments, dict):
            episode.tool_failures += 1
            result = {"error": f"arguments of {call.name} must be a mapping"}
        else:
            try:
                result = getattr(episode.env, call.name)(**call.arguments)
            except (EnvServiceUnavailable, EnvRequestError):
                raise  # the service is gone or broken: stop the evaluation, do not count zeros
            except Exception as exc:  # bad arguments from the model: TRL returns the error to it
                episode.tool_failures += 1
                result = {"error": str(exc)}
        message = {"role": "tool", "name": call.name, "content": str(result)}
        episode.messages.append(message)
        results.append(message)
        if isinstance(result, str):
            episode.observation = result
    return results


def _ending(episode: Episode, decision: Decision, max_episode_steps: int, turns: int) -> str | None:
    stats = episode.env.episode
    if stats.done:
        return "success" if stats.success else "failed"
    if stats.truncated or turns >= max_episode_steps:
        # Tool failures (e.g. missing arguments) are not service steps; the turn bound stops a model that
        # only ever produces broken calls.
        return "step_limit"
    if not decision.calls:
        return decision.stop_reason or "no_tool_call"
    return None


def _describe_action(call: Any) -> str:
    try:
        return call.action()
    except (ValueError, TypeError) as exc:
        return f"{call.name}(...) [not a valid call: {exc}]"


def _record(recorder: EpisodeRecorder, label: str, episode: Episode, record: EpisodeRecord) -> None:
    """Write the episode's trace, then its summary line (the line points at the trace, so it comes last).

    A recording that cannot be written (disk full) is given up with a warning: the evaluation goes on and
    its report still holds every episode.
    """
    if recorder.failed:
        return
    env = episode.env
    steps, shots = trace_from_answers(env.answers, episode.turns)
    trace = EpisodeTrace(
        source="evaluation",
        run=label,
        task=record.task,
        seed=record.seed,
        goal=env.goal,
        success=record.success,
        ended_by=record.ended_by,
        first_observation=env.first_observation,
        steps=steps,
    )
    try:
        record.trace = recorder.write_trace(
            trace, trace_id(label, record.task, record.seed), {0: env.first_screenshot, **shots}
        )
        recorder.append(record.summary_line(label))
    except OSError as exc:
        recorder.failed = f"{type(exc).__name__}: {exc}"
        record.trace = None
        log.warning("episodes are no longer recorded in %s: %s", recorder.directory, recorder.failed)


def evaluate_policy(
    policy: Policy,
    tasks: Sequence[str],
    episodes: int,
    seed_offset: int = 0,
    env_url: str | None = None,
    *,
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
    concurrency: int = 8,
    progress: bool = True,
    keep_transcripts: bool = False,
    env_factory: Callable[[], BrowserEnvironment] | None = None,
    recorder: EpisodeRecorder | None = None,
    require_screenshots: bool = False,
) -> EvaluationReport:
    """Play ``episodes`` episodes of every task with ``policy`` and return per-task success statistics.

    Episode ``i`` of every task uses ``seeds.eval_seed(i, seed_offset)``, so two policies evaluated with the
    same arguments face the same task instances (a paired comparison), none of them seen in training.

    With a ``recorder``, every episode is written as it finishes (trace, then summary line), so a run that
    stops half-way leaves its finished episodes readable. ``require_screenshots`` fails at the first episode
    when the service sends no screenshots (it must run with ``--screenshots``).

    Raises :class:`EvaluationError` for unknown tasks or an unreachable service (before any episode),
    and lets ``EnvServiceUnavailable`` through if the service dies during the run.
    """
    if episodes < 1:
        raise EvaluationError(f"episodes must be >= 1, got {episodes}")
    if not tasks:
        raise EvaluationError("no task to evaluate")
    if max_episode_steps < 1 or concurrency < 1:
        raise EvaluationError("max_episode_steps and concurrency must be >= 1")
    url = resolve_env_url(env_url)
    task_list = check_tasks(tasks, available_tasks(url))
    eval_seed(episodes - 1, seed_offset)  # fails early if the seeds would leave the evaluation range

    def default_factory() -> BrowserEnvironment:
        return BrowserEnvironment(base_url=url, max_episode_steps=max_episode_steps)

    factory = env_factory or default_factory
    queue = deque((task, i) for task in task_list for i in range(episodes))
    slots = min(concurrency, len(queue))
    envs = [factory() for _ in range(slots)]
    free = list(envs)
    tools = frozenset(tool_names(type(envs[0])))
    active: list[Episode] = []
    turns: dict[int, int] = {}
    records: list[EpisodeRecord] = []
    started = time.perf_counter()
    bar = tqdm(total=len(queue), desc=policy.label, unit="episode", disable=not progress, dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="episode") as pool:
            while queue or active:
                starting = []
                while queue and free:
                    task, index = queue.popleft()
                    starting.append((free.pop(), task, index))
                if starting:
                    fresh = list(pool.map(lambda s: _start(*s, seed_offset), starting))
                    for episode in fresh:
                        if require_screenshots and episode.env.first_screenshot is None:
                            raise EvaluationError(
                                f"screenshots were asked for but the environment service at {url} sends none: "
                                "start it with --screenshots (SCREENSHOTS=1), or drop --screenshots"
                            )
                        policy.start(episode)
                        turns[id(episode)] = 0
                    active += fresh
                decisions = policy.decide(active)
                if len(decisions) != len(active):
                    raise RuntimeError(
                        f"{type(policy).__name__}.decide returned {len(decisions)} decisions for {len(active)} episodes"
                    )
                results = list(pool.map(lambda e, d: _run_calls(e, d, tools), active, decisions))
                still = []
                for episode, decision, tool_messages in zip(active, decisions, results, strict=True):
                    if decision.calls:
                        turns[id(episode)] += 1
                    ended_by = _ending(episode, decision, max_episode_steps, turns[id(episode)])
                    if ended_by is None:
                        policy.observe(episode, decision, tool_messages)
                        still.append(episode)
                        continue
                    turns.pop(id(episode))
                    stats = episode.env.episode
                    record = EpisodeRecord(
                        task=episode.task_name,
                        seed=episode.seed,
                        success=stats.success,
                        steps=stats.steps,
                        tool_calls=len(episode.calls),
                        invalid_actions=stats.invalid_actions + episode.tool_failures,
                        ended_by=ended_by,
                        actions=[_describe_action(c) for c in episode.calls],
                        messages=episode.messages if keep_transcripts else None,
                    )
                    if recorder is not None:
                        _record(recorder, policy.label, episode, record)
                    records.append(record)
                    free.append(episode.env)
                    bar.update(1)
                    wins = sum(r.success for r in records)
                    bar.set_postfix_str(f"success {wins}/{len(records)}", refresh=False)
                active = still
    finally:
        bar.close()
        for env in envs:
            env._close()
    records.sort(key=lambda r: (task_list.index(r.task), r.seed))
    first, last = eval_seed(0, seed_offset), eval_seed(episodes - 1, seed_offset)
    settings = {
        "tasks": task_list,
        "episodes_per_task": episodes,
        "seed_offset": seed_offset,
        "seeds": [first, last],
        "max_episode_steps": max_episode_steps,
        "env_url": url,
        "concurrency": concurrency,
        **getattr(policy, "settings", {}),
    }
    return build_report(policy.label, policy.kind, task_list, records, settings, time.perf_counter() - started)
