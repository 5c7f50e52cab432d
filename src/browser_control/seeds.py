"""Seed ranges: training and evaluation never see the same MiniWoB task instance.

A MiniWoB page is a pure function of (task, seed), so disjoint seed ranges are disjoint instances.
"""

from __future__ import annotations

TRAIN_SEED_RANGE = range(0, 1_000_000_000)
EVAL_SEED_RANGE = range(1_000_000_000, 2_000_000_000)


def train_seed(index: int, offset: int = 0) -> int:
    seed = TRAIN_SEED_RANGE.start + offset + index
    if seed not in TRAIN_SEED_RANGE:
        raise ValueError(f"training seed {seed} falls outside {TRAIN_SEED_RANGE}")
    return seed


def eval_seed(index: int, offset: int = 0) -> int:
    seed = EVAL_SEED_RANGE.start + offset + index
    if seed not in EVAL_SEED_RANGE:
        raise ValueError(f"evaluation seed {seed} falls outside {EVAL_SEED_RANGE}")
    return seed
