"""Learning curve: a tiny LFM2 trained from scratch learns to read the goal and the page, by GRPO.

Every stage runs through the commands users run:

1. ``build_learning_lfm2``: a random LFM2 and a locally trained tokenizer (its corpus holds every bid 0-255
   and the goals of the training demonstrations, so a bid is one token in the page and in a tool call);
2. ``browser-control demos``: scripted demonstrations on training seeds;
3. with ``--demo-answers shuffled`` (default) each demonstration's tool calls are swapped for those of
   another demonstration of the same task: the SFT start learns the tool-call format and which answers a
   task takes, but nothing links an answer to the goal or the page (it is goal-blind by construction);
4. ``browser-control sft --config configs/sft_learning.yaml``: the warm start;
5. ``browser-control train --config configs/learning_grpo.yaml``: GRPO from the SFT checkpoint, saving
   intermediate checkpoints every ``save_steps``;
6. the evaluation harness (the model policy of ``browser-control evaluate``, greedy) on held-out
   EVALUATION seeds, for the SFT start and every GRPO checkpoint, with Wilson 95% intervals;
7. the best fixed-answer policy per task: every distinct action sequence of the (unshuffled) scripted
   demonstrations, played unchanged on the same evaluation seeds through the harness; the best one is the
   bar a policy that ignores the goal and the page can reach.

Output: ``OUT/learning_curve.json``, ``OUT/learning_curve.png`` (held-out success per task against GRPO
steps, the fixed-answer bar dashed) and ``OUT/RESULTS-learning.md``, the "Learning" section for
benchmarks/RESULTS.md, which is also printed. The tracked benchmarks/RESULTS.md (and its chart) is changed
only when asked with ``--results FILE`` (its other sections are left as they are).

Examples:
  python benchmarks/learning_curve.py                          # CPU, results under runs/learning/
  python benchmarks/learning_curve.py --tasks focus-text-2,click-dialog-2 --set max_steps=60
  python benchmarks/learning_curve.py --device cuda --hidden-size 256 --layers 6 --set max_steps=300
  python benchmarks/learning_curve.py --results benchmarks/RESULTS.md   # publish the numbers

On CPU use one torch thread per process on a shared machine (OMP_NUM_THREADS=1 is set for the children).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Learning"


DEVICE = "auto"  # --device; "cpu" hides the GPUs from the children


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.update(TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    if DEVICE == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _cli(args: list[str], log: Path) -> str:
    """Run `browser-control ARGS`; its stderr goes to ``log``; returns stdout; raises with the log's tail."""
    command = [sys.executable, "-m", "browser_control", *args]
    with log.open("w") as handle:
        proc = subprocess.run(command, env=_env(), stdout=subprocess.PIPE, stderr=handle, text=True, cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"`browser-control {' '.join(args)}` failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def _sets(pairs: list[str]) -> list[str]:
    return [part for pair in pairs for part in ("--set", pair)]


def _checkpoint(stdout: str) -> Path:
    match = re.search(r"^checkpoint: (.+)$", stdout, re.M)
    if not match:
        raise SystemExit(f"no 'checkpoint:' line in the output:\n{stdout[-2000:]}")
    path = Path(match.group(1).strip())
    return path if path.is_absolute() else REPO / path


class Service:
    """`browser-control serve-env` child processes (the shared launcher), unless an address was given.

    One service runs its browser workers as threads of one Python process, so its Python work (Playwright's
    client, the page text) shares one core however many workers it has; ``replicas`` services behind the
    trainer's pool (a comma-separated ``browsergym_url``) add cores. Demonstrations and evaluations use
    the first replica; training spreads its sessions over all of them.
    """

    def __init__(self, url: str | None, workers: int, log: Path, max_sessions: int = 64, replicas: int = 1):
        from browser_control.env_service.process import ServiceProcess

        self.processes: list[ServiceProcess] = []
        if url:
            self.url = self.training_url = url
            return
        try:
            for index in range(replicas):
                self.processes.append(
                    ServiceProcess(
                        "--workers",
                        str(workers),
                        "--max-sessions",
                        str(max_sessions),
                        log_path=log if replicas == 1 else log.with_name(f"{log.stem}-{index}{log.suffix}"),
                        chromium=os.environ.get("CHROMIUM_EXECUTABLE", "/usr/lib/chromium/chromium-headless-shell"),
                        env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
                    )
                )
        except BaseException:
            self.stop()
            raise
        self.url = self.processes[0].url
        self.training_url = ",".join(process.url for process in self.processes)

    def wait(self, timeout_s: float = 90.0) -> None:
        from browser_control.client import EnvClient, EnvServiceUnavailable

        try:
            for process in self.processes:
                process.wait_healthy(timeout_s)
            if not self.processes:
                with EnvClient(self.url) as client:
                    client.wait_until_healthy(timeout_s)
        except (RuntimeError, EnvServiceUnavailable) as exc:
            raise SystemExit(f"no environment service at {self.training_url}: {exc}") from None

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def _device() -> str:
    if DEVICE != "auto":
        return DEVICE
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _rates(report: Any) -> dict[str, Any]:
    from browser_control.evaluation.stats import wilson_interval

    return {
        "success": {t.task: t.success_rate for t in report.tasks},
        "successes": {t.task: t.successes for t in report.tasks},
        "interval": {t.task: wilson_interval(t.successes, t.episodes) for t in report.tasks},
        "overall": report.overall.success_rate,
    }


def evaluate(
    model: Path, tasks: list[str], episodes: int, url: str, max_episode_steps: int, seed_offset: int
) -> dict[str, Any]:
    """Greedy held-out success per task (evaluation seeds) through the evaluation harness."""
    import torch

    from browser_control.evaluation.model_policy import load_model_policy
    from browser_control.evaluation.runner import evaluate_policy

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    started = time.perf_counter()
    # float32: the tiny model is trained in fp32, and bf16 can flip a greedy choice between two close bids.
    policy = load_model_policy(str(model), label=model.name, max_new_tokens=48, device=_device(), dtype="float32")
    try:
        report = evaluate_policy(
            policy,
            tasks,
            episodes,
            seed_offset=seed_offset,
            env_url=url,
            max_episode_steps=max_episode_steps,
            concurrency=16,
            progress=False,
        )
    finally:
        policy.close()
    return {
        "model": str(model),
        **_rates(report),
        "episodes_per_task": episodes,
        "seconds": round(time.perf_counter() - started, 1),
    }


def fixed_answer_baseline(
    demos: Path, tasks: list[str], episodes: int, url: str, max_episode_steps: int, seed_offset: int, candidates: int
) -> dict[str, Any]:
    """browser_control.evaluation.fixed on the scripted demonstrations, on the models' evaluation seeds."""
    from browser_control.evaluation.fixed import best_fixed_answers
    from browser_control.sft.demos import read_demos

    best = best_fixed_answers(
        read_demos(demos),
        tasks,
        episodes,
        env_url=url,
        max_episode_steps=max_episode_steps,
        seed_offset=seed_offset,
        candidates=candidates,
    )
    for task, answer in best.items():
        print(
            f"fixed answer {task}: {answer.answer} {100 * answer.success_rate:.0f}% (best of {answer.tried})",
            file=sys.stderr,
        )
    return {task: answer.to_json() for task, answer in best.items()}


TRAINING_RECORD = "training.json"


def run_pipeline(args: argparse.Namespace, url: str, training_url: str | None = None) -> dict[str, Any]:
    """Train (unless ``--evaluate-only``), then evaluate every checkpoint and the fixed answers.
    ``training_url`` (default ``url``) may name several replicas, comma-separated, for GRPO's rollouts."""
    trained = read_training(args.out) if args.evaluate_only else train(args, url, training_url or url)
    return evaluate_run(args, url, trained)


def train(args: argparse.Namespace, url: str, training_url: str) -> dict[str, Any]:
    """Demonstrations, model, SFT, GRPO; the record (paths relative to OUT, times, command, machine) is
    written to OUT/training.json, so the evaluation can run later or elsewhere (``--evaluate-only``)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    demos = out / "demos.jsonl"
    _cli(
        [
            "demos",
            "--tasks",
            args.tasks,
            "--episodes",
            str(args.demos),
            "--output",
            str(demos),
            "--force",
            "--max-episode-steps",
            str(args.max_episode_steps),
            "--browsergym-url",
            url,
            "--concurrency",
            "8",
            "--quiet",
        ],
        out / "demos.log",
    )
    sft_demos = demos
    if args.demo_answers == "shuffled":
        from browser_control.sft.demos import read_demos, shuffle_answers

        sft_demos = out / "demos-shuffled.jsonl"
        tmp = sft_demos.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in shuffle_answers(read_demos(demos), args.seed)))
        tmp.replace(sft_demos)
    timings["demos_s"] = time.perf_counter() - started

    started = time.perf_counter()
    base = out / "tiny-lfm2"
    if not (base / "config.json").exists():
        import torch

        from browser_control.models.tiny import build_learning_lfm2

        torch.set_num_threads(1)
        layers = [int(i) for i in args.attention_layers.split(",")] if args.attention_layers else None
        build_learning_lfm2(
            base,
            hidden_size=args.hidden_size,
            num_hidden_layers=args.layers,
            attention_layers=layers,
            seed=args.seed,
            vocab_size=args.vocab_size,
            split=args.tokenizer_split,
        )
    timings["build_model_s"] = time.perf_counter() - started

    started = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sft_stdout = _cli(
        [
            "sft",
            "--config",
            str(args.sft_config),
            "--set",
            f"model_name={base}",
            "--set",
            f"demos=[{sft_demos}]",
            "--set",
            f"checkpoint_dir={out / 'checkpoints'}",
            "--set",
            f"logging_dir={out / 'tb'}",
            "--set",
            f"run_name=sft-{stamp}",
            "--set",
            f"max_episode_steps={args.max_episode_steps}",
            *_sets(args.sft_set),
        ],
        out / "sft.log",
    )
    sft = _checkpoint(sft_stdout)
    timings["sft_s"] = time.perf_counter() - started

    started = time.perf_counter()
    grpo_stdout = _cli(
        [
            "train",
            "--config",
            str(args.grpo_config),
            "--set",
            f"model_name={sft}",
            "--set",
            f"tasks=[{args.tasks}]",
            "--set",
            f"browsergym_url={training_url}",
            "--set",
            f"checkpoint_dir={out / 'checkpoints'}",
            "--set",
            f"logging_dir={out / 'tb'}",
            "--set",
            f"run_name=grpo-{stamp}",
            "--set",
            f"max_episode_steps={args.max_episode_steps}",
            *_sets(args.grpo_set),
        ],
        out / "grpo.log",
    )
    grpo = _checkpoint(grpo_stdout)
    timings["grpo_s"] = time.perf_counter() - started
    record = {
        "sft_checkpoint": os.path.relpath(sft, out),
        "grpo_checkpoint": os.path.relpath(grpo, out),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "command": "python benchmarks/learning_curve.py " + " ".join(sys.argv[1:]),
        "machine": _machine(),
        "device": _device(),
    }
    (out / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_training(out: Path) -> dict[str, Any]:
    """The record a finished training left in OUT (``--evaluate-only``), with a clear error without one."""
    path = out / TRAINING_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--evaluate-only: no {path}; train first (the command without --evaluate-only)") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--evaluate-only: {path} is not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise SystemExit(f"--evaluate-only: {path} holds no training record (a JSON object)")
    for key in ("sft_checkpoint", "grpo_checkpoint"):
        if not (out / record.get(key, "") / "metrics.json").is_file():
            raise SystemExit(f"--evaluate-only: {key} {record.get(key)!r} of {path} is not a finished checkpoint")
    return record


def evaluate_run(args: argparse.Namespace, url: str, trained: dict[str, Any]) -> dict[str, Any]:
    """Held-out success of the SFT start and every GRPO checkpoint, and the best fixed answers."""
    out: Path = args.out
    tasks = args.tasks.split(",")
    demos = out / "demos.jsonl"
    sft, grpo = out / trained["sft_checkpoint"], out / trained["grpo_checkpoint"]
    timings = dict(trained["timings_s"])

    # Held-out curve: the SFT start, every intermediate GRPO checkpoint, the final model.
    run_dir = out / "checkpoints" / "runs" / grpo.name
    points: list[tuple[int, Path]] = [(0, sft)]
    for checkpoint in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        points.append((int(checkpoint.name.split("-")[1]), checkpoint))
    final_step = json.loads((grpo / "metrics.json").read_text())["global_step"]
    if points[-1][0] != final_step:
        points.append((final_step, grpo))
    started = time.perf_counter()
    curve = []
    for step, model in points:
        result = evaluate(model, tasks, args.eval_episodes, url, args.max_episode_steps, args.eval_seed_offset)
        result["grpo_step"] = step
        curve.append(result)
        print(
            f"step {step:3d}: " + ", ".join(f"{t} {100 * s:.0f}%" for t, s in result["success"].items()),
            file=sys.stderr,
        )
    timings["evaluation_s"] = time.perf_counter() - started
    started = time.perf_counter()
    fixed = (
        fixed_answer_baseline(
            demos, tasks, args.eval_episodes, url, args.max_episode_steps, args.eval_seed_offset, args.fixed_candidates
        )
        if args.fixed_candidates
        else {}
    )
    timings["fixed_answer_s"] = time.perf_counter() - started
    return {
        "tasks": tasks,
        "sft_checkpoint": str(sft),
        "grpo_checkpoint": str(grpo),
        "curve": curve,
        "fixed_answer": fixed,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "sft_metrics": json.loads((sft / "metrics.json").read_text()),
        "grpo_summary": json.loads((grpo / "metrics.json").read_text()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "results"},
        "machine": trained["machine"],
        "device": trained["device"],
        "training_command": trained["command"],
        "evaluation_machine": _machine(),
        "evaluation_device": _device(),
    }


def _machine() -> str:
    text = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    if _device() == "cuda":
        import torch

        text += f", {torch.cuda.get_device_name(0)}"
    return text + f" (load average at the end {os.getloadavg()[0]:.1f})"


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per task: held-out success (95% band) over GRPO steps, the best fixed answer dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    columns = min(len(tasks), 3)
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharey=True)
    steps = [p["grpo_step"] for p in result["curve"]]
    for index, task in enumerate(tasks):
        ax = axes[index // columns][index % columns]
        rates = [100 * p["success"][task] for p in result["curve"]]
        low = [100 * p["interval"][task][0] for p in result["curve"]]
        high = [100 * p["interval"][task][1] for p in result["curve"]]
        ax.fill_between(steps, low, high, alpha=0.2, color="tab:blue")
        ax.plot(steps, rates, marker="o", color="tab:blue", label="model (greedy)")
        fixed = result.get("fixed_answer", {}).get(task)
        if fixed:
            ax.axhline(100 * fixed["success"], color="tab:red", linestyle="--", label="best fixed answer")
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
        ax.set_xlabel("GRPO steps (0 = SFT start)", fontsize=8)
        if index % columns == 0:
            ax.set_ylabel("held-out success (%)", fontsize=8)
        if index == 0:
            ax.legend(loc="lower right", fontsize=7)
    for index in range(len(tasks), rows * columns):
        axes[index // columns][index % columns].axis("off")
    episodes = result["curve"][0]["episodes_per_task"]
    start = "goal-blind SFT" if result["settings"].get("demo_answers") == "shuffled" else "SFT"
    fig.suptitle(
        f"Tiny LFM2 from scratch, {start} then GRPO ({episodes} evaluation seeds per task, 95% Wilson bands)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(rate: float, interval: Any = None) -> str:
    text = f"{100 * rate:.0f}%"
    return text + (f" [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]" if interval is not None else "")


def verdict(result: dict[str, Any], margin: float = 0.30) -> dict[str, dict[str, Any]]:
    """Per task: the gain over the SFT start (Newcombe 95% interval) and the distance to the fixed answer."""
    from browser_control.evaluation.stats import difference_interval

    first, last = result["curve"][0], result["curve"][-1]
    n = first["episodes_per_task"]
    out = {}
    for task in result["tasks"]:
        gain = difference_interval(first["successes"][task], n, last["successes"][task], n)
        fixed = result.get("fixed_answer", {}).get(task)
        over_fixed = difference_interval(fixed["successes"], n, last["successes"][task], n) if fixed else None
        out[task] = {
            "gain": gain,
            "over_fixed": over_fixed,
            "passes": gain[0] >= margin - 1e-9 and (over_fixed is None or over_fixed[1] > 0),
        }
    return out


def _seconds(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.0f} s"


def _provenance(result: dict[str, Any], command: str) -> list[str]:
    """Command and machine; both pairs when the evaluation ran apart from the training (--evaluate-only)."""
    settings = result["settings"]
    trained_on = f"{result['machine']}, device {result.get('device', settings.get('device'))}"
    training = result.get("training_command", command)
    if training == command:
        return [f"Command: `{command}`  ", f"Machine: {trained_on}.  "]
    evaluated_on = f"{result.get('evaluation_machine')}, device {result.get('evaluation_device')}"
    return [
        f"Training: `{training}` on {trained_on}.  ",
        f"Evaluation: `{command}` on {evaluated_on}.  ",
    ]


def results_section(result: dict[str, Any], png: Path, results_md: Path, command: str) -> str:
    first, last = result["curve"][0], result["curve"][-1]
    t = result["timings_s"]
    checks = verdict(result)
    settings = result["settings"]
    lines = [
        SECTION,
        "",
        "A tiny LFM2 trained from scratch (random weights, tokenizer built locally with `build_tiny_lfm2`) on tasks "
        "whose answer depends on the goal or the page. The SFT start is goal-blind by construction: its "
        "demonstrations keep their prompts but take their tool calls from another demonstration of the same "
        f"task ({settings.get('demo_answers')} answers), so it learns the format and the answers a task takes, "
        "never which one the goal asks for. GRPO (`browser-control train`) must learn that from the reward. "
        "Success is greedy, on held-out evaluation seeds (never trained on), through the evaluation harness, "
        "with Wilson 95% intervals. *Best fixed answer*: each of the most frequent action sequences of the "
        "scripted demonstrations (training seeds) played unchanged on the same evaluation seeds through the "
        "harness; the best per task is what a policy that ignores the goal and the page reaches.",
        "",
        *_provenance(result, command),
        f"Model: hidden {settings.get('hidden_size')}, {settings.get('layers')} layers (attention in "
        f"{settings.get('attention_layers') or 'the last'}), vocabulary {settings.get('vocab_size')}; "
        f"{settings.get('demos')} demonstrations per task.  ",
        f"Time: demos {_seconds(t.get('demos_s'))}, SFT {_seconds(t.get('sft_s'))}, GRPO "
        f"{_seconds(t.get('grpo_s'))} ({last['grpo_step']} steps), evaluation of {len(result['curve'])} "
        f"checkpoints {_seconds(t.get('evaluation_s'))}, fixed answers {_seconds(t.get('fixed_answer_s'))}.",
        "",
        f"| task | best fixed answer | SFT start | after GRPO ({last['grpo_step']} steps) | gain over SFT "
        "[95%] | over fixed answer [95%] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task in result["tasks"]:
        fixed = result.get("fixed_answer", {}).get(task)
        gain, over = checks[task]["gain"], checks[task]["over_fixed"]
        lines.append(
            f"| {task} | "
            + (f"{_pct(fixed['success'], fixed['interval'])} `{fixed['answer']}`" if fixed else "-")
            + f" | {_pct(first['success'][task], first['interval'][task])} "
            f"| {_pct(last['success'][task], last['interval'][task])} "
            f"| {100 * gain[0]:+.0f} [{100 * gain[1]:+.0f}, {100 * gain[2]:+.0f}] "
            f"| " + (f"{100 * over[0]:+.0f} [{100 * over[1]:+.0f}, {100 * over[2]:+.0f}]" if over else "-") + " |"
        )
    a, b = 100 * first["overall"], 100 * last["overall"]
    lines.append(f"| overall | | {a:.0f}% | {b:.0f}% | {b - a:+.0f} | |")
    lines += ["", f"![learning curve]({os.path.relpath(png, results_md.parent)})", ""]
    return "\n".join(lines)


def write_section(results_md: Path, section: str) -> None:
    """Replace the Learning section's generated part (up to its first '### ' subsection or the next '## '
    heading) or append the section; the hand-written subsections and the other sections stay."""
    text = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^##+ |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text.rstrip("\n") + "\n")


def publish(result: dict[str, Any], png: Path, command: str, results: Path | None = None) -> Path:
    """Write and print the RESULTS section beside the chart; only ``results`` set touches that file."""
    section_md = png.parent / "RESULTS-learning.md"
    section_md.write_text(results_section(result, png, section_md, command) + "\n")
    print(section_md.read_text())
    if results is not None:
        shipped = results.parent / png.name
        shipped.write_bytes(png.read_bytes())
        write_section(results, results_section(result, shipped, results, command))
        print(f"updated {results} and {shipped}")
    return section_md


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "learning", help="work and output directory")
    parser.add_argument(
        "--tasks",
        default="focus-text-2,click-dialog-2,click-tab,click-button",
        help="comma-separated tasks (each needs a scripted policy)",
    )
    parser.add_argument("--demos", type=int, default=40, help="scripted demonstrations recorded per task")
    parser.add_argument(
        "--demo-answers",
        choices=["shuffled", "scripted"],
        default="shuffled",
        help="shuffled: each demonstration's tool calls come from another one of the task, so the "
        "SFT start cannot read the goal; scripted: the demonstrations as recorded",
    )
    parser.add_argument(
        "--fixed-candidates",
        type=int,
        default=12,
        help="action sequences tried for the best fixed answer per task (0 = skip)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where SFT, GRPO and evaluation run (auto: cuda when available)",
    )
    parser.add_argument("--sft-config", type=Path, default=REPO / "configs" / "sft_learning.yaml")
    parser.add_argument("--grpo-config", type=Path, default=REPO / "configs" / "learning_grpo.yaml")
    parser.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="SFT config override")
    parser.add_argument(
        "--set", dest="grpo_set", action="append", default=[], metavar="KEY=VALUE", help="GRPO config override"
    )
    parser.add_argument(
        "--max-episode-steps", "--max-steps", type=int, default=2, help="actions per episode (demos, SFT, GRPO, eval)"
    )
    parser.add_argument("--eval-episodes", type=int, default=30, help="held-out episodes per task and checkpoint")
    parser.add_argument("--eval-seed-offset", type=int, default=0, help="evaluation seeds 1e9 + offset + i")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--attention-layers",
        default="1,3",
        help="comma-separated indices of the attention layers (the others are convolutions)",
    )
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary of the local tokenizer")
    parser.add_argument(
        "--tokenizer-split",
        choices=["digits", "words"],
        default="digits",
        help="digits: merges may span words, numbers stay whole (~180-token prompts); words: "
        "GPT-2's word split (~1450-token prompts)",
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation of the tiny model")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="skip demonstrations, SFT and GRPO: evaluate the run an earlier call left in --out (its "
        "training.json names the checkpoints), e.g. one trained on a GPU machine whose time ended first; "
        "give the training's --tasks, --max-steps and --eval-episodes",
    )
    parser.add_argument("--browsergym-url", default=None, help="use this service instead of starting one")
    parser.add_argument(
        "--env-workers",
        type=int,
        default=2,
        help="browser workers (threads of the service, one browser each) of each service this script starts",
    )
    parser.add_argument(
        "--env-replicas",
        type=int,
        default=1,
        help="environment services to start, each with --env-workers workers; GRPO spreads its rollouts over "
        "them (one service's Python work runs on one core: replicas use more cores)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="also replace the Learning section of this file (e.g. benchmarks/RESULTS.md) and "
        "copy the chart beside it; without it nothing outside --out is written",
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/learning_curve.py " + " ".join(sys.argv[1:])
    # Every rollout of a GRPO step holds a session at once: room for the largest batch asked for.
    batches = [int(v.split("=", 1)[1]) for v in args.grpo_set if v.startswith("per_device_train_batch_size=")]
    batch = max(batches or [16])
    if args.env_replicas < 1:
        parser.error("--env-replicas: at least 1")
    service = Service(
        args.browsergym_url,
        workers=args.env_workers,
        log=args.out / "serve-env.log",
        max_sessions=max(64, batch + 16),
        replicas=args.env_replicas,
    )
    started = time.perf_counter()
    try:
        service.wait()
        result = run_pipeline(args, service.url, service.training_url)
    finally:
        service.stop()
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["command"] = command
    (args.out / "learning_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    png = args.out / "learning_curve.png"
    plot(result, png)
    publish(result, png, command, args.results)
    first, last = result["curve"][0], result["curve"][-1]
    checks = verdict(result)
    for task in result["tasks"]:
        fixed = result["fixed_answer"].get(task, {}).get("success")
        print(
            f"{task:16s} {100 * first['success'][task]:5.1f}% -> {100 * last['success'][task]:5.1f}%"
            + (f" (best fixed answer {100 * fixed:.0f}%)" if fixed is not None else "")
            + ("  goal-conditioned gain" if checks[task]["passes"] else "")
        )
    print(f"total {result['total_s']:.0f} s; {args.out / 'learning_curve.json'}; {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
