"""Record scripted demonstrations as tool-call conversations (JSONL) for a supervised warm start.

The scripted policies (browser_control.evaluation.scripted) play MiniWoB episodes on TRAINING seeds
(episode i uses seed --seed-offset + i; evaluation seeds are never used) through the environment
service. Each solved episode becomes one JSON line: the system prompt, the task prompt with the first
observation, then assistant tool calls and tool results, exactly the conversation a GRPO rollout of
that episode produces, plus the tool schemas. Unsolved episodes are skipped and counted.

Use --max-episode-steps equal to the max_episode_steps of the training config: the observation text says
"Step N of MAX", and the model should see the numbers it will see in training.

Examples:
  browser-control demos --tasks click-test,focus-text --episodes 50 --output data/demos.jsonl
  browser-control demos --suite scripted --episodes 20 --output data/all.jsonl --concurrency 8
  browser-control sft --config configs/sft_learning.yaml --set demos=data/demos.jsonl

Exit status: 0 when the file was written, 2 for bad arguments or an unreachable service, 1 when the
service failed during recording.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from browser_control.arg_types import non_negative_int, positive_int
from browser_control.protocol import DEFAULT_BROWSERGYM_URL, DEFAULT_MAX_EPISODE_STEPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from browser_control.sft.demos import DEFAULT_SEED_OFFSET

    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--tasks", metavar="A,B", help="comma-separated MiniWoB tasks with a scripted policy")
    pick.add_argument("--suite", metavar="NAME", help="a shipped task suite, e.g. scripted (evaluate --list-suites)")
    parser.add_argument("--episodes", type=positive_int, default=20, help="episodes recorded per task")
    parser.add_argument("--output", type=Path, required=True, metavar="FILE.jsonl", help="where to write")
    parser.add_argument(
        "--seed-offset",
        type=non_negative_int,
        default=DEFAULT_SEED_OFFSET,
        help="episode i uses training seed OFFSET + i (the default keeps away from the seeds GRPO plays first)",
    )
    parser.add_argument(
        "--max-episode-steps",
        "--max-steps",
        type=positive_int,
        default=DEFAULT_MAX_EPISODE_STEPS,
        help="actions per episode; match the training config's max_episode_steps",
    )
    parser.add_argument(
        "--browsergym-url",
        default=None,
        help=f"environment service address [BROWSERGYM_URL, else {DEFAULT_BROWSERGYM_URL}]",
    )
    parser.add_argument("--concurrency", type=positive_int, default=4, help="episodes played at once")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _fail(message: str, status: int = 2) -> int:
    print(f"browser-control demos: error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from browser_control.client import EnvRequestError, EnvServiceUnavailable
    from browser_control.evaluation.runner import EvaluationError, available_tasks, resolve_env_url
    from browser_control.evaluation.suites import load_suite
    from browser_control.sft.demos import DemoError, record_demos

    if args.output.exists() and not args.force:
        return _fail(f"{args.output} exists; pass --force to overwrite it")
    if args.output.is_dir():
        return _fail(f"{args.output} is a directory; give a file name such as {args.output}/demos.jsonl")
    try:
        url = resolve_env_url(args.browsergym_url)
        if args.tasks is not None:
            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
            if not tasks:
                return _fail("--tasks is empty; give task names such as click-test,focus-text")
        else:
            tasks = load_suite(args.suite).resolve(available_tasks(url))
        summary = record_demos(
            tasks,
            args.episodes,
            args.output,
            url,
            seed_offset=args.seed_offset,
            max_episode_steps=args.max_episode_steps,
            concurrency=args.concurrency,
            progress=not args.quiet,
        )
    except (EvaluationError, DemoError) as exc:
        return _fail(str(exc))
    except (EnvServiceUnavailable, EnvRequestError) as exc:
        return _fail(f"the environment service failed while recording: {exc}", status=1)
    per_task = ", ".join(f"{task} {count}" for task, count in summary.per_task.items())
    print(f"wrote {summary.written} demonstrations to {summary.path} ({per_task})")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unsolved episodes, e.g. {summary.skipped[0]}", file=sys.stderr)
    return 0
