"""A task curriculum for multi-task GRPO: sample each task by how much it can still teach.

A GRPO group whose rollouts all got the same reward (all solved, or none) has zero advantage and teaches
nothing; a task whose groups are all like that only eats the batch. With ``curriculum: true`` the trainer
keeps, per task, an exponential moving average of the share of its groups whose rewards were not all equal
(the "signal"), and draws the task of each new group with probability

    p(task) = min_share + (1 - n_tasks * min_share) * weight(task) * signal(task) / sum(weight * signal)

where ``weight`` is the task's configured mixture weight and ``min_share`` (``curriculum_min_share``) is a
floor so that no task starves: a saturated task is still visited and comes back once it teaches again.
Every signal starts at 1 (each task assumed to teach), so the run starts from the configured mixture.

How TRL is fed: GRPOTrainer asks ``_get_train_sampler`` for the order of dataset rows and repeats each
row ``num_generations`` times. The dataset holds, per task, one row for every group the run could draw
(distinct training seeds), and :class:`CurriculumSampler` picks the task of each group lazily, when the
dataloader asks for it, from the weights of that moment. The dataloader reads a batch or two ahead, so an
observation changes the draws from the next generation batch but one.

Resume: every intermediate checkpoint gets ``curriculum.json`` (signals, the task of every group drawn, the
random state). A resumed run replays the recorded draws (the Trainer skips the batches it has trained on
by drawing them again) and continues from the saved signals, so it plays the same task instances.

Several processes (accelerate): every process draws with the same random state, and the rewards are
gathered across processes before the signals are updated, so all processes draw the same tasks, as TRL's
own sampler does.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from browser_control.rollout.prompts import task_prompt
from browser_control.seeds import train_seed

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from browser_control.training.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "curriculum.json"
WEIGHT_METRIC = "curriculum/weight/"  # + task: the probability that the next group plays the task
SIGNAL_METRIC = "curriculum/signal/"  # + task: moving share of its groups with unequal rewards


class Curriculum:
    """Per-task learning signal and the draw of each group's task; thread-safe, no torch."""

    def __init__(self, tasks: Sequence[tuple[str, float]], groups: int, ema: float, min_share: float, seed: int):
        if len(tasks) < 2:
            raise ValueError("a curriculum needs at least two tasks")
        if not 0 < ema <= 1:
            raise ValueError(f"ema must be in (0, 1], got {ema}")
        if min_share < 0 or len(tasks) * min_share > 1:
            raise ValueError(f"min_share must be >= 0 and at most 1/{len(tasks)} for {len(tasks)} tasks")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.names = [name for name, _ in tasks]
        self.base = {name: float(weight) for name, weight in tasks}
        self.groups = groups  # rows per task: a task could be drawn for every group of the run
        self.ema = ema
        self.min_share = min_share
        self.signal = dict.fromkeys(self.names, 1.0)
        self.observations = dict.fromkeys(self.names, 0)  # generation batches that scored the task
        self._rng = random.Random(seed)
        self._cursor = dict.fromkeys(self.names, 0)  # next row of each task's pool
        self._history: list[int] = []  # task index of every group drawn, in order
        self._replay: list[int] = []
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: TrainConfig, world_size: int = 1) -> Curriculum:
        from browser_control.training.data import prompts_per_step

        return cls(
            [(t.name, t.weight) for t in config.tasks],
            groups=config.max_steps * prompts_per_step(config, world_size),
            ema=config.curriculum_ema,
            min_share=config.curriculum_min_share,
            seed=config.seed,
        )

    # -- the dataset -------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """Task ``i``'s pool is rows ``i * groups ... (i + 1) * groups - 1``; no two rows share a seed."""
        n = len(self.names)
        return [
            {"prompt": task_prompt(name), "task_name": name, "seed": train_seed(k * n + i)}
            for i, name in enumerate(self.names)
            for k in range(self.groups)
        ]

    # -- weights -----------------------------------------------------------------------------------------
    def weights(self) -> dict[str, float]:
        with self._lock:
            return self._weights()

    def _weights(self) -> dict[str, float]:
        scores = {name: self.base[name] * self.signal[name] for name in self.names}
        total = sum(scores.values())
        if total <= 0:  # nothing teaches (or nothing observed yet): fall back on the configured mixture
            scores, total = dict(self.base), sum(self.base.values())
        free = 1.0 - len(self.names) * self.min_share
        return {name: self.min_share + free * scores[name] / total for name in self.names}

    def observe(self, groups: Mapping[tuple[str, int], Sequence[float]]) -> dict[str, float]:
        """Update the signals from one generation batch's groups ((task, seed) -> rewards of the scored
        rollouts); returns the metrics to log (weights and signals of every task)."""
        merged = _gather_groups(groups)
        informative: dict[str, list[bool]] = defaultdict(list)
        for (task, _seed), rewards in merged.items():
            if task in self.signal and len(rewards) >= 2:  # one scored rollout cannot differ from itself
                informative[task].append(len(set(rewards)) > 1)
        with self._lock:
            for task, flags in informative.items():
                share = sum(flags) / len(flags)
                self.signal[task] = (1 - self.ema) * self.signal[task] + self.ema * share
                self.observations[task] += 1
            weights = self._weights()
            signal = dict(self.signal)
        return {
            **{WEIGHT_METRIC + t: w for t, w in weights.items()},
            **{SIGNAL_METRIC + t: s for t, s in signal.items()},
        }

    # -- draws -------------------------------------------------------------------------------------------
    def next_index(self) -> int:
        """The dataset row of the next group: a replayed draw after a resume, else one by the weights."""
        with self._lock:
            if self._replay:
                task_index = self._replay.pop(0)
            else:
                weights = self._weights()
                task_index = self._rng.choices(range(len(self.names)), [weights[n] for n in self.names])[0]
            name = self.names[task_index]
            # More draws of one task than groups in the run only happen past max_steps (a new epoch): reuse.
            k = self._cursor[name] % self.groups
            self._cursor[name] += 1
            self._history.append(task_index)
            return task_index * self.groups + k

    # -- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": 1,
                "tasks": self.names,
                "groups": self.groups,
                "signal": dict(self.signal),
                "observations": dict(self.observations),
                "history": list(self._history),
                "rng": _jsonable(self._rng.getstate()),
            }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 1 or list(state.get("tasks", [])) != self.names:
            raise ValueError(f"the saved curriculum is for tasks {state.get('tasks')}, this run trains {self.names}")
        history = [int(i) for i in state["history"]]
        if any(not 0 <= i < len(self.names) for i in history):
            raise ValueError("the saved curriculum's history names tasks this run does not have")
        with self._lock:
            self.signal = {name: float(state["signal"][name]) for name in self.names}
            self.observations = {name: int(state["observations"].get(name, 0)) for name in self.names}
            self._rng.setstate(_tupled(state["rng"]))
            # The cursors restart at 0 and the history is replayed: the same rows come out in the same order.
            self._cursor = dict.fromkeys(self.names, 0)
            self._history = []
            self._replay = history

    def save(self, directory: Path) -> None:
        """Write ``curriculum.json`` into ``directory`` atomically (a temporary file, then a rename)."""
        tmp = directory / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state_dict()) + "\n")
        tmp.replace(directory / STATE_FILE)

    def restore(self, checkpoint: Path) -> bool:
        """Load the state saved with ``checkpoint``; False (and a warning) when it has none."""
        path = checkpoint / STATE_FILE
        if not path.is_file():
            log.warning("%s has no %s: the curriculum restarts from the configured mixture", checkpoint, STATE_FILE)
            return False
        try:
            self.load_state_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: cannot resume the curriculum: {exc}") from exc
        log.info("curriculum resumed from %s: weights %s", path, _fmt(self.weights()))
        return True

    # -- wiring into the trainer ---------------------------------------------------------------------------
    def install(self, trainer: Any, resume_checkpoint: Path | None = None) -> None:
        """Make ``trainer`` (a GRPOTrainer) draw its groups from this curriculum and save it with checkpoints."""
        if resume_checkpoint is not None:
            self.restore(Path(resume_checkpoint))

        def sampler(dataset: Any = None) -> CurriculumSampler:
            args = trainer.args
            return CurriculumSampler(
                self,
                groups_per_batch=args.generation_batch_size // trainer.num_generations,
                mini_repeat_count=trainer.num_generations,
                repeat_count=trainer.num_iterations * args.steps_per_generation,
            )

        # GRPOTrainer builds its dataloader through this hook (TRL's RepeatSampler otherwise).
        trainer._get_train_sampler = sampler
        trainer.add_callback(CurriculumCheckpoint(self))
        log.info("curriculum: initial weights %s", _fmt(self.weights()))


class CurriculumSampler:
    """TRL's RepeatSampler layout (each group's row ``mini_repeat_count`` times, each generation batch
    ``repeat_count`` times), with every group's task drawn from the curriculum when it is needed."""

    def __init__(self, curriculum: Curriculum, groups_per_batch: int, mini_repeat_count: int, repeat_count: int):
        self.curriculum = curriculum
        self.groups_per_batch = groups_per_batch
        self.mini_repeat_count = mini_repeat_count
        self.repeat_count = repeat_count

    def __len__(self) -> int:
        batches = self.curriculum.groups // self.groups_per_batch
        return batches * self.groups_per_batch * self.mini_repeat_count * self.repeat_count

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.curriculum.groups // self.groups_per_batch):
            batch = [self.curriculum.next_index() for _ in range(self.groups_per_batch)]
            for _ in range(self.repeat_count):
                for index in batch:
                    for _ in range(self.mini_repeat_count):
                        yield index


class CurriculumCheckpoint(TrainerCallback):
    """Saves the curriculum into every intermediate checkpoint, so a resume continues it."""

    def __init__(self, curriculum: Curriculum):
        self.curriculum = curriculum

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not args.should_save:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            self.curriculum.save(checkpoint)


def _gather_groups(groups: Mapping[tuple[str, int], Sequence[float]]) -> dict[tuple[str, int], list[float]]:
    """All processes' groups (a group's rollouts may be split over processes); this process's alone otherwise."""
    merged: dict[tuple[str, int], list[float]] = defaultdict(list)
    parts: list[Any] = [list(groups.items())]
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, list(groups.items()))
    except ImportError:
        pass
    for part in parts:
        for (task, seed), rewards in part:
            merged[(task, int(seed))].extend(float(r) for r in rewards)
    return merged


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _fmt(weights: Mapping[str, float]) -> str:
    return ", ".join(f"{t} {w:.0%}" for t, w in weights.items() if not math.isnan(w))
