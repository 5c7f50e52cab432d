"""The task curriculum (training/curriculum.py): weights follow the learning signal, draws follow the weights,
a resume replays the same task instances, and a real GRPO run logs the weights to TensorBoard."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from browser_control.seeds import TRAIN_SEED_RANGE
from browser_control.training.config import ConfigError, TrainConfig, validate_config
from browser_control.training.curriculum import Curriculum, CurriculumSampler
from tests.conftest import tiny_training_config


def _curriculum(**overrides: object) -> Curriculum:
    kwargs: dict[str, object] = {
        "tasks": [("easy", 1.0), ("hard", 1.0)],
        "groups": 64,
        "ema": 0.3,
        "min_share": 0.05,
        "seed": 0,
    }
    kwargs.update(overrides)
    return Curriculum(**kwargs)  # type: ignore[arg-type]


def _batch(curriculum: Curriculum, seed: int, easy: list[float], hard: list[float]) -> dict[str, float]:
    return curriculum.observe({("easy", seed): easy, ("hard", seed + 1): hard})


def test_a_saturated_tasks_weight_falls_to_the_floor_and_the_teaching_task_takes_the_batch() -> None:
    curriculum = _curriculum()
    assert curriculum.weights() == {"easy": 0.5, "hard": 0.5}  # the configured mixture until something is seen
    history = []
    for step in range(12):
        # easy: every rollout solves it (no advantage); hard: half of the rollouts do
        metrics = _batch(curriculum, 2 * step, easy=[1.0] * 4, hard=[0.0, 1.0, 0.0, 1.0])
        history.append(metrics["curriculum/weight/easy"])
    assert all(b < a for a, b in itertools.pairwise(history)), history
    assert history[-1] < 0.1 and history[-1] >= 0.05  # near the floor, never under it
    assert metrics["curriculum/weight/hard"] == pytest.approx(1 - history[-1])
    assert metrics["curriculum/signal/easy"] < 0.02 and metrics["curriculum/signal/hard"] == 1.0
    # the draws follow: the saturated task now gets few groups, but some (the floor)
    counts = Counter(curriculum.rows()[curriculum.next_index()]["task_name"] for _ in range(400))
    assert 5 <= counts["easy"] <= 60, counts

    # once it teaches again (the policy drifted), it comes back
    for step in range(12, 20):
        _batch(curriculum, 2 * step, easy=[1.0, 0.0, 1.0, 1.0], hard=[0.0, 1.0, 0.0, 1.0])
    assert curriculum.weights()["easy"] > 0.4


def test_a_task_nobody_solves_also_stops_eating_the_batch_and_configured_weights_still_count() -> None:
    curriculum = _curriculum(tasks=[("easy", 3.0), ("hard", 1.0)], min_share=0.0)
    assert curriculum.weights() == {"easy": 0.75, "hard": 0.25}
    for step in range(10):
        _batch(curriculum, 2 * step, easy=[0.0, 1.0], hard=[0.0, 0.0])
    assert curriculum.weights()["hard"] < 0.05
    # nothing teaches anywhere: back to the configured mixture rather than a division by zero
    flat = _curriculum(ema=1.0, min_share=0.0, tasks=[("easy", 3.0), ("hard", 1.0)])
    _batch(flat, 0, easy=[1.0, 1.0], hard=[0.0, 0.0])
    assert flat.weights() == {"easy": 0.75, "hard": 0.25}


def test_groups_with_one_scored_rollout_and_unknown_tasks_are_no_data() -> None:
    curriculum = _curriculum(ema=1.0)
    curriculum.observe({("easy", 0): [1.0], ("other", 1): [0.0, 1.0]})
    assert curriculum.signal == {"easy": 1.0, "hard": 1.0} and curriculum.observations == {"easy": 0, "hard": 0}


def test_rows_hold_distinct_training_seeds_and_the_sampler_keeps_trls_group_layout() -> None:
    curriculum = _curriculum(groups=6)
    rows = curriculum.rows()
    assert len(rows) == 12 and len({r["seed"] for r in rows}) == 12
    assert all(r["seed"] in TRAIN_SEED_RANGE for r in rows)
    assert [r["task_name"] for r in rows] == ["easy"] * 6 + ["hard"] * 6
    sampler = CurriculumSampler(curriculum, groups_per_batch=2, mini_repeat_count=4, repeat_count=2)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 6 * 4 * 2
    for start in range(0, len(indices), 16):  # one generation batch: 2 groups x 4 rollouts, repeated twice
        block = indices[start : start + 16]
        assert block[:8] == block[8:] and len(set(block[:4])) == len(set(block[4:8])) == 1
    played = [rows[indices[start + offset]] for start in range(0, len(indices), 16) for offset in (0, 4)]
    assert len({(r["task_name"], r["seed"]) for r in played}) == 6  # no instance played twice


def test_a_resumed_curriculum_replays_the_same_instances_then_continues_identically(tmp_path: Path) -> None:
    first = _curriculum(seed=7)
    drawn = []
    for step in range(5):
        drawn += [first.next_index() for _ in range(3)]
        _batch(first, 2 * step, easy=[1.0] * 4, hard=[0.0, 1.0, 1.0, 1.0])
    first.save(tmp_path)
    later = [first.next_index() for _ in range(20)]

    resumed = _curriculum(seed=7)
    assert resumed.restore(tmp_path)
    assert [resumed.next_index() for _ in range(len(drawn))] == drawn  # what the Trainer skips
    assert [resumed.next_index() for _ in range(20)] == later
    assert resumed.weights() == pytest.approx(first.weights())

    assert not _curriculum().restore(tmp_path / "missing")  # no state: a warning, the configured mixture
    other = Curriculum([("a", 1.0), ("b", 1.0)], groups=64, ema=0.3, min_share=0.0, seed=0)
    with pytest.raises(ValueError, match="saved curriculum is for tasks"):
        other.restore(tmp_path)
    (tmp_path / "curriculum.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match="cannot resume the curriculum"):
        _curriculum().restore(tmp_path)


def test_curriculum_keys_are_validated() -> None:
    config = TrainConfig(tasks=["click-test", "focus-text"], curriculum=True)
    assert (config.curriculum_ema, config.curriculum_min_share) == (0.3, 0.05)
    with pytest.raises(ConfigError, match="curriculum: true needs at least two tasks"):
        validate_config({"tasks": ["click-test"], "curriculum": True})
    with pytest.raises(ConfigError, match=r"curriculum_min_share = 0.4 for 3 tasks.*at most 0.333"):
        validate_config({"tasks": ["a", "b", "c"], "curriculum": True, "curriculum_min_share": 0.4})
    with pytest.raises(ConfigError, match="curriculum_ema"):
        validate_config({"tasks": ["a", "b"], "curriculum": True, "curriculum_ema": 0})
    # off: the same keys are harmless, and one task is fine
    assert not TrainConfig(tasks=["click-test"], curriculum_min_share=0.9).curriculum


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_grpo_run_with_a_curriculum_logs_the_weights_and_saves_them(
    clicking_model: Path, env_url: str, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from browser_control.training.trainer import train

    # The imprinted model clicks bid 13: click-test is (nearly always) solved, click-checkboxes never, so
    # groups with equal rewards pull the signals down from 1 and the weights stay a valid mixture.
    config = TrainConfig.model_validate(
        tiny_training_config(
            model_name=str(clicking_model),
            tasks=["click-test", "click-checkboxes"],
            max_steps=2,
            save_steps=2,
            curriculum=True,
            curriculum_ema=0.5,
            curriculum_min_share=0.1,
            browsergym_url=env_url,
            checkpoint_dir=str(tmp_path / "ck"),
            logging_dir=str(tmp_path / "tb"),
            record_every_steps=None,
        )
    )
    final = train(config)

    events = EventAccumulator(str(tmp_path / "tb" / final.name), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    weights = [scalars["train/curriculum/weight/click-test"], scalars["train/curriculum/weight/click-checkboxes"]]
    assert all(len(w) == 2 for w in weights), sorted(scalars)
    for a, b in zip(*weights, strict=True):
        assert a + b == pytest.approx(1.0) and min(a, b) >= 0.1 - 1e-9
    signals = scalars["train/curriculum/signal/click-test"] + scalars["train/curriculum/signal/click-checkboxes"]
    assert min(signals) < 1.0  # a saturated task was seen and its signal fell
    assert (
        max(scalars["train/success/click-test"]) > 0 and max(scalars.get("train/success/click-checkboxes", [0.0])) == 0
    )
    # the intermediate checkpoint carries the state a resume continues from
    state = json.loads((tmp_path / "ck" / "runs" / final.name / "checkpoint-2" / "curriculum.json").read_text())
    assert state["tasks"] == ["click-test", "click-checkboxes"] and len(state["history"]) >= 4
    episodes = [
        json.loads(line) for line in (tmp_path / "ck" / "runs" / final.name / "episodes.jsonl").read_text().splitlines()
    ]
    played = [(e["task_name"], e["seed"]) for r in episodes for e in r["episodes"]]
    assert len(set(played)) == len(played) // 2  # 2 rollouts per instance, no instance twice
