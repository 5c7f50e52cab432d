"""Learning curve: a tiny LFM2 trained from scratch learns MiniWoB tasks, first by SFT, then by GRPO.

Every stage runs through the commands users run, on this CPU machine:

1. ``build_tiny_lfm2``: a random LFM2 (~0.6M parameters) and a locally trained tokenizer;
2. ``browser-control demos``: scripted demonstrations on training seeds;
3. ``browser-control sft --config configs/sft_learning.yaml``: a deliberately weak warm start;
4. ``browser-control train --config configs/learning_grpo.yaml``: GRPO from the SFT checkpoint, saving
   intermediate checkpoints every ``save_steps``;
5. the evaluation harness (``evaluate_policy`` with the model policy of ``browser-control evaluate``,
   greedy) on held-out EVALUATION seeds, for the SFT start and every GRPO checkpoint.

Output: ``OUT/learning_curve.json``, ``OUT/learning_curve.png`` (held-out success per task against
GRPO steps) and ``OUT/RESULTS-learning.md``, the "Learning" section for benchmarks/RESULTS.md, which is
also printed. The tracked benchmarks/RESULTS.md (and its chart) is changed only when asked with
``--results FILE`` (its other sections are left as they are).

Examples:
  python benchmarks/learning_curve.py                          # results under runs/learning/
  python benchmarks/learning_curve.py --browsergym-url http://127.0.0.1:8000 --set max_steps=20
  python benchmarks/learning_curve.py --results benchmarks/RESULTS.md   # publish the numbers

Use one torch thread per process on a shared 2-core machine (OMP_NUM_THREADS=1 is set for the children).
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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
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
    """A `browser-control serve-env` child process (the shared launcher), unless an address was given."""

    def __init__(self, url: str | None, workers: int, log: Path):
        from browser_control.env_service.process import ServiceProcess

        self.process: ServiceProcess | None = None
        if url:
            self.url = url
            return
        self.process = ServiceProcess(
            "--workers", str(workers), "--max-sessions", "64", log_path=log,
            chromium=os.environ.get("CHROMIUM_EXECUTABLE", "/usr/lib/chromium/chromium-headless-shell"),
            env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
        self.url = self.process.url

    def wait(self, timeout_s: float = 90.0) -> None:
        from browser_control.client import EnvClient, EnvServiceUnavailable

        try:
            if self.process is not None:
                self.process.wait_healthy(timeout_s)
            else:
                with EnvClient(self.url) as client:
                    client.wait_until_healthy(timeout_s)
        except (RuntimeError, EnvServiceUnavailable) as exc:
            raise SystemExit(f"no environment service at {self.url}: {exc}") from None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def evaluate(model: Path, tasks: list[str], episodes: int, url: str, max_episode_steps: int,
             seed_offset: int) -> dict[str, Any]:
    """Greedy held-out success per task (evaluation seeds) through the evaluation harness."""
    import torch

    from browser_control.evaluation.model_policy import load_model_policy
    from browser_control.evaluation.runner import evaluate_policy

    torch.set_num_threads(1)
    started = time.perf_counter()
    policy = load_model_policy(str(model), label=model.name, max_new_tokens=48)
    try:
        report = evaluate_policy(policy, tasks, episodes, seed_offset=seed_offset, env_url=url,
                                 max_episode_steps=max_episode_steps, concurrency=16, progress=False)
    finally:
        policy.close()
    return {
        "model": str(model),
        "success": {t.task: t.success_rate for t in report.tasks},
        "overall": report.overall.success_rate,
        "episodes_per_task": episodes,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_pipeline(args: argparse.Namespace, url: str) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    tasks = args.tasks.split(",")

    started = time.perf_counter()
    base = out / "tiny-lfm2"
    if not (base / "config.json").exists():
        import torch

        from browser_control.models.tiny import build_tiny_lfm2

        torch.set_num_threads(1)
        build_tiny_lfm2(base, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                        intermediate_size=2 * args.hidden_size, num_attention_heads=4, seed=args.seed)
    timings["build_model_s"] = time.perf_counter() - started

    started = time.perf_counter()
    demos = out / "demos.jsonl"
    _cli(["demos", "--tasks", args.tasks, "--episodes", str(args.demos), "--output", str(demos), "--force",
          "--max-episode-steps", str(args.max_episode_steps), "--browsergym-url", url, "--concurrency", "8", "--quiet"],
         out / "demos.log")
    timings["demos_s"] = time.perf_counter() - started

    started = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sft_stdout = _cli(["sft", "--config", str(args.sft_config), "--set", f"model_name={base}",
                       "--set", f"demos=[{demos}]", "--set", f"checkpoint_dir={out / 'checkpoints'}",
                       "--set", f"logging_dir={out / 'tb'}", "--set", f"run_name=sft-{stamp}",
                       "--set", f"max_episode_steps={args.max_episode_steps}", *_sets(args.sft_set)],
                      out / "sft.log")
    sft = _checkpoint(sft_stdout)
    timings["sft_s"] = time.perf_counter() - started

    started = time.perf_counter()
    grpo_stdout = _cli(["train", "--config", str(args.grpo_config), "--set", f"model_name={sft}",
                        "--set", f"tasks=[{args.tasks}]", "--set", f"browsergym_url={url}",
                        "--set", f"checkpoint_dir={out / 'checkpoints'}", "--set", f"logging_dir={out / 'tb'}",
                        "--set", f"run_name=grpo-{stamp}", "--set", f"max_episode_steps={args.max_episode_steps}",
                        *_sets(args.grpo_set)], out / "grpo.log")
    grpo = _checkpoint(grpo_stdout)
    timings["grpo_s"] = time.perf_counter() - started

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
        print(f"step {step:3d}: " + ", ".join(f"{t} {100 * s:.0f}%" for t, s in result["success"].items()),
              file=sys.stderr)
    timings["evaluation_s"] = time.perf_counter() - started
    return {
        "tasks": tasks,
        "sft_checkpoint": str(sft),
        "grpo_checkpoint": str(grpo),
        "curve": curve,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "sft_metrics": json.loads((sft / "metrics.json").read_text()),
        "grpo_summary": json.loads((grpo / "metrics.json").read_text()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "results"},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
                   f"(load average at the end {os.getloadavg()[0]:.1f})",
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    steps = [p["grpo_step"] for p in result["curve"]]
    # Distinct markers and widths: tasks that reach the same rates would otherwise hide each other.
    for index, task in enumerate(result["tasks"]):
        ax.plot(steps, [100 * p["success"][task] for p in result["curve"]], marker="osD^v<>"[index % 7],
                linewidth=1 + 2.5 * (len(result["tasks"]) - 1 - index) / max(len(result["tasks"]) - 1, 1),
                markersize=9 - 1.2 * index, alpha=0.85, label=task)
    ax.plot(steps, [100 * p["overall"] for p in result["curve"]], color="black", linestyle="--", label="overall")
    ax.set_xlabel("GRPO optimizer steps (0 = the SFT start)")
    ax.set_ylabel("held-out success, greedy (%)")
    episodes = result["curve"][0]["episodes_per_task"]
    ax.set_title(f"Tiny LFM2 from scratch: SFT then GRPO ({episodes} evaluation seeds per task)")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_section(result: dict[str, Any], png: Path, results_md: Path, command: str) -> str:
    first, last = result["curve"][0], result["curve"][-1]
    t = result["timings_s"]
    lines = [
        SECTION,
        "",
        "A tiny LFM2 trained from scratch (random weights, tokenizer built locally with `build_tiny_lfm2`): a weak "
        "SFT start on scripted demonstrations, then GRPO through `browser-control train`. Success is greedy, on "
        "held-out evaluation seeds (never trained on), through the evaluation harness.",
        "",
        f"Command: `{command}`  ",
        f"Machine: {result['machine']}, CPU only, one torch thread per process.  ",
        f"Time: demos {t['demos_s']:.0f} s, SFT {t['sft_s']:.0f} s, GRPO {t['grpo_s']:.0f} s "
        f"({last['grpo_step']} steps), evaluation of {len(result['curve'])} checkpoints {t['evaluation_s']:.0f} s; "
        f"{result['total_s']:.0f} s in all.",
        "",
        f"| task | SFT start | after GRPO ({last['grpo_step']} steps) | change (points) |",
        "| --- | --- | --- | --- |",
    ]
    for task in result["tasks"]:
        a, b = 100 * first["success"][task], 100 * last["success"][task]
        lines.append(f"| {task} | {a:.0f}% | {b:.0f}% | {b - a:+.0f} |")
    a, b = 100 * first["overall"], 100 * last["overall"]
    lines.append(f"| overall | {a:.0f}% | {b:.0f}% | {b - a:+.0f} |")
    lines += ["", f"![learning curve]({os.path.relpath(png, results_md.parent)})", ""]
    return "\n".join(lines)


def write_section(results_md: Path, section: str) -> None:
    """Replace the Learning section (up to the next '## ' heading) or append it; other sections stay."""
    text = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
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
    parser.add_argument("--tasks", default="click-test,focus-text,click-dialog,click-tab",
                        help="comma-separated tasks (each needs a scripted policy)")
    parser.add_argument("--demos", type=int, default=40, help="scripted demonstrations recorded per task")
    parser.add_argument("--sft-config", type=Path, default=REPO / "configs" / "sft_learning.yaml")
    parser.add_argument("--grpo-config", type=Path, default=REPO / "configs" / "learning_grpo.yaml")
    parser.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="SFT config override")
    parser.add_argument("--set", dest="grpo_set", action="append", default=[], metavar="KEY=VALUE",
                        help="GRPO config override")
    parser.add_argument("--max-episode-steps", "--max-steps", type=int, default=2,
                        help="actions per episode (demos, SFT, GRPO, eval)")
    parser.add_argument("--eval-episodes", type=int, default=30, help="held-out episodes per task and checkpoint")
    parser.add_argument("--eval-seed-offset", type=int, default=0, help="evaluation seeds 1e9 + offset + i")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="initialisation of the tiny model")
    parser.add_argument("--browsergym-url", default=None, help="use this service instead of starting one")
    parser.add_argument("--results", type=Path, default=None,
                        help="also replace the Learning section of this file (e.g. benchmarks/RESULTS.md) and "
                        "copy the chart beside it; without it nothing outside --out is written")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/learning_curve.py " + " ".join(sys.argv[1:])
    service = Service(args.browsergym_url, workers=2, log=args.out / "serve-env.log")
    started = time.perf_counter()
    try:
        service.wait()
        result = run_pipeline(args, service.url)
    finally:
        service.stop()
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["command"] = command
    (args.out / "learning_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    png = args.out / "learning_curve.png"
    plot(result, png)
    publish(result, png, command, args.results)
    first, last = result["curve"][0], result["curve"][-1]
    for task in result["tasks"]:
        print(f"{task:14s} {100 * first['success'][task]:5.1f}% -> {100 * last['success'][task]:5.1f}%")
    print(f"total {result['total_s']:.0f} s; {args.out / 'learning_curve.json'}; {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
