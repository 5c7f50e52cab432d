"""Rollout throughput of a GRPO step: TRL's sequential environment calls vs concurrent ones, in one run.

The debug config's shape (16 rollouts of up to 5 turns) on CPU: a tiny LFM2 imprinted to call
click(bid='13') every turn (so every episode really runs 5 env actions) against the real environment
service and real Chromium, on click-checkboxes (the click never solves it, so no episode ends early).

    python benchmarks/rollout_throughput.py --rollouts 16 --turns 5 --steps 3

Reports seconds per GRPO step, episodes/s and environment actions/s for both modes. Timing excludes
the first step of each mode (warm-up).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def imprinted_model(path: Path) -> Path:
    from browser_control.models.tiny import build_tiny_lfm2, imprint_reply
    from browser_control.rollout.environment import BrowserEnvironment, bound_tools
    from browser_control.rollout.prompts import task_prompt

    build_tiny_lfm2(path, hidden_size=32, intermediate_size=64)
    # Real first observations and tool results of the benchmark task, so the imprint holds on them.
    url = os.environ["ROLLOUT_BENCH_URL"]
    client_env = BrowserEnvironment(base_url=url, max_episode_steps=5)
    call = {"type": "function", "function": {"name": "click", "arguments": {"bid": "13"}}}
    prompts = []
    for seed in range(3):
        messages = task_prompt("click-checkboxes")
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + client_env.reset("click-checkboxes", seed)}
        prompts.append(list(messages))
        for _ in range(4):
            messages += [
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "click", "content": client_env.click(bid="13")},
            ]
            prompts.append(list(messages))
    client_env._close()
    return imprint_reply(
        path, "<|tool_call_start|>[click(bid='13')]<|tool_call_end|>", prompts, tools=bound_tools(), steps=300
    )


def run_mode(
    concurrent: bool, model: Path, url: str, rollouts: int, turns: int, steps: int, out: Path
) -> dict[str, float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from browser_control.rollout.concurrency import ConcurrentRolloutsMixin
    from browser_control.rollout.environment import BrowserEnvironment
    from browser_control.rollout.prompts import task_prompt

    env_wait_s = [0.0]  # time the trainer's thread spends blocked on the environment service

    def timed(fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)  # on a lane: overlapped, not waited for here
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                env_wait_s[0] += time.perf_counter() - started

        return wrapper

    class Env(BrowserEnvironment):
        base_url = url
        max_episode_steps = turns
        _act_now = timed(BrowserEnvironment._act_now)
        _reset_now = timed(BrowserEnvironment._reset_now)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.durations: list[float] = []

        def on_step_begin(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.started = time.perf_counter()

        def on_step_end(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.durations.append(time.perf_counter() - self.started)

    rollout_s: list[float] = []

    def timed_rollouts(self, inputs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return super(trainer_cls, self)._generate_and_score_completions(inputs)
        finally:
            rollout_s.append(time.perf_counter() - started)

    base = (ConcurrentRolloutsMixin, GRPOTrainer) if concurrent else (GRPOTrainer,)
    trainer_cls = type("Trainer", base, {"_generate_and_score_completions": timed_rollouts})
    groups = max(1, rollouts // 4)
    rows = [
        {"prompt": task_prompt("click-checkboxes"), "task_name": "click-checkboxes", "seed": 100 + i}
        for i in range(groups * steps)
    ]
    args = GRPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=rollouts,
        num_generations=4,
        max_completion_length=3000,
        max_tool_calling_iterations=turns,
        temperature=0.7,
        learning_rate=1e-5,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
    )
    timer = Timer()
    trainer = trainer_cls(
        model=str(model), args=args, train_dataset=Dataset.from_list(rows), environment_factory=Env, callbacks=[timer]
    )
    if concurrent:
        concurrent_rollouts = trainer.enable_concurrent_rollouts()
        concurrent_rollouts.resolve = timed(concurrent_rollouts.resolve)
        concurrent_rollouts.take_reset = timed(concurrent_rollouts.take_reset)
    waits: list[float] = []

    class EnvWaitPerStep(TrainerCallback):
        def on_step_end(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            waits.append(env_wait_s[0])
            env_wait_s[0] = 0.0

    trainer.add_callback(EnvWaitPerStep())
    trainer.train()
    envs = trainer._environment_pool[None]
    actions = sum(env.episode.steps for env in envs[:rollouts])
    for env in envs:
        env._close()
    timed = timer.durations[1:] or timer.durations
    step_s = statistics.mean(timed)
    gen_s = statistics.mean(rollout_s[1:] or rollout_s)
    return {
        "step_s": step_s,
        "rollout_s": gen_s,
        "episodes_per_s": rollouts / gen_s,
        "actions_per_step": actions,
        "env_wait_s": statistics.mean(waits[1:] or waits),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=16, help="rollouts per GRPO step (groups of 4)")
    parser.add_argument("--turns", type=int, default=5, help="max_episode_steps")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps per mode (the first is warm-up)")
    parser.add_argument("--workers", type=int, default=4, help="serve-env --workers")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--chromium-executable", default=os.environ.get("CHROMIUM_EXECUTABLE"))
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    import torch

    # One thread, as in the tests: torch's threads and Chromium otherwise fight over the two cores.
    torch.set_num_threads(args.torch_threads)
    from browser_control.env_service.process import ServiceProcess

    service = ServiceProcess(
        "--max-sessions",
        str(args.rollouts + 4),
        "--workers",
        str(args.workers),
        "--log-level",
        "warning",
        chromium=args.chromium_executable,
    )
    os.environ["ROLLOUT_BENCH_URL"] = url = service.url
    try:
        service.wait_healthy(timeout_s=120)
        with tempfile.TemporaryDirectory() as tmp:
            model = imprinted_model(Path(tmp) / "model")
            results = {}
            for concurrent in (False, True):
                results[concurrent] = run_mode(
                    concurrent, model, url, args.rollouts, args.turns, args.steps, Path(tmp) / f"out-{concurrent}"
                )
    finally:
        service.stop()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: python {' '.join(sys.argv)}\n")
    print(
        "| env calls | s per GRPO step | s of rollouts per step | s waiting on the env per step |"
        " episodes/s (rollouts) | env actions in last step |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for concurrent, r in results.items():
        label = "concurrent (ours)" if concurrent else "sequential (TRL 1.16)"
        print(
            f"| {label} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {r['env_wait_s']:.2f} | "
            f"{r['episodes_per_s']:.2f} | {r['actions_per_step']:.0f} |"
        )
    seq, con = results[False], results[True]
    print(
        f"\nspeed-up: env waiting {seq['env_wait_s'] / con['env_wait_s']:.2f}x, rollout phase "
        f"{seq['rollout_s'] / con['rollout_s']:.2f}x, whole GRPO step {seq['step_s'] / con['step_s']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
