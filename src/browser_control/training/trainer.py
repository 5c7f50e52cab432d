"""GRPO on MiniWoB with TRL's GRPOTrainer and ``environment_factory``.

TRL runs the multi-turn episodes (one tool call per browser action, tool results masked from the loss)
and the optimisation; this module decides what it is given and what comes out:

* a plan (names, directories, resume point; training.plan) and a preflight against the environment service
  (training.preflight), both without torch, so ``--dry-run`` is fast and a misconfiguration fails before any
  model loads;
* the tokenizer, GRPOConfig and LoRA config, and the reward-wiring check (training.grpo);
* the dataset rows, the environment factory and a zero-weight metrics reward (training.rollouts);
* collapse guards and TensorBoard (training.callbacks);
* the final checkpoint, written atomically (training.checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from browser_control.models.files import METRICS_FILE, TRAINING_CONFIG_FILE
from browser_control.training import checkpoints as ckpt
from browser_control.training.config import TrainConfig
from browser_control.training.data import build_rows
from browser_control.training.grpo import (
    build_grpo_config,
    build_peft_config,
    check_lora_targets,
    check_reward_wiring,
    load_tokenizer,
    resolve_bf16,
)
from browser_control.training.plan import EPISODE_LOG_FILE, RunPlan, TrainingSetupError, plan_run, write_run_config
from browser_control.training.preflight import preflight

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback
    from trl import GRPOTrainer

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """A stop signal ended the run early; an intermediate checkpoint was saved to resume from."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = (), plan: RunPlan | None = None) -> Path:
    """Run GRPO as configured and return the finished checkpoint directory.

    Raises EnvServiceUnavailable when the environment service dies (training stops, no checkpoint is
    written under a final name), TrainingSetupError for a setup problem and CheckpointError when saving
    fails (disk full included).
    """
    plan = plan or plan_run(config)
    if not plan.service:
        preflight(plan)

    import torch
    from datasets import Dataset
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from trl import GRPOTrainer

    from browser_control.recording import EpisodeRecorder
    from browser_control.rollout.concurrency import ConcurrentRolloutsMixin
    from browser_control.training.callbacks import (
        CollapseGuard,
        CompletionMarker,
        GracefulStop,
        HeldOutEvaluation,
    )
    from browser_control.training.curriculum import Curriculum
    from browser_control.training.rollouts import EnvironmentFactory, EpisodeMetrics, SaturationMonitor

    class BrowserGRPOTrainer(ConcurrentRolloutsMixin, GRPOTrainer):
        """GRPOTrainer whose environment calls can run concurrently (rollout/concurrency.py)."""

        save_hit_full_disk = False

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            try:
                super()._save_checkpoint(model, trial)
            except Exception as exc:
                # Judged here, where the failure is known to be a write and before the partial files are
                # removed; torch.save's "unexpected pos" carries no errno, so the free space decides.
                self.save_hit_full_disk = ckpt.is_disk_full(exc, Path(self.args.output_dir))
                raise

    if config.use_vllm and not torch.cuda.is_available():
        raise TrainingSetupError("use_vllm: true needs a CUDA GPU; none is visible (set use_vllm: false on CPU)")

    tokenizer = load_tokenizer(config.model_name)
    curriculum = Curriculum.from_config(config, plan.world_size) if config.curriculum else None
    dataset = Dataset.from_list(curriculum.rows() if curriculum else build_rows(config, plan.world_size))
    factory = EnvironmentFactory(
        config.browsergym_url, config.max_episode_steps, timeout_s=config.env_timeout_s, retries=config.env_retries
    )
    monitor = SaturationMonitor(config.saturation_patience)
    trainer_ref: list[GRPOTrainer] = []
    rank = int(os.environ.get("RANK", "0") or 0)
    metrics = EpisodeMetrics(
        factory,
        monitor,
        step_getter=lambda: trainer_ref[0].state.global_step + 1 if trainer_ref else 0,
        episode_log=plan.run_dir / (EPISODE_LOG_FILE if rank == 0 else f"episodes-rank{rank}.jsonl"),
        recorder=EpisodeRecorder(
            plan.run_dir, max_bytes=int(config.record_max_mb * 1e6), screenshots=config.record_screenshots
        )
        if config.record_every_steps and rank == 0
        else None,
        record_every=config.record_every_steps,
        record_episodes=config.record_episodes,
        run_name=plan.name,
        curriculum=curriculum,
    )
    guard = CollapseGuard(config.entropy_warning_threshold, monitor)
    # The guard comes first so the collapse scalars it adds to a step's logs reach TensorBoard with it.
    # Only the main process writes (a SummaryWriter creates its event file at once).
    if rank == 0:
        plan.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        tensorboard = TensorBoardCallback(SummaryWriter(log_dir=str(plan.tensorboard_dir)))
        write_run_config(plan)
    else:
        tensorboard = TensorBoardCallback()  # never initialised off the main process
    stop = GracefulStop()
    held_out = []
    if config.eval_steps and rank == 0:  # the other ranks wait for it at the next step's gather
        held_out.append(
            HeldOutEvaluation(
                config.eval_steps,
                config.eval_tasks or [t.name for t in config.tasks],
                config.eval_episodes,
                config.browsergym_url,
                config.max_episode_steps,
                config.max_completion_length,
                writer=tensorboard.tb_writer if rank == 0 else None,
                record_dir=plan.run_dir / "eval" if rank == 0 and config.record_every_steps else None,
            )
        )

    rollouts = None
    try:
        with warnings.catch_warnings():
            # environment_factory is what this trainer is built on; TRL's "experimental" notice adds nothing.
            warnings.filterwarnings("ignore", message=".*'environment_factory'.*experimental", category=UserWarning)
            trainer = BrowserGRPOTrainer(
                model=config.model_name,
                reward_funcs=[metrics],
                args=build_grpo_config(config, plan, resolve_bf16(config)),
                train_dataset=dataset,
                processing_class=tokenizer,
                environment_factory=factory,
                peft_config=build_peft_config(config),
                callbacks=[guard, tensorboard, CompletionMarker(), stop, *held_out, *callbacks],
            )
        trainer_ref.append(trainer)
        check_reward_wiring(trainer)
        if curriculum is not None:
            curriculum.install(trainer, plan.resume_checkpoint)
        trainer.enable_weight_sync_timing()
        if config.concurrent_env_calls:
            rollouts = trainer.enable_concurrent_rollouts()
        if config.use_peft:
            check_lora_targets(trainer.model, config.lora_target_modules)
        log.info("training %s: %s", plan.name, plan.describe().replace("\n", "; "))
        stop.install()
        if rank == 0:
            # Left by a run killed while saving: never resumed from, and the Trainer's rotation must not count
            # them (it could delete a complete checkpoint to keep a broken one).
            removed = ckpt.remove_incomplete_checkpoints(plan.run_dir)
            if removed:
                log.warning("removed incomplete intermediate checkpoints: %s", ", ".join(map(str, removed)))
        try:
            trainer.train(resume_from_checkpoint=str(plan.resume_checkpoint) if plan.resume_checkpoint else None)
        except BaseException as exc:
            disk_full = trainer.save_hit_full_disk or ckpt.is_disk_full(exc)
            removed = ckpt.remove_incomplete_checkpoints(plan.run_dir) if rank == 0 else []
            if removed:
                log.error("removed incomplete intermediate checkpoints: %s", ", ".join(map(str, removed)))
            if disk_full:
                raise ckpt.CheckpointError(
                    f"disk full while training {plan.name} (intermediate checkpoint under {plan.run_dir}): "
                    f"{exc}. Incomplete checkpoints were removed; free space and resume with "
                    "resume_from_checkpoint: true"
                ) from exc
            raise
    finally:
        stop.uninstall()
        if rollouts is not None:
            rollouts.shutdown()
        factory.close()

    if stop.signal_number is not None and trainer.state.global_step < trainer.state.max_steps:
        raise TrainingStopped(
            f"stopped by signal {stop.signal_number} at step {trainer.state.global_step} of "
            f"{trainer.state.max_steps}; checkpoint saved under {plan.run_dir}. Continue with "
            "resume_from_checkpoint: true",
            stop.signal_number,
        )
    summary = guard.summary(trainer.state)
    summary["run_name"] = plan.name
    summary["episodes"] = {"generation_batches": metrics.batches}
    if not trainer.is_world_process_zero():
        return plan.final_dir
    final = save_final_checkpoint(trainer, tokenizer, plan, summary)
    log.info("checkpoint written: %s", final)
    return final


def save_final_checkpoint(
    trainer: GRPOTrainer, tokenizer: PreTrainedTokenizerBase, plan: RunPlan, summary: dict[str, Any]
) -> Path:
    """Model, tokenizer, resolved config and metrics, under a temporary name until all are written."""
    config = plan.config

    def write(tmp: Path) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        # Training turns the KV cache off for gradient checkpointing; a checkpoint is for generation.
        model.config.use_cache = True
        if config.use_peft:
            from peft import PeftModel

            assert isinstance(model, PeftModel)
            model.save_pretrained(str(tmp / "adapter") if config.merge_lora else str(tmp))
            if config.merge_lora:
                merged = model.merge_and_unload()
                merged.config.use_cache = True
                merged.save_pretrained(str(tmp))
        else:
            model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if config.use_peft and config.merge_lora:
            tokenizer.save_pretrained(str(tmp / "adapter"))
        (tmp / TRAINING_CONFIG_FILE).write_text(config.to_yaml())
        (tmp / METRICS_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    return ckpt.write_atomically(plan.final_dir, write)
