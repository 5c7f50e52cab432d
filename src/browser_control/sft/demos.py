"""Record scripted episodes as tool-call conversations, exactly as GRPO training shows them to a model.

An episode is played through :class:`~browser_control.rollout.environment.BrowserEnvironment`, the class
TRL trains with: the conversation starts with :func:`~browser_control.rollout.prompts.task_prompt` plus the
first observation appended to the user message (what TRL does with ``reset()``'s text), then one
assistant message with ``tool_calls`` per action (TRL/transformers format: ``{"type": "function",
"function": {"name", "arguments"}}``, arguments as a mapping) and one ``tool`` message with the text the
tool returned. A last, empty assistant message teaches the model to stop once the episode is over,
which is how a TRL rollout ends.

Each JSONL line holds ``task_name``, ``seed``, ``messages`` and ``tools`` (the JSON schemas of the
tools, in TRL's order), so a line renders with ``tokenizer.apply_chat_template(messages, tools=tools)``
to the same text a GRPO rollout of that episode produces. Seeds come from the training range only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from browser_control.evaluation.policy import ToolCall
from browser_control.evaluation.scripted import SCRIPTED_TASKS, ScriptedPolicyError, scripted_step
from browser_control.protocol import DEFAULT_MAX_EPISODE_STEPS
from browser_control.rollout.environment import BrowserEnvironment, bound_tools, tool_names
from browser_control.rollout.prompts import task_prompt
from browser_control.seeds import TRAIN_SEED_RANGE, train_seed

# Demonstrations start far from index 0 so the instances GRPO plays (train_seed(0), train_seed(1), ...)
# are not the ones the warm start memorised: a GRPO gain is then a gain on unseen pages too.
DEFAULT_SEED_OFFSET = 100_000_000


class DemoError(ValueError):
    """The demonstrations cannot be recorded or read; the message says why."""


def tool_schemas() -> list[dict[str, Any]]:
    """The JSON schemas of BrowserEnvironment's tools, in the order TRL passes them to the chat template."""
    from transformers.utils import get_json_schema

    env = BrowserEnvironment.__new__(BrowserEnvironment)
    return [get_json_schema(tool) for tool in bound_tools(env)]


@dataclass
class Demo:
    task_name: str
    seed: int
    messages: list[dict[str, Any]]
    success: bool
    problem: str | None = None

    def record(self, tools: list[dict[str, Any]]) -> dict[str, Any]:
        return {"task_name": self.task_name, "seed": self.seed, "messages": self.messages, "tools": tools}


def play_episode(env: BrowserEnvironment, task_name: str, seed: int, max_episode_steps: int) -> Demo:
    """One scripted episode as a conversation (the scripted planner decides every call)."""
    observation = env.reset(task_name=task_name, seed=seed)
    messages: list[dict[str, Any]] = task_prompt(task_name)
    # TRL appends reset()'s text to the last prompt message with no separator.
    messages[-1] = {**messages[-1], "content": messages[-1]["content"] + observation}
    history: list[ToolCall] = []
    problem = None
    while len(history) < max_episode_steps:
        try:
            call = scripted_step(task_name, observation, history)
        except ScriptedPolicyError as exc:
            problem = str(exc)
            break
        if call is None:
            break
        history.append(call)
        messages.append({"role": "assistant", "content": "", "tool_calls": [call.as_message_call()]})
        observation = getattr(env, call.name)(**call.arguments)
        messages.append({"role": "tool", "name": call.name, "content": observation})
        if env.episode.done or env.episode.truncated:
            break
    stats = env.episode
    if stats.success:
        messages.append({"role": "assistant", "content": ""})
    elif problem is None:
        problem = "the plan finished without solving the task"
    return Demo(task_name, seed, messages, stats.success, problem)


@dataclass
class RecordSummary:
    path: Path
    written: int = 0
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    per_task: dict[str, int] = field(default_factory=dict)


def check_demo_tasks(tasks: Sequence[str], known: Sequence[str]) -> list[str]:
    """Canonical names of tasks that the service knows and a scripted policy solves."""
    from browser_control.evaluation.runner import check_tasks

    names = check_tasks(tasks, known)
    missing = [t for t in names if t not in SCRIPTED_TASKS]
    if missing:
        raise DemoError(
            f"no scripted policy for {', '.join(missing)}; demonstrations can be recorded for "
            f"{', '.join(SCRIPTED_TASKS)}"
        )
    return names


def record_demos(
    tasks: Sequence[str],
    episodes_per_task: int,
    output: str | Path,
    env_url: str,
    *,
    seed_offset: int = DEFAULT_SEED_OFFSET,
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
    concurrency: int = 4,
    progress: bool = True,
    env_factory: Callable[[], BrowserEnvironment] | None = None,
) -> RecordSummary:
    """Play ``episodes_per_task`` scripted episodes of each task on training seeds; write the successes.

    Episode ``i`` of every task uses ``seeds.train_seed(i, seed_offset)``. Failed episodes are skipped
    (and counted), so every line of the file is a solved episode.
    """
    from browser_control.evaluation.runner import available_tasks

    if episodes_per_task < 1:
        raise DemoError(f"episodes per task must be >= 1, got {episodes_per_task}")
    if max_episode_steps < 1 or concurrency < 1:
        raise DemoError("max_episode_steps and concurrency must be >= 1")
    if seed_offset < 0:
        raise DemoError(f"seed offset must be >= 0, got {seed_offset}")
    last = TRAIN_SEED_RANGE.start + seed_offset + episodes_per_task - 1
    if last not in TRAIN_SEED_RANGE:
        raise DemoError(
            f"seed offset {seed_offset} + {episodes_per_task} episodes leaves the training seed range "
            f"{TRAIN_SEED_RANGE}: evaluation instances must never be trained on"
        )
    names = check_demo_tasks(tasks, available_tasks(env_url))
    jobs = [(task, train_seed(i, seed_offset)) for i in range(episodes_per_task) for task in names]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tools = tool_schemas()
    summary = RecordSummary(output, per_task=dict.fromkeys(names, 0))

    def factory() -> BrowserEnvironment:
        return BrowserEnvironment(base_url=env_url, max_episode_steps=max_episode_steps)

    make_env = env_factory or factory
    local = threading.local()
    envs: list[BrowserEnvironment] = []
    lock = threading.Lock()

    def run(job: tuple[str, int]) -> Demo:
        # One environment (one browser session) per worker thread, reused across its episodes.
        if not hasattr(local, "env"):
            local.env = make_env()
            with lock:
                envs.append(local.env)
        return play_episode(local.env, job[0], job[1], max_episode_steps)

    tmp = output.with_name(output.name + ".partial")
    bar = tqdm(total=len(jobs), desc="demos", unit="episode", disable=not progress, dynamic_ncols=True)
    try:
        with (
            ThreadPoolExecutor(max_workers=min(concurrency, len(jobs)), thread_name_prefix="demo") as pool,
            tmp.open("w", encoding="utf-8") as handle,
        ):
            # map() keeps the job order, so the file is the same whatever the thread timing.
            for demo in pool.map(run, jobs):
                if demo.success:
                    handle.write(json.dumps(demo.record(tools), ensure_ascii=False) + "\n")
                    summary.written += 1
                    summary.per_task[demo.task_name] += 1
                else:
                    summary.skipped.append((demo.task_name, demo.seed, demo.problem or "failed"))
                bar.update(1)
                bar.set_postfix_str(f"kept {summary.written}", refresh=False)
        tmp.replace(output)  # a half-written file never takes the real name
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
        for env in envs:
            env._close()
    return summary


def read_demos(path: str | Path) -> list[dict[str, Any]]:
    """The records of a demonstrations file, checked enough to fail with the line number, not in a trainer."""
    path = Path(path)
    if not path.is_file():
        raise DemoError(f"{path}: no such demonstrations file (record one with `browser-control demos`)")
    records = list(_iter_records(path))
    if not records:
        raise DemoError(f"{path}: no demonstrations in the file")
    return records


def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
    known_tools = set(tool_names())
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DemoError(f"{path}:{number}: not JSON: {exc}") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise DemoError(f"{path}:{number}: expected an object with a non-empty 'messages' list")
            if not any(m.get("role") == "assistant" for m in messages):
                raise DemoError(f"{path}:{number}: no assistant message to learn from")
            for message in messages:
                for call in message.get("tool_calls") or []:
                    name = (call.get("function") or {}).get("name")
                    if name not in known_tools:
                        raise DemoError(f"{path}:{number}: unknown tool {name!r} in a tool call")
            yield record


def shuffle_answers(records: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Goal-blind demonstrations: each one's tool calls are those of another demonstration of its task.

    The prompts (goal and page) stay; the assistant turns take, in order, the calls of a randomly chosen
    demonstration of the same task. The answers keep their frequencies but say nothing about the goal or
    the page, so a model trained on them learns the tool-call format and the answers a task takes, never
    which one an instance asks for. A recipient with more action turns than its donor stops early (its
    extra turns become the empty stop turn). Tool results are left as recorded: the SFT loss masks them.
    """
    import copy
    import random

    rng = random.Random(seed)
    out = copy.deepcopy(list(records))
    by_task: dict[str, list[int]] = {}
    for index, record in enumerate(out):
        by_task.setdefault(record["task_name"], []).append(index)

    def turns(record: dict[str, Any]) -> list[Any]:
        return [m["tool_calls"] for m in record["messages"] if m.get("role") == "assistant" and m.get("tool_calls")]

    donors_calls = {index: turns(record) for index, record in enumerate(out)}
    for indices in by_task.values():
        donors = indices[:]
        rng.shuffle(donors)
        for index, donor in zip(indices, donors, strict=True):
            calls = iter(copy.deepcopy(donors_calls[donor]))
            messages = []
            for message in out[index]["messages"]:
                if message.get("role") == "assistant" and message.get("tool_calls"):
                    replacement = next(calls, None)
                    if replacement is None:
                        messages.append({"role": "assistant", "content": ""})
                        break
                    message = {**message, "tool_calls": replacement}
                messages.append(message)
            out[index]["messages"] = messages
    return out
