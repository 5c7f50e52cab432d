"""The pipeline learns to read the goal: GRPO takes a goal-blind model past the best fixed answer on focus-text-2.

focus-text-2 shows three empty text boxes and asks for the 1st, 2nd or 3rd: the pages are the same, only
the goal tells the instances apart, so a policy that does not read the goal solves at most the share of
its one box (the best fixed answer, ~1/3). The start is goal-blind by construction: a tiny LFM2 built
from scratch is fine-tuned (`browser-control sft`) on real demonstrations whose answers were shuffled
between instances, so it learns the tool-call format and the three boxes, and nothing that ties a box
to a goal. GRPO (TRL's GRPOTrainer, benchmarks/learning_sweep.py's run on recorded prompts, reward 1
when the call names the scripted box) must learn that tie. Demonstrations and both evaluations go
through the real environment service: start and trained model play held-out EVALUATION seeds greedily.

The recipe is the learning benchmark's (docs/learning.md, "What keeps the format"): beta 0.1 against the
start and the policy loss on the highest-entropy 20% of completion tokens, 64 rollouts per step. The
run is seeded and single-threaded; which seeds learn within the step budget is in docs/learning.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.learning]

REPO = Path(__file__).resolve().parents[1]

TASK = "focus-text-2"
# Model initialisation, answer shuffle and GRPO sampling. Which seeds learn within STEPS depends on the CPU's
# floating-point order as well (seed 2 learned on one 2-core machine and stayed at its start on two others):
# the seeds are tried in order until one takes the model 25 points past its start and the best fixed answer,
# and the test fails only if none does. A model that does not read the goal cannot pass by luck: its greedy
# answer on these identical pages is one box, which solves at most the bar. Seed 1 first: it reached 100% on
# the machine that measured it (docs/learning.md, "The test"). BROWSER_CONTROL_LEARNING_SEEDS="3,2" picks others.
SEEDS = tuple(int(s) for s in os.environ.get("BROWSER_CONTROL_LEARNING_SEEDS", "1,3,2").split(","))
STEPS = 120
EPISODES = 24  # held-out evaluation episodes, seeds 1e9 .. 1e9+23
MARGIN = 0.25  # over the start and over the best fixed answer; the measured gain is in docs/learning.md


def _cli(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "browser_control", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _checkpoint(stdout: str) -> Path:
    match = re.search(r"^checkpoint: (.+)$", stdout, re.M)
    assert match, stdout[-2000:]
    return Path(match.group(1))


def _success(model: Path, env_url: str) -> float:
    import torch

    from browser_control.evaluation.model_policy import load_model_policy
    from browser_control.evaluation.runner import evaluate_policy

    torch.set_num_threads(1)
    policy = load_model_policy(str(model), max_new_tokens=32)
    try:
        report = evaluate_policy(
            policy, [TASK], EPISODES, env_url=env_url, max_episode_steps=1, concurrency=8, progress=False
        )
    finally:
        policy.close()
    assert all(1_000_000_000 <= e.seed < 2_000_000_000 for e in report.episodes)  # held-out seeds
    return report.overall.success_rate


def _train_from_a_goal_blind_start(seed: int, demos: Path, records: list, env_url: str, work: Path) -> tuple:
    """Goal-blind SFT, then GRPO on the recorded prompts; (start's success, trained model's success, log)."""
    from browser_control.models.tiny import build_learning_lfm2
    from browser_control.sft.demos import shuffle_answers

    work.mkdir()
    goal_blind = work / "goal-blind.jsonl"
    goal_blind.write_text("".join(json.dumps(r) + "\n" for r in shuffle_answers(records, seed)))
    base = build_learning_lfm2(work / "tiny", 64, 2, attention_layers=[0, 1], seed=seed)
    overrides = {
        "model_name": base,
        "demos": f"[{goal_blind}]",
        "max_steps": 100,
        "max_episode_steps": 1,
        "max_demos_per_task": 1000,
        "checkpoint_dir": work / "ck",
        "logging_dir": work / "tb",
        "seed": seed,
    }
    sft_args = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    start = _checkpoint(_cli("sft", "--config", str(REPO / "configs" / "sft_learning.yaml"), *sft_args, cwd=work))

    trained = work / "grpo"
    job = {
        "model": str(start),
        "seed": seed,
        "demos": str(demos),
        "tasks": [TASK],
        "held_out_share": 0.2,
        "setting": {
            "lr": 1e-3,
            "batch": 64,
            "gens": 8,
            "beta": 0.1,
            # gradient checkpointing only costs time at this size (same numbers without it)
            "extra": {"top_entropy_quantile": 0.2, "gradient_checkpointing": False},
        },
        "steps": STEPS,
        "eval_every": STEPS,
        "out": str(work / "grpo.jsonl"),
        "save": str(trained),
    }
    (work / "job.json").write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "learning_sweep.py"), "--job", str(work / "job.json")],
        capture_output=True,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES=""),
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _success(start, env_url), _success(trained, env_url), (work / "grpo.jsonl").read_text()


# ~4 minutes a seed on an idle 2-core machine, far more on a saturated one: its own limit, above the suite's.
@pytest.mark.timeout(5400)
def test_grpo_learns_to_read_the_goal_from_a_goal_blind_start(env_url: str, tmp_path: Path) -> None:
    from browser_control.evaluation.fixed import best_fixed_answers
    from browser_control.sft.demos import read_demos

    demos = tmp_path / "demos.jsonl"
    _cli(
        "demos", "--tasks", TASK, "--episodes", "30", "--max-steps", "1", "--output", str(demos),
        "--browsergym-url", env_url, "--quiet", cwd=tmp_path,
    )  # fmt: skip
    records = read_demos(demos)
    fixed = best_fixed_answers(records, [TASK], EPISODES, env_url=env_url, max_episode_steps=1)[TASK]
    bar = fixed.success_rate
    tried = []
    for seed in SEEDS:
        before, after, log = _train_from_a_goal_blind_start(seed, demos, records, env_url, tmp_path / f"seed-{seed}")
        tried.append(f"seed {seed}: start {before:.0%} -> after GRPO {after:.0%}; recorded-prompt log:\n{log}")
        print(f"seed {seed}: held-out success start {before:.0%}, after GRPO {after:.0%}, best fixed answer "
              f"{fixed.answer} {bar:.0%}")  # fmt: skip
        if after >= before + MARGIN and after >= bar + MARGIN:
            return
    pytest.fail(
        f"no seed of {SEEDS} learned to read the goal: {MARGIN:.0%} over its start and over the best fixed "
        f"answer {fixed.answer} {bar:.0%} were asked\n" + "\n".join(tried)
    )
