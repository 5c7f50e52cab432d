r"""Evaluate models (or the scripted baseline) on MiniWoB tasks and compare them side by side.

Each model plays the same episodes (evaluation seeds, never used in training) through the environment
service, with the prompt, tools and tool-call parser of training, greedy by default. The report gives,
per task, the success rate with a 95% Wilson interval, the mean number of actions of successful
episodes and the rate of invalid actions; with several models, the change against the first one with
the 95% interval of the difference. Output: DIR/report.json, report.md, success_rates.png (bars with
error bars) and episodes.jsonl (one line per episode, with the actions taken, written as each episode
finishes) with traces/ (each episode step by step: what the model saw, its output, the action and the
service's answer; `browser-control view --logs DIR` shows them).

Without --tasks or --suite, a checkpoint is evaluated on the tasks it was trained on (from its
training_config.yaml), anything else on the miniwob-easy suite. A checkpoint's training_config.yaml
also sets the default --max-episode-steps and --max-completion-tokens, so episodes get the budget they had in
training; every run of one evaluation uses the same settings.

Examples:
  # did training help? the checkpoint against the model it was trained from, on its training tasks
  browser-control evaluate --model checkpoints/grpo-run1 --compare-base --episodes 50

  # the same with explicit models (the first is the baseline) and a suite
  browser-control evaluate --model LiquidAI/LFM2-350M --model checkpoints/grpo-run1 \
      --suite miniwob-easy --episodes 50 --output evaluations/run1

  # a checkpoint by name (looked up in CHECKPOINT_DIR), two tasks
  browser-control evaluate --model grpo-run1 --tasks click-test,enter-text --episodes 20

  # check the harness itself: the scripted policies solve their tasks
  browser-control evaluate --policy scripted --suite scripted --episodes 20

  browser-control evaluate --list-suites

Exit status: 0 when the evaluation ran, 2 for bad arguments or an unreachable service, 1 when the
service failed during the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from browser_control.arg_types import non_negative_float, non_negative_int, positive_int
from browser_control.protocol import DEFAULT_BROWSERGYM_URL, DEFAULT_MAX_EPISODE_STEPS

if TYPE_CHECKING:
    from collections.abc import Callable

    from browser_control.evaluation.report import EvaluationReport
    from browser_control.models.source import ModelSource
    from browser_control.recording import EpisodeRecorder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to evaluate")
    what.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="PATH_OR_ID",
        help="model directory, checkpoint name in CHECKPOINT_DIR, LoRA adapter directory or Hub "
        "id; repeat to compare (the first is the baseline)",
    )
    what.add_argument(
        "--compare-base",
        action="store_true",
        help="also evaluate the model the first --model was trained from (its training_config.yaml "
        "or LoRA base), as the baseline",
    )
    what.add_argument(
        "--policy",
        choices=["model", "scripted"],
        default="model",
        help="'scripted' runs the hand-written policies instead of a model (a known ~100%% baseline for the harness)",
    )
    tasks = parser.add_argument_group("which tasks")
    pick = tasks.add_mutually_exclusive_group()
    pick.add_argument("--tasks", metavar="A,B", help="comma-separated MiniWoB task names, e.g. click-test,enter-text")
    pick.add_argument(
        "--suite",
        metavar="NAME",
        help="a task suite shipped with the package (see --list-suites); "
        "default: a checkpoint's training tasks, else miniwob-easy",
    )
    pick.add_argument("--list-suites", action="store_true", help="print the suites and exit")
    tasks.add_argument("--episodes", type=positive_int, default=20, help="episodes per task")
    tasks.add_argument(
        "--seed-offset",
        type=non_negative_int,
        default=0,
        help="episode i uses evaluation seed 1e9 + offset + i; change it for fresh instances",
    )
    tasks.add_argument(
        "--max-episode-steps",
        "--max-steps",
        type=positive_int,
        default=None,
        help="actions per episode before it is cut off (default: the checkpoint's "
        f"max_episode_steps, else {DEFAULT_MAX_EPISODE_STEPS})",
    )
    run = parser.add_argument_group("how to run")
    run.add_argument(
        "--browsergym-url",
        default=None,
        help=f"environment service address [BROWSERGYM_URL, else {DEFAULT_BROWSERGYM_URL}]",
    )
    run.add_argument(
        "--concurrency", type=positive_int, default=8, help="episodes played at once; also the generation batch size"
    )
    run.add_argument(
        "--backend",
        choices=["transformers", "vllm"],
        default="transformers",
        help="generation engine; vllm needs a GPU, vLLM installed and a merged model",
    )
    run.add_argument(
        "--device", default="auto", help="torch device for --backend transformers (auto: cuda if available)"
    )
    run.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="auto: bfloat16 on GPU, float32 on CPU",
    )
    run.add_argument("--max-new-tokens", type=positive_int, default=256, help="tokens generated per turn")
    run.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="0 is greedy decoding (reproducible); > 0 samples"
    )
    run.add_argument(
        "--max-completion-tokens",
        type=positive_int,
        default=None,
        help="end an episode after this many tokens past its prompt, tool results included, like "
        "training's max_completion_length (default: the checkpoint's, else no limit)",
    )
    run.add_argument(
        "--max-context-tokens",
        type=positive_int,
        default=None,
        help="end an episode whose conversation would grow past this many tokens (default: the model's context length)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output", type=Path, default=None, metavar="DIR", help="report directory (default: evaluations/<date-time>)"
    )
    out.add_argument(
        "--transcripts", action="store_true", help="store each episode's full conversation in episodes.jsonl (large)"
    )
    out.add_argument(
        "--screenshots",
        action="store_true",
        help="keep a screenshot of the page after every action in the recording (the service must "
        "run with --screenshots, SCREENSHOTS=1)",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def _fail(message: str, status: int = 2) -> int:
    print(f"browser-control evaluate: error: {message}", file=sys.stderr)
    return status


def _print_suites() -> int:
    from browser_control.evaluation.suites import list_suites

    for suite in list_suites():
        tasks = "every task of the service" if suite.tasks is None else ", ".join(suite.tasks)
        print(f"{suite.name}: {suite.description}\n    {tasks}")
    return 0


def _locate_models(specs: list[str], resolve: Callable[[str], str]) -> dict[str, ModelSource]:
    """Where each model loads from, found before any is loaded: no network wait for a model that is nowhere."""
    from browser_control.evaluation.runner import EvaluationError
    from browser_control.models.source import ModelNotFound, locate_model

    try:
        return {spec: locate_model(resolve(spec), load_adapter=True) for spec in specs}
    except ModelNotFound as exc:
        raise EvaluationError(str(exc)) from None


def _labels(specs: list[str]) -> list[str]:
    labels, seen = [], {}
    for spec in specs:
        label = Path(spec).name if spec.startswith(("/", ".", "~")) else spec
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def run(args: argparse.Namespace) -> int:
    from browser_control.client import EnvRequestError, EnvServiceUnavailable
    from browser_control.evaluation.runner import EvaluationError, available_tasks, check_tasks, resolve_env_url

    if args.list_suites:
        return _print_suites()
    args.model = args.model or []
    if args.policy == "scripted" and (args.model or args.compare_base):
        return _fail("--policy scripted runs no model; drop --model/--compare-base (or drop --policy scripted)")
    if args.policy == "model" and not args.model:
        return _fail("give at least one --model PATH_OR_ID (or --policy scripted)")
    if args.tasks is not None and not [t for t in args.tasks.split(",") if t.strip()]:
        return _fail("--tasks is empty; give task names such as click-test,enter-text")

    try:
        url = resolve_env_url(args.browsergym_url)
    except EvaluationError as exc:
        return _fail(str(exc))
    try:
        from browser_control.evaluation.model_lookup import (
            base_model_of,
            resolve_model,
            trained_tasks,
            training_config,
        )
        from browser_control.evaluation.scripted import SCRIPTED_TASKS
        from browser_control.evaluation.suites import load_suite

        # Everything cheap is checked before any model is loaded.
        for spec in args.model:
            resolve_model(spec)
        config = next((c for c in map(training_config, args.model) if c), None) if args.model else None
        if args.compare_base:
            base = base_model_of(args.model[0])
            if base is None:
                return _fail(
                    f"--compare-base: {args.model[0]} has no training_config.yaml or LoRA adapter naming "
                    "the model it was trained from; give the baseline as the first --model instead"
                )
            resolve_model(base)
            if base not in args.model:
                args.model.insert(0, base)
        args.model_sources = _locate_models(args.model, resolve_model)
        known = available_tasks(url)
        if args.tasks:
            requested = [t for t in args.tasks.split(",") if t.strip()]
        elif args.suite:
            requested = load_suite(args.suite).resolve(known)
        elif config and trained_tasks(config):
            requested = trained_tasks(config)
            print(f"tasks: {', '.join(requested)} (the training tasks; --tasks/--suite to change)", file=sys.stderr)
        else:
            requested = load_suite("miniwob-easy").resolve(known)
        tasks = check_tasks(requested, known)
        if args.policy == "scripted":
            missing = [t for t in tasks if t not in SCRIPTED_TASKS]
            if missing:
                return _fail(
                    f"no scripted policy for {', '.join(missing)}; scripted tasks: "
                    f"{', '.join(SCRIPTED_TASKS)} (--suite scripted)"
                )
        if args.max_episode_steps is None:
            configured = (config or {}).get("max_episode_steps")
            args.max_episode_steps = (
                configured if isinstance(configured, int) and configured > 0 else DEFAULT_MAX_EPISODE_STEPS
            )
        if args.max_completion_tokens is None and config:
            configured = config.get("max_completion_length")
            args.max_completion_tokens = configured if isinstance(configured, int) and configured > 0 else None
    except EvaluationError as exc:
        return _fail(str(exc))

    output = args.output or Path("evaluations") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    from browser_control.recording import EpisodeRecorder

    try:
        recorder = EpisodeRecorder(output, screenshots=args.screenshots, fresh=True)
    except OSError as exc:
        return _fail(f"cannot write to --output {output}: {exc}")
    try:
        reports = _evaluate_all(args, tasks, url, recorder)
    except EvaluationError as exc:
        return _fail(str(exc))
    except (EnvServiceUnavailable, EnvRequestError) as exc:
        return _fail(
            f"the environment service failed during the evaluation: {exc}. The episodes that finished "
            f"are in {recorder.log_path}",
            status=1,
        )

    from browser_control.evaluation.report import write_reports

    if recorder.failed:
        print(
            f"browser-control evaluate: warning: the episode recording stopped ({recorder.failed}); "
            "episodes.jsonl is rewritten from memory, without step-by-step traces for later episodes",
            file=sys.stderr,
        )
    paths = write_reports(reports, output, episodes_recorded=recorder.failed is None)
    print()
    for report in reports:
        o = report.overall
        print(
            f"{report.label}: {100 * o.success_rate:.1f}% success ({o.successes}/{o.episodes}), "
            f"95% CI {100 * o.ci_low:.1f}-{100 * o.ci_high:.1f}%, {report.duration_s:.0f} s"
        )
    print(
        f"report: {paths['markdown']}\nchart:  {paths['chart']}\ndata:   {paths['json']}\n"
        f"view:   browser-control view --logs {output}"
    )
    return 0


def _evaluate_all(
    args: argparse.Namespace, tasks: list[str], url: str, recorder: EpisodeRecorder | None = None
) -> list[EvaluationReport]:
    from browser_control.evaluation.runner import evaluate_policy

    common = {
        "tasks": tasks,
        "episodes": args.episodes,
        "seed_offset": args.seed_offset,
        "env_url": url,
        "max_episode_steps": args.max_episode_steps,
        "concurrency": args.concurrency,
        "progress": not args.quiet,
        "keep_transcripts": args.transcripts,
        "recorder": recorder,
        "require_screenshots": args.screenshots,
    }
    if args.policy == "scripted":
        from browser_control.evaluation.scripted import ScriptedPolicy

        return [evaluate_policy(ScriptedPolicy(), **common)]
    from browser_control.evaluation.model_policy import load_model_policy

    reports = []
    for spec, label in zip(args.model, _labels(args.model), strict=True):
        # One model at a time: a 350M model is small, but two vLLM engines would fight over the GPU.
        source = getattr(args, "model_sources", {}).get(spec)
        print(f"loading {label}: {source.describe() if source else spec}", file=sys.stderr, flush=True)
        policy = load_model_policy(
            spec,
            backend=args.backend,
            label=label,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            max_context_tokens=args.max_context_tokens,
            max_completion_tokens=args.max_completion_tokens,
        )
        try:
            reports.append(evaluate_policy(policy, **common))
        finally:
            policy.close()
    return reports
