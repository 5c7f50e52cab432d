"""Training rows: which task instance each GRPO group plays.

Each row is one prompt; GRPO repeats it ``num_generations`` times, and ``BrowserEnvironment.reset``
receives the row's ``task_name`` and ``seed``, so every rollout of a group replays the same MiniWoB page
and the group compares like with like. Rows never share a seed, and the seeds come from the training
range only (browser_control.seeds), so evaluation instances are never trained on.
"""

from __future__ import annotations

import random
from typing import Any

from browser_control.rollout.prompts import task_prompt
from browser_control.seeds import train_seed
from browser_control.training.config import TaskSpec, TrainConfig


def sample_tasks(tasks: list[TaskSpec], count: int, seed: int) -> list[str]:
    """``count`` task names drawn from the weighted mixture; the same seed gives the same sequence."""
    rng = random.Random(seed)
    names = [t.name for t in tasks]
    weights = [t.weight for t in tasks]
    if len(names) == 1:
        return names * count
    return rng.choices(names, weights=weights, k=count)


def prompts_per_step(config: TrainConfig, world_size: int = 1) -> int:
    rollouts = config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size
    return rollouts // config.num_generations


def build_rows(config: TrainConfig, world_size: int = 1) -> list[dict[str, Any]]:
    """One row per GRPO group of the whole run, in training order.

    The list is a prefix-stable function of the config: raising max_steps and resuming replays the same
    first rows, which the Trainer skips, and continues with new instances.
    """
    count = config.max_steps * prompts_per_step(config, world_size)
    names = sample_tasks(config.tasks, count, config.seed)
    return [
        {"prompt": task_prompt(name), "task_name": name, "seed": train_seed(index)} for index, name in enumerate(names)
    ]
