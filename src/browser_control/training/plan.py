"""The plan of a training run: names, directories and the checkpoint a resume starts from.

Decided before any model loads and without torch, so ``train --dry-run`` is fast and a misconfiguration
fails at once; :meth:`RunPlan.describe` is what ``--dry-run`` prints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from browser_control.models.files import TRAINING_CONFIG_FILE
from browser_control.training import checkpoints as ckpt
from browser_control.training.config import TrainConfig
from browser_control.training.data import prompts_per_step

log = logging.getLogger(__name__)

# The per-rollout log beside the intermediate checkpoints (rank 0; other ranks add their rank).
EPISODE_LOG_FILE = "episodes.jsonl"


class TrainingSetupError(RuntimeError):
    """Training cannot start as configured; the message says why and what to change."""


@dataclass
class RunPlan:
    """Everything decided before a model is loaded; ``describe()`` is what ``--dry-run`` prints."""

    config: TrainConfig
    name: str
    final_dir: Path
    run_dir: Path
    tensorboard_dir: Path
    resume_checkpoint: Path | None
    world_size: int
    service: dict[str, Any] = field(default_factory=dict)

    @property
    def rollouts_per_step(self) -> int:
        c = self.config
        return c.per_device_train_batch_size * c.gradient_accumulation_steps * self.world_size

    @property
    def groups_per_step(self) -> int:
        return prompts_per_step(self.config, self.world_size)

    @property
    def environments_per_process(self) -> int:
        # TRL keeps one environment per rollout of a generation batch (steps_per_generation micro-batches).
        return self.config.per_device_train_batch_size * self.config.gradient_accumulation_steps

    def describe(self) -> str:
        c = self.config
        total = sum(t.weight for t in c.tasks)
        tasks = ", ".join(f"{t.name} ({t.weight / total:.0%})" for t in c.tasks)
        if c.curriculum:
            tasks += f"; curriculum from these (moving share {c.curriculum_ema:g}, floor {c.curriculum_min_share:.0%})"
        if c.use_peft:
            mode = (
                f"LoRA r={c.lora_r} alpha={c.lora_alpha} dropout={c.lora_dropout} on "
                f"{', '.join(c.lora_target_modules)}; merged copy: {'yes' if c.merge_lora else 'no'}"
            )
        else:
            mode = "full fine-tune"
        backend = (
            f"vLLM colocate (gpu_memory_utilization={c.vllm_gpu_memory_utilization}, "
            f"max_model_length={c.vllm_max_model_length or 'model default'}, "
            f"sleep_mode={'on' if c.vllm_enable_sleep_mode else 'off'})"
            if c.use_vllm
            else "transformers generate"
        )
        lines = [
            f"run              {self.name}",
            f"model            {c.model_name} ({mode})",
            f"tasks            {tasks}",
            f"optimizer steps  {c.max_steps} x {self.rollouts_per_step} rollouts = {self.groups_per_step} "
            f"task instances x {c.num_generations} generations (lr {c.learning_rate:g}, "
            f"{c.lr_scheduler_type}, beta {c.beta:g}, loss {c.loss_type})",
            f"episodes         up to {c.max_episode_steps} actions, {c.max_completion_length} completion tokens "
            f"(tool results included), temperature {c.temperature:g}",
            f"generation       {backend}",
            f"environment      {c.browsergym_url}"
            + (
                f" ({self.service.get('status')}, {self.service.get('sessions')}/"
                f"{self.service.get('max_sessions')} sessions in use; this run needs "
                f"{self.environments_per_process} per process)"
                if self.service
                else ""
            )
            + f", {'concurrent' if c.concurrent_env_calls else 'one-by-one'} calls",
            f"checkpoint       {self.final_dir} (written as {ckpt.TMP_PREFIX}{self.name}, renamed when complete)",
            f"intermediate     {self.run_dir}/checkpoint-N every {c.save_steps} steps "
            f"(keep {c.save_total_limit or 'all'})",
            f"resume from      {self.resume_checkpoint or 'nothing (new run)'}",
            f"tensorboard      {self.tensorboard_dir}",
            "recordings       "
            + (
                f"{c.record_episodes} rollouts at step 1 and every {c.record_every_steps} steps, step by step in "
                f"{self.run_dir}/traces (up to {c.record_max_mb:g} MB"
                + (", with screenshots" if c.record_screenshots else "")
                + "; browser-control view shows them)"
                if c.record_every_steps
                else "off (record_every_steps unset)"
            ),
            f"HF cache         HF_HOME={os.environ.get('HF_HOME', '(default ~/.cache/huggingface)')}"
            f"{' HF_HUB_OFFLINE=1' if os.environ.get('HF_HUB_OFFLINE') == '1' else ''}",
        ]
        return "\n".join(lines)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def plan_run(config: TrainConfig, now: float | None = None) -> RunPlan:
    """Names and directories of the run, and the checkpoint a resume starts from. Touches no model."""
    checkpoint_dir = Path(config.checkpoint_dir)
    prefix = f"{config.model_short_name}-{config.task_label}-"
    resume: Path | None = None
    name = config.run_name or ckpt.run_name(config.model_short_name, config.task_label, now)
    if config.resume_from_checkpoint is True:
        resume = ckpt.find_resume_checkpoint(checkpoint_dir, prefix, exact_name=config.run_name)
        name = resume.parent.name
    elif isinstance(config.resume_from_checkpoint, str):
        resume = ckpt.resolve_resume_path(Path(config.resume_from_checkpoint))
        if resume.parent.parent.resolve() == ckpt.runs_dir(checkpoint_dir).resolve() and not config.run_name:
            name = resume.parent.name  # continue that run's directories and TensorBoard curves
    if world_size() > 1 and not config.run_name and config.resume_from_checkpoint is not True:
        raise TrainingSetupError(
            "several processes need one run_name (each would date its own): set num_processes "
            "instead of launching yourself, or set run_name"
        )
    final_dir = checkpoint_dir / name
    run_dir = ckpt.runs_dir(checkpoint_dir) / name
    if final_dir.exists():
        raise TrainingSetupError(
            f"{final_dir} already exists: that run is finished. Choose another run_name, or unset it"
        )
    if resume is None and ckpt.intermediate_checkpoints(run_dir):
        raise TrainingSetupError(
            f"{run_dir} already holds checkpoints of a run named {name}: set resume_from_checkpoint: true to "
            "continue it, or choose another run_name"
        )
    return RunPlan(
        config=config,
        name=name,
        final_dir=final_dir,
        run_dir=run_dir,
        tensorboard_dir=Path(config.logging_dir) / name,
        resume_checkpoint=resume,
        world_size=int(os.environ.get("WORLD_SIZE") or config.num_processes),
    )


def write_run_config(plan: RunPlan) -> None:
    """Record the resolved config next to the intermediate checkpoints; on resume, say what changed."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    path = plan.run_dir / TRAINING_CONFIG_FILE
    current = plan.config.model_dump(mode="json")
    if path.is_file() and plan.resume_checkpoint is not None:
        try:
            previous = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            previous = {}
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if changed:
            log.warning("resuming %s with changed config keys: %s", plan.name, ", ".join(changed))
    path.write_text(plan.config.to_yaml())
