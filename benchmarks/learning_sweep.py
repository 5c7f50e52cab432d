"""Recipe search for the learning benchmark: GRPO on recorded prompts, many settings at once, no browser.

A GRPO run through the environment service costs a browser reset and a step per rollout, so trying model
sizes and learning rates that way is slow. For single-action tasks the reward of a rollout is known from
the recorded demonstrations: the instance is solved when the first tool call names the bid the scripted
policy clicked. This script trains on exactly the prompts a rollout starts with (system prompt, tools,
task, goal and page, rendered by the model's chat template), with TRL's GRPOTrainer and that reward, and
evaluates greedily on held-out prompts (other seeds of the same tasks). It ranks recipes; the result that
counts is still benchmarks/learning_curve.py through the environment.

The reward is a proxy: it accepts the scripted bid only (the environment would also accept, e.g., a
click instead of a focus on the right box) and it needs episodes of one action
(`browser-control demos --max-episode-steps 1`).

For each model (`--models HIDDEN:LAYERS:ATTENTION_LAYERS;...`) a random LFM2 is built with
``build_learning_lfm2`` (the model and tokenizer of learning_curve.py), given the goal-blind supervised start
(``shuffle_answers`` then `browser-control sft --config configs/sft_learning.yaml`), and every setting of
``--grid`` (a JSON list of objects with keys lr, batch, beta, temp, gens, and extra: more GRPOConfig keys)
runs as its own process, ``--parallel`` at a time. ``--seeds 0,1,2`` repeats every recipe from other
initialisations, goal-blind answers and sampling: at these sizes one run of a recipe may learn and the next
not (docs/learning.md). Each run writes OUT/RUN.jsonl: the best fixed answer per task, then held-out success
and the share of answers with a tool call every ``--eval-every`` steps.

Examples:
  browser-control demos --tasks focus-text-2,click-tab,click-dialog-2,click-button --episodes 120 \\
      --max-episode-steps 1 --output data/sweep-demos.jsonl
  python benchmarks/learning_sweep.py --demos data/sweep-demos.jsonl --out runs/sweep \\
      --models "256:6:1,3,5" --grid '[{"lr": 2e-4, "batch": 256}, {"lr": 3e-4, "batch": 256}]' --steps 200 \\
      --seeds 0,1,2 --parallel 6
  python benchmarks/learning_sweep.py --summary runs/sweep       # the table of a finished or stopped sweep
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIRST_BID = re.compile(r"\w+\(bid='(\d+)'")
GRID_KEYS = {"lr", "batch", "beta", "temp", "gens", "extra"}


@dataclass(frozen=True)
class ModelSpec:
    hidden: int
    layers: int
    attention: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``HIDDEN:LAYERS:I,J`` e.g. ``256:6:1,3,5`` (attention in layers 1, 3 and 5, convolutions elsewhere)."""
        try:
            hidden, layers, attention = text.split(":")
            spec = cls(int(hidden), int(layers), tuple(int(i) for i in attention.split(",")))
        except ValueError:
            raise ValueError(f"model {text!r}: expected HIDDEN:LAYERS:ATTENTION_LAYERS, e.g. 256:6:1,3,5") from None
        if not all(0 <= i < spec.layers for i in spec.attention):
            raise ValueError(f"model {text!r}: attention layers must lie in 0..{spec.layers - 1}")
        return spec

    @property
    def name(self) -> str:
        return f"h{self.hidden}-l{self.layers}-a{''.join(map(str, self.attention))}"


def start_name(model: ModelSpec, seed: int) -> str:
    """A model and its supervised start; seed 0 keeps the bare model name."""
    return model.name if seed == 0 else f"{model.name}-seed{seed}"


def run_name(model: ModelSpec, setting: dict[str, Any], seed: int = 0) -> str:
    return start_name(model, seed) + "".join(f"-{k}{v}" for k, v in setting.items() if k != "extra")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: distinct integers >= 0")
    return seeds


def parse_grid(text: str) -> list[dict[str, Any]]:
    grid = json.loads(text)
    if not isinstance(grid, list) or not grid or not all(isinstance(g, dict) for g in grid):
        raise ValueError('--grid must be a non-empty JSON list of objects, e.g. \'[{"lr": 3e-4, "batch": 256}]\'')
    for setting in grid:
        unknown = set(setting) - GRID_KEYS
        if unknown:
            raise ValueError(f"--grid: unknown keys {sorted(unknown)}; known: {sorted(GRID_KEYS)}")
    return grid


def split_prompts(rows: list[dict[str, Any]], held_out_share: float) -> tuple[list[dict], list[dict]]:
    """Per task, the last ``held_out_share`` of the demonstrations (in seed order) are held out."""
    by_task: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["task"], r["seed"])):
        by_task[row["task"]].append(row)
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for task_rows in by_task.values():
        cut = max(1, min(len(task_rows) - 1, round(len(task_rows) * (1 - held_out_share))))
        train += task_rows[:cut]
        test += task_rows[cut:]
    return train, test


def bid_reward(completions: list[str], bid: list[str], **_: Any) -> list[float]:
    """1.0 when the completion's first tool call names the scripted bid."""
    rewards = []
    for text, want in zip(completions, bid, strict=True):
        match = FIRST_BID.search(text)
        rewards.append(1.0 if match and match.group(1) == want else 0.0)
    return rewards


def fixed_answer_rates(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out success of always answering a task's most frequent training bid: what ignoring goal and page gets."""
    rates = {}
    for task in sorted({r["task"] for r in test}):
        counts = collections.Counter(r["bid"] for r in train if r["task"] == task)
        best = counts.most_common(1)[0][0] if counts else None
        held_out = [r for r in test if r["task"] == task]
        rates[task] = round(sum(r["bid"] == best for r in held_out) / len(held_out), 3)
    return rates


def prompt_rows(demos: Path, tokenizer: Any, tasks: list[str] | None) -> list[dict[str, Any]]:
    from browser_control.sft.demos import read_demos

    rows = []
    for record in read_demos(demos):
        if tasks and record["task_name"] not in tasks:
            continue
        first = record["messages"][2]
        if first.get("role") != "assistant" or not first.get("tool_calls"):
            raise SystemExit(f"{demos}: {record['task_name']} seed {record['seed']} does not start with a tool call")
        text = tokenizer.apply_chat_template(
            record["messages"][:2], tools=record["tools"], add_generation_prompt=True, tokenize=False
        )
        bid = first["tool_calls"][0]["function"]["arguments"].get("bid")
        rows.append({"prompt": text, "task": record["task_name"], "seed": record["seed"], "bid": str(bid)})
    return rows


# -- one GRPO run (a child process) -------------------------------------------------------------------------


def run_one(job: dict[str, Any]) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    seed = job.get("seed", 0)
    torch.manual_seed(seed)
    setting = job["setting"]
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    rows = prompt_rows(Path(job["demos"]), tokenizer, job["tasks"])
    train, test = split_prompts(rows, job["held_out_share"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(job["model"]).to(device)
    log = open(job["out"], "w")  # noqa: SIM115 -- one line per evaluation, flushed, for a sweep stopped early

    def emit(record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    def evaluate(step: int) -> None:
        model.eval()
        tokenizer.padding_side = "left"
        solved: collections.Counter[str] = collections.Counter()
        counted: collections.Counter[str] = collections.Counter()
        with_call = 0
        with torch.no_grad():
            for start in range(0, len(test), 64):
                chunk = test[start : start + 64]
                batch = tokenizer(
                    [r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)
                generated = model.generate(**batch, max_new_tokens=16, do_sample=False)
                for row, tokens in zip(chunk, generated, strict=True):
                    text = tokenizer.decode(tokens[batch.input_ids.shape[1] :], skip_special_tokens=False)
                    match = FIRST_BID.search(text)
                    counted[row["task"]] += 1
                    with_call += bool(match)
                    solved[row["task"]] += bool(match and match.group(1) == row["bid"])
        model.train()
        success = {task: round(solved[task] / counted[task], 3) for task in counted}
        emit({"step": step, "success": success, "tool_call_share": round(with_call / len(test), 3)})

    emit({"fixed_answer": fixed_answer_rates(train, test), "train_prompts": len(train), "held_out": len(test)})
    evaluate(0)

    class EvaluateEvery(TrainerCallback):
        def on_step_end(self, args, state, control, **_: Any):  # type: ignore[no-untyped-def]
            if state.global_step % job["eval_every"] == 0 and state.global_step < job["steps"]:
                evaluate(state.global_step)

    config = GRPOConfig(
        output_dir=job["out"] + ".trainer",
        learning_rate=setting.get("lr", 3e-4),
        beta=setting.get("beta", 0.0),
        per_device_train_batch_size=setting.get("batch", 256),
        num_generations=setting.get("gens", 8),
        temperature=setting.get("temp", 1.0),
        max_steps=job["steps"],
        max_completion_length=24,
        loss_type="dapo",
        lr_scheduler_type="constant",
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=device == "cpu",
        bf16=False,
        seed=seed,
        disable_tqdm=True,
        **setting.get("extra", {}),
    )
    # Repeated so that max_steps, not the epoch, ends the run.
    repeats = 1 + job["steps"] * config.per_device_train_batch_size // max(1, len(train))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[bid_reward],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "bid": r["bid"]} for r in train] * repeats),
        processing_class=tokenizer,
        callbacks=[EvaluateEvery()],
    )
    started = time.perf_counter()
    trainer.train()
    evaluate(job["steps"])
    if job.get("save"):  # the trained policy, for an evaluation through the environment
        model.save_pretrained(job["save"])
        tokenizer.save_pretrained(job["save"])
    history = [h for h in trainer.state.log_history if "reward" in h]
    emit(
        {
            "train_s": round(time.perf_counter() - started, 1),
            "reward": [round(h["reward"], 3) for h in history],
            "entropy": [round(h.get("entropy", 0.0), 3) for h in history],
        }
    )


# -- the sweep ----------------------------------------------------------------------------------------------


def _child_env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def supervised_start(
    spec: ModelSpec, seed: int, demos: Path, out: Path, sft_steps: int, env: dict[str, str]
) -> subprocess.Popen:
    """Build the model (initialised from ``seed``) and start its goal-blind SFT (``demos``, seeded the same)."""
    from browser_control.models.tiny import build_learning_lfm2

    name = start_name(spec, seed)
    base = out / "models" / name
    build_learning_lfm2(base, spec.hidden, spec.layers, attention_layers=list(spec.attention), seed=seed)
    command = [sys.executable, "-m", "browser_control", "sft", "--config", str(REPO / "configs" / "sft_learning.yaml")]
    for key, value in {
        "model_name": base,
        "demos": f"[{demos}]",
        "checkpoint_dir": out / "checkpoints",
        "logging_dir": out / "tb",
        "run_name": f"sft-{name}",
        "max_episode_steps": 1,
        "max_demos_per_task": 10_000,
        "max_steps": sft_steps,
        "seed": seed,
    }.items():
        command += ["--set", f"{key}={value}"]
    log = (out / f"sft-{name}.log").open("w")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)


def sweep(args: argparse.Namespace) -> int:
    from browser_control.sft.demos import read_demos, shuffle_answers

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = _child_env(args.device)
    records = read_demos(args.demos)
    started = time.perf_counter()
    starts = {}
    for seed in args.seeds:
        # Each seed is a whole replicate: its own goal-blind answers, initialisation, SFT and GRPO sampling.
        goal_blind = out / f"demos-goal-blind-seed{seed}.jsonl"
        goal_blind.write_text("".join(json.dumps(r) + "\n" for r in shuffle_answers(records, seed)))
        for spec in args.models:
            starts[spec, seed] = supervised_start(spec, seed, goal_blind, out, args.sft_steps, env)
    checkpoints: dict[tuple[ModelSpec, int], str] = {}
    for (spec, seed), proc in starts.items():
        stdout, _ = proc.communicate()
        found = re.search(r"^checkpoint: (.+)$", stdout, re.M)
        if proc.returncode != 0 or not found:
            tail = (out / f"sft-{start_name(spec, seed)}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"supervised start of {start_name(spec, seed)} failed:\n{tail}")
        checkpoints[spec, seed] = found.group(1)
    print(f"supervised starts: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    pending = []
    for seed, spec, setting in itertools.product(args.seeds, args.models, args.grid):
        name = run_name(spec, setting, seed)
        job = {
            "model": checkpoints[spec, seed],
            "seed": seed,
            "demos": str(args.demos.resolve()),
            "tasks": args.tasks.split(",") if args.tasks else None,
            "held_out_share": args.held_out_share,
            "setting": setting,
            "steps": args.steps,
            "eval_every": args.eval_every,
            "out": str(out / f"{name}.jsonl"),
        }
        (out / f"{name}.job.json").write_text(json.dumps({**job, "spec": spec.__dict__}, indent=1))
        pending.append((name, [sys.executable, __file__, "--job", str(out / f"{name}.job.json")]))
    running: list[tuple[str, subprocess.Popen]] = []
    started = time.perf_counter()
    from tqdm import tqdm

    with tqdm(total=len(pending), desc="runs", unit="run") as bar:
        while pending or running:
            while pending and len(running) < args.parallel:
                name, command = pending.pop(0)
                log = (out / f"{name}.log").open("w")
                running.append((name, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)))
            for name, proc in list(running):
                if proc.poll() is not None:
                    running.remove((name, proc))
                    bar.update()
                    if proc.returncode != 0:
                        bar.write(f"{name} failed ({proc.returncode}): see {out / (name + '.log')}")
            if time.perf_counter() - started > args.deadline_s:
                for name, proc in running:
                    proc.kill()
                    bar.write(f"{name} stopped at the deadline (its evaluations so far are kept)")
                break
            time.sleep(1)
    print(summary(out))
    return 0


def summary(out: Path) -> str:
    """Markdown table: per run and task, held-out success at the start, the best and the last evaluation."""
    lines = []
    for path in sorted(out.glob("h*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(records) < 2:
            continue
        fixed = records[0]["fixed_answer"]
        evaluations = [r for r in records if "success" in r]
        if not lines:
            tasks = list(fixed)
            lines = [
                "| run | last step | " + " | ".join(f"{t}: start / best / last" for t in tasks) + " | tool calls |",
                "| --- | ---: | " + " | ".join("---" for _ in tasks) + " | ---: |",
                "| best fixed answer | | " + " | ".join(f"{100 * fixed[t]:.0f}%" for t in tasks) + " | |",
            ]
        first, last = evaluations[0], evaluations[-1]
        cells = []
        for task in fixed:
            best = max(e["success"][task] for e in evaluations)
            cells.append(f"{100 * first['success'][task]:.0f} / {100 * best:.0f} / {100 * last['success'][task]:.0f}%")
        lines.append(f"| {path.stem} | {last['step']} | " + " | ".join(cells) + f" | {last['tool_call_share']:.2f} |")
    return "\n".join(lines) if lines else f"no runs with an evaluation under {out}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", type=Path, help="demonstrations of one action each (browser-control demos)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "sweep", help="work and output directory")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks of the demonstrations to use (all)")
    parser.add_argument("--models", default="256:6:1,3,5", help="HIDDEN:LAYERS:ATTENTION_LAYERS, ';'-separated")
    parser.add_argument("--grid", default='[{"lr": 3e-4, "batch": 256}]', help="JSON list of GRPO settings")
    parser.add_argument("--sft-steps", type=int, default=100, help="steps of the goal-blind supervised start")
    parser.add_argument(
        "--seeds", default="0", help="replicates of every recipe, e.g. 0,1,2: the model, its start and GRPO seeded"
    )
    parser.add_argument("--steps", type=int, default=120, help="GRPO steps per run")
    parser.add_argument("--eval-every", type=int, default=20, help="held-out evaluation every N GRPO steps")
    parser.add_argument("--held-out-share", type=float, default=0.4, help="share of each task's prompts held out")
    parser.add_argument("--parallel", type=int, default=4, help="runs at once (one process each)")
    parser.add_argument("--deadline-s", type=float, default=float("inf"), help="stop what still runs after this")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto", help="cpu hides the GPUs")
    parser.add_argument("--summary", type=Path, metavar="OUT", help="print the table of the sweep in OUT and exit")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # one run, started by the sweep
    args = parser.parse_args()
    if args.job:
        run_one(json.loads(args.job.read_text()))
        return 0
    if args.summary:
        print(summary(args.summary))
        return 0
    if args.demos is None or not args.demos.is_file():
        parser.error("--demos FILE.jsonl is required (record it with `browser-control demos --max-episode-steps 1`)")
    if not 0 < args.held_out_share < 1:
        parser.error("--held-out-share must lie between 0 and 1")
    try:
        args.models = [ModelSpec.parse(m) for m in args.models.split(";")]
        args.grid = parse_grid(args.grid)
        args.seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        parser.error(str(exc))
    return sweep(args)


if __name__ == "__main__":
    raise SystemExit(main())
