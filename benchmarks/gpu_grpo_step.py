"""Seconds per GRPO step and peak GPU memory for the LFM2-350M shape: full vs LoRA, with and without
gradient checkpointing, transformers generate.

The GPU machine used for these numbers has no browser, so the environment is a RECORDED-EPISODE
STAND-IN: BrowserEnvironment with its two network methods replaced by replays of real observations that
`--record` captured from the real service (click-checkboxes, 5 actions per episode). Everything else is
the real stack: TRL's GRPOTrainer with environment_factory, our concurrent-rollout hooks, the real tool
schema and chat template. Weights are random (no hub here), in the LFM2-350M architecture; the
tokenizer is the small local one (its prompts are longer than LFM2's own tokenizer would make them:
token counts are printed with the results). The model is first imprinted to answer every turn with
click(bid='13'), so each episode really has 5 turns.

    # on a machine with the environment service and Chromium: record observations
    python benchmarks/gpu_grpo_step.py --record benchmarks/data/recorded_click_checkboxes.json
    # on the GPU machine: one configuration per process, so peak memory is per configuration
    python benchmarks/gpu_grpo_step.py --mode full --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from browser_control.models.tiny import LFM2_350M_SHAPE, TINY_SHAPE  # noqa: E402
from browser_control.protocol import service_url  # noqa: E402

RECORDING = REPO / "benchmarks" / "data" / "recorded_click_checkboxes.json"
TASK = "click-checkboxes"


def record(path: Path, url: str, episodes: int, turns: int) -> None:
    from browser_control.rollout.environment import BrowserEnvironment

    data = []
    env = BrowserEnvironment(base_url=url, max_episode_steps=turns)
    for seed in range(episodes):
        first = env.reset(TASK, seed)
        data.append({"seed": seed, "first": first, "replies": [env.click(bid="13") for _ in range(turns)]})
    env._close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"recorded {episodes} episodes of {turns} actions to {path}")


def replaying_environment(recording: list[dict], turns: int) -> type:
    from browser_control.client import ServiceDeathLatch
    from browser_control.rollout.environment import BrowserEnvironment

    by_seed = {item["seed"]: item for item in recording}

    class RecordedEpisodes(BrowserEnvironment):
        """Stand-in: replays recorded observations; tools, prompts and TRL wiring are the real ones."""

        max_episode_steps = turns

        def __init__(self) -> None:
            self._max_steps = turns
            self._session_id = None
            self._dead = ServiceDeathLatch()
            self._replies: list[str] = []

        def _reset_now(self, task_name: str, seed: int) -> str:
            item = by_seed[int(seed) % len(by_seed)]
            self._replies = list(item["replies"])
            self._session_id = "recorded"
            return item["first"]

        def _act_now(self, action: str) -> str:
            time.sleep(0.05)  # about one real step's latency on the service
            return self._replies.pop(0) if self._replies else "The episode is over."

        def get_reward(self) -> float:
            return 0.0

    return RecordedEpisodes


def build_model(path: Path, recording: list[dict], shape: dict, learning_rate: float) -> None:
    from browser_control.models.tiny import build_lfm2, imprint_reply
    from browser_control.rollout.environment import bound_tools
    from browser_control.rollout.prompts import task_prompt

    build_lfm2(path, shape)
    call = {"type": "function", "function": {"name": "click", "arguments": {"bid": "13"}}}
    prompts = []
    for item in recording[:3]:
        messages = task_prompt(TASK)
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + item["first"]}
        prompts.append(list(messages))
        for reply in item["replies"][:4]:
            messages += [
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "click", "content": reply},
            ]
            prompts.append(list(messages))
    imprint_reply(
        path,
        "<|tool_call_start|>[click(bid='13')]<|tool_call_end|>",
        prompts,
        tools=bound_tools(),
        steps=100,
        learning_rate=learning_rate,
        max_rounds=6,
    )


def run(
    mode: str,
    gradient_checkpointing: bool,
    rollouts: int,
    generations: int,
    turns: int,
    steps: int,
    max_completion_length: int,
    tiny: bool,
) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from browser_control.rollout.concurrency import ConcurrentRolloutsMixin
    from browser_control.rollout.environment import bound_tools
    from browser_control.rollout.prompts import task_prompt

    recording = json.loads(RECORDING.read_text())
    tmp = Path(tempfile.mkdtemp())
    build_started = time.perf_counter()
    build_model(tmp / "model", recording, TINY_SHAPE if tiny else LFM2_350M_SHAPE, 3e-3 if tiny else 1e-4)
    build_s = time.perf_counter() - build_started
    print(f"model built and imprinted in {build_s:.0f} s", flush=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.started, self.durations = 0.0, []

        def on_step_begin(self, *a, **k):  # type: ignore[no-untyped-def]
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):  # type: ignore[no-untyped-def]
            sync()
            self.durations.append(time.perf_counter() - self.started)
            print(f"step {len(self.durations)}: {self.durations[-1]:.2f} s", flush=True)

    class Trainer(ConcurrentRolloutsMixin, GRPOTrainer):
        pass

    rows = [{"prompt": task_prompt(TASK), "task_name": TASK, "seed": i} for i in range(64)]
    args = GRPOConfig(
        output_dir=str(tmp / "out"),
        max_steps=steps,
        per_device_train_batch_size=rollouts,
        num_generations=generations,
        max_completion_length=max_completion_length,
        max_tool_calling_iterations=turns,
        temperature=0.3,
        learning_rate=1e-6,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=gradient_checkpointing,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        model_init_kwargs={"attn_implementation": "sdpa", "dtype": "float32"},
    )
    peft_config = None
    if mode == "lora":
        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"],
        )
    timer = Timer()
    trainer = Trainer(
        model=str(tmp / "model"),
        args=args,
        train_dataset=Dataset.from_list(rows),
        environment_factory=replaying_environment(recording, turns),
        peft_config=peft_config,
        callbacks=[timer],
    )
    trainer.enable_concurrent_rollouts()
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
    params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "mode": mode,
        "gradient_checkpointing": gradient_checkpointing,
        "params_m": round(params / 1e6, 1),
        "s_per_step": round(statistics.mean(timer.durations[1:] or timer.durations), 2),
        "all_step_s": [round(d, 2) for d in timer.durations],
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "completion_tokens_mean": logs[-1]["completions/mean_length"] if logs else None,
        "tool_calls_per_rollout": logs[-1].get("tools/call_frequency") if logs else None,
        "prompt_tokens": len(
            trainer.processing_class.apply_chat_template(
                task_prompt(TASK), tools=bound_tools(), add_generation_prompt=True, tokenize=True, return_dict=False
            )
        ),
        "model_build_and_imprint_s": round(build_s, 1),
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, help="record observations from --url to this file and exit")
    parser.add_argument("--url", default=service_url(), help="environment service [BROWSERGYM_URL]")
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--rollouts", type=int, default=16, help="per_device_train_batch_size")
    parser.add_argument("--generations", type=int, default=8, help="num_generations")
    parser.add_argument("--turns", type=int, default=5, help="max_episode_steps")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (the first is warm-up)")
    parser.add_argument("--max-completion-length", type=int, default=2048)
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the 350M shape (smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.record:
        record(args.record, args.url, episodes=8, turns=args.turns)
        return 0
    result = run(
        args.mode,
        args.gradient_checkpointing,
        args.rollouts,
        args.generations,
        args.turns,
        args.steps,
        args.max_completion_length,
        args.tiny,
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
