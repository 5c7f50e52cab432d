"""Concurrent environment calls inside TRL's GRPOTrainer (rollout/concurrency.py), against the real service.

These tests pin the two GRPOTrainer internals the hooks rely on: a TRL upgrade that stops calling them
must fail here (and at run time), not silently feed placeholders to the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from browser_control.client import EnvClient, EnvServiceUnavailable
from browser_control.rollout.concurrency import PLACEHOLDER_PREFIX, ConcurrentRollouts, ConcurrentRolloutsMixin
from browser_control.rollout.environment import BrowserEnvironment
from browser_control.rollout.prompts import task_prompt


def test_deferred_calls_resolve_to_the_same_results_in_order(env_url: str) -> None:
    rollouts = ConcurrentRollouts()
    envs = [BrowserEnvironment(base_url=env_url, max_episode_steps=4) for _ in range(6)]
    for env in envs:
        env._rollouts = rollouts
    rows = [{"task_name": "enter-text", "seed": 300 + i % 3} for i in range(6)]
    rollouts.prefetch_resets(envs, rows)
    firsts = [env.reset(**row) for env, row in zip(envs, rows, strict=True)]
    assert rollouts.prefetched_resets == 6
    assert firsts[0] == firsts[3] and firsts[1] == firsts[4]  # same seed, same page
    words = [first.split('"')[1] for first in firsts]

    # two calls per environment in one turn: they must run in order on that environment's lane
    fills = [env.fill(bid="14", value=word) for env, word in zip(envs, words, strict=True)]
    clicks = [env.click(bid="15") for env in envs]
    assert all(t.startswith(PLACEHOLDER_PREFIX) for t in fills + clicks)
    assert rollouts.unresolved() == 12
    fill_results = [rollouts.resolve(t) for t in fills]
    click_results = [rollouts.resolve(t) for t in clicks]
    assert rollouts.unresolved() == 0
    assert all(f"'{w}'" in r for w, r in zip(words, fill_results, strict=True))  # typed text is in the tree
    assert all("task is solved" in r for r in click_results)
    assert [env.get_reward() for env in envs] == [1.0] * 6
    # a reset with other arguments than the prefetched one runs for real
    rollouts.prefetch_resets(envs[:1], [{"task_name": "click-test", "seed": 1}])
    assert "Focus into the textbox." in envs[0].reset(task_name="focus-text", seed=2)
    rollouts.shutdown()


def test_a_dead_service_is_raised_when_its_result_is_collected() -> None:
    rollouts = ConcurrentRollouts()
    env = BrowserEnvironment(client=EnvClient("http://127.0.0.1:9", retries=0))
    env._rollouts = rollouts
    env._session_id = "not-started"
    token = env.click(bid="1")
    with pytest.raises(EnvServiceUnavailable, match=r"127\.0\.0\.1:9"):
        rollouts.resolve(token)
    with pytest.raises(EnvServiceUnavailable):
        env.get_reward()  # never a silent 0.0
    rollouts.shutdown()


def _trainer(model: Path, env_url: str, tmp_path: Path, trainer_cls: type, steps: int = 3):
    from datasets import Dataset
    from trl import GRPOConfig

    rows = [
        {"prompt": task_prompt("click-checkboxes"), "task_name": "click-checkboxes", "seed": 11 + i} for i in range(2)
    ]
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=3000,
        max_tool_calling_iterations=steps,
        temperature=1.0,
        learning_rate=1e-4,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
    )

    class Env(BrowserEnvironment):
        base_url = env_url
        max_episode_steps = steps

    return trainer_cls(model=str(model), args=args, train_dataset=Dataset.from_list(rows), environment_factory=Env)


def test_grpo_step_with_concurrent_env_calls(clicking_model: Path, env_url: str, tmp_path: Path) -> None:
    from trl import GRPOTrainer

    seen_prompts: list[str] = []

    class Trainer(ConcurrentRolloutsMixin, GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            seen_prompts.extend(self.processing_class.batch_decode(prompt_ids))
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)

    trainer = _trainer(clicking_model, env_url, tmp_path, Trainer)
    rollouts = trainer.enable_concurrent_rollouts()
    trainer.train()
    envs = trainer._environment_pool[None][:4]
    assert rollouts.prefetched_resets == 4
    assert rollouts.deferred_calls >= 8, "the imprinted model should call a tool on most turns"
    assert rollouts.unresolved() == 0
    assert all(env.episode.task_name == "click-checkboxes" for env in envs)
    assert max(env.episode.steps for env in envs) >= 2  # multi-turn episodes really ran
    assert seen_prompts and not any(PLACEHOLDER_PREFIX in p for p in seen_prompts)
    assert any("Step 1 of 3" in p for p in seen_prompts)  # a real observation came back to the model
    rollouts.shutdown()


def test_a_trl_that_bypasses_the_hook_fails_loudly(clicking_model: Path, env_url: str, tmp_path: Path) -> None:
    from trl import GRPOTrainer

    class Bypassing(ConcurrentRolloutsMixin, GRPOTrainer):
        def _get_tool_suffix_ids(self, tool_messages):  # as if TRL renamed the method the mixin overrides
            return GRPOTrainer._get_tool_suffix_ids(self, tool_messages)

    trainer = _trainer(clicking_model, env_url, tmp_path, Bypassing, steps=2)
    trainer.enable_concurrent_rollouts()
    with pytest.raises(RuntimeError, match="never handed back"):
        trainer.train()
