"""GRPO on MiniWoB with TRL's GRPOTrainer and ``environment_factory``.

TRL runs the multi-turn episodes (one tool call per browser action, tool results masked from the loss)
and the optimisation; this module decides what it is given and what comes out:

* a plan (names, directories, resume point) and a preflight against the environment service, both
  without torch, so ``--dry-run`` is fast and a misconfiguration fails before any model loads;
* the dataset rows, the environment factory and a zero-weight metrics reward (training.rollouts);
* collapse guards and TensorBoard (training.callbacks);
* the final checkpoint, written atomically (training.checkpoints).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from browser_control.client import EnvRequestError
from browser_control.config import TrainConfig
from browser_control.env_pool import EnvPool, make_client
from browser_control.training import checkpoints as ckpt
from browser_control.training.data import build_rows, prompts_per_step
from browser_control.training.rollouts import ENV_REWARD_NAME, METRICS_REWARD_NAME

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback
    from trl import GRPOTrainer

    from browser_control.model_source import ModelSource

log = logging.getLogger(__name__)

TRAINING_CONFIG_FILE = "training_config.yaml"
METRICS_FILE = "metrics.json"
EPISODE_LOG_FILE = "episodes.jsonl"


class TrainingSetupError(RuntimeError):
    """Training cannot start as configured; the message says why and what to change."""


class TrainingStopped(RuntimeError):
    """A stop signal ended the run early; an intermediate checkpoint was saved to resume from."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


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
        if c.use_peft:
            mode = (f"LoRA r={c.lora_r} alpha={c.lora_alpha} dropout={c.lora_dropout} on "
                    f"{', '.join(c.lora_target_modules)}; merged copy: {'yes' if c.merge_lora else 'no'}")
        else:
            mode = "full fine-tune"
        backend = (f"vLLM colocate (gpu_memory_utilization={c.vllm_gpu_memory_utilization}, "
                   f"max_model_length={c.vllm_max_model_length or 'model default'}, "
                   f"sleep_mode={'on' if c.vllm_enable_sleep_mode else 'off'})"
                   if c.use_vllm else "transformers generate")
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
            + (f" ({self.service.get('status')}, {self.service.get('sessions')}/"
               f"{self.service.get('max_sessions')} sessions in use; this run needs "
               f"{self.environments_per_process} per process)" if self.service else "")
            + f", {'concurrent' if c.concurrent_env_calls else 'one-by-one'} calls",
            f"checkpoint       {self.final_dir} (written as {ckpt.TMP_PREFIX}{self.name}, renamed when complete)",
            f"intermediate     {self.run_dir}/checkpoint-N every {c.save_steps} steps "
            f"(keep {c.save_total_limit or 'all'})",
            f"resume from      {self.resume_checkpoint or 'nothing (new run)'}",
            f"tensorboard      {self.tensorboard_dir}",
            "recordings       " + (
                f"{c.record_episodes} rollouts at step 1 and every {c.record_every_steps} steps, step by step in "
                f"{self.run_dir}/traces (up to {c.record_max_mb:g} MB"
                + (", with screenshots" if c.record_screenshots else "") + "; browser-control view shows them)"
                if c.record_every_steps else "off (record_every_steps unset)"),
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
        raise TrainingSetupError("several processes need one run_name (each would date its own): set num_processes "
                                 "instead of launching yourself, or set run_name")
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
    return RunPlan(config=config, name=name, final_dir=final_dir, run_dir=run_dir,
                   tensorboard_dir=Path(config.logging_dir) / name, resume_checkpoint=resume,
                   world_size=int(os.environ.get("WORLD_SIZE") or config.num_processes))


def wait_for_service(url: str, timeout_s: float, report_every_s: float = 10.0) -> None:
    """Poll GET /health until it answers 200, saying what is awaited and how long is left.

    A service that is still starting (Compose, or a serve-env launched a moment ago) is waited for; one
    that never comes is reported after ``timeout_s`` (env_wait_s) with the last problem seen.
    """
    import httpx

    from browser_control.client import EnvServiceUnavailable

    started = time.monotonic()
    deadline = started + max(timeout_s, 1.0)
    next_report = started
    problem = ""
    with httpx.Client(base_url=url, timeout=min(10.0, max(timeout_s, 1.0))) as http:
        while True:
            try:
                response = http.get("/health")
                if response.status_code == 200:
                    if problem:
                        log.info("environment service at %s is up after %.0f s", url, time.monotonic() - started)
                    return
                problem = f"GET /health answered {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            now = time.monotonic()
            if now >= deadline:
                raise EnvServiceUnavailable(
                    f"the environment service at {url} was not healthy within {timeout_s:.0f} s (env_wait_s): "
                    f"{problem}. Start it with `browser-control serve-env` (or `make fine-tune-local`, which "
                    "starts it in Docker), or set BROWSERGYM_URL / browsergym_url to where it runs"
                )
            if now >= next_report:
                log.warning("waiting for the environment service at %s (%s): %.0f s left of env_wait_s=%g; "
                            "start it with `browser-control serve-env`", url, problem, deadline - now, timeout_s)
                next_report = now + report_every_s
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))


def preflight(plan: RunPlan) -> None:
    """Fail before loading a model: the service is up, knows the tasks, has room; optional packages exist."""
    config = plan.config
    if config.use_vllm and importlib.util.find_spec("vllm") is None:
        raise TrainingSetupError(
            "use_vllm: true but vLLM is not installed here. The CUDA training image ships it; elsewhere set "
            "use_vllm: false (generation with transformers) or pip install 'trl[vllm]'"
        )
    if config.use_vllm:
        from browser_control.models.vllm_setup import prepare_vllm_environment

        prepare_vllm_environment()
    if config.distributed != "ddp" and importlib.util.find_spec("deepspeed") is None:
        raise TrainingSetupError(f"distributed: {config.distributed} needs DeepSpeed: pip install deepspeed, or ddp")
    if config.use_peft and importlib.util.find_spec("peft") is None:
        raise TrainingSetupError("use_peft: true but peft is not installed: pip install peft")
    with make_client(config.browsergym_url, timeout_s=config.env_timeout_s, retries=config.env_retries) as client:
        # EnvServiceUnavailable propagates: the CLI reports it as the fatal "service unavailable" error.
        if isinstance(client, EnvPool):  # replicas: wait for one, give the others a grace, skip the rest
            health = client.wait_until_healthy(timeout_s=config.env_wait_s)
        else:
            wait_for_service(config.browsergym_url, config.env_wait_s)
            health = client.wait_until_healthy(timeout_s=max(config.env_timeout_s, 1.0))
        plan.service = health.model_dump()
        available = set(client.tasks())
        wanted = [t.name for t in config.tasks] + list(config.eval_tasks or [])
        unknown = [name for name in dict.fromkeys(wanted) if name.removeprefix("miniwob.") not in available]
        if unknown:
            import difflib

            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, sorted(available), n=3, cutoff=0.6)
                hints.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise TrainingSetupError(
                f"tasks/eval_tasks: the environment service at {config.browsergym_url} does not know "
                f"{', '.join(hints)}; GET {config.browsergym_url}/tasks lists all {len(available)}"
            )
        if health.max_sessions < plan.environments_per_process * plan.world_size:
            raise TrainingSetupError(
                f"the environment service allows {health.max_sessions} sessions but this run keeps "
                f"{plan.environments_per_process * plan.world_size} episodes open at once "
                "(per_device_train_batch_size x gradient_accumulation_steps x processes): raise MAX_SESSIONS of "
                "the service, add replicas (docs/scaling.md) or lower the batch"
            )
        # One real episode start proves the service can serve the first task before a model is loaded.
        try:
            probe = client.reset(config.tasks[0].name, seed=0, max_episode_steps=config.max_episode_steps)
        except EnvRequestError as exc:
            raise TrainingSetupError(f"the environment service cannot start {config.tasks[0].name}: {exc}") from exc
        try:
            client.close_session(probe.session_id)
        except EnvRequestError:
            pass  # already reaped: nothing to free


# -- model and tokenizer ---------------------------------------------------------------------------

def locate_model_or_fail(model_name: str) -> ModelSource:
    """Where model_name loads from, or TrainingSetupError at once: never minutes of Hub retries for a typo."""
    from browser_control.model_source import ModelNotFound, locate_model

    try:
        return locate_model(model_name)
    except ModelNotFound as exc:
        raise TrainingSetupError(f"model_name: {exc}") from None


def load_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a chat template that TRL can parse tool calls from."""
    log.info("loading model %s", locate_model_or_fail(model_name).describe())
    from transformers import AutoTokenizer
    from trl.chat_template_utils import lfm2_chat_template, lfm2_v2_chat_template

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name, padding_side="left", truncation_side="left")
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise TrainingSetupError(
            f"cannot load the tokenizer of {model_name}: {exc}\n"
            + ("HF_HUB_OFFLINE=1: the model must already be in the cache at "
               f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}; run once online to fill it"
               if offline else "check model_name (a Hugging Face id or a local directory) and the network")
        ) from exc
    template = tokenizer.chat_template
    if isinstance(template, str) and template.strip() == lfm2_chat_template.strip():
        # LFM2's original template drops tool calls from assistant turns, so TRL refuses it; lfm2_v2 renders
        # plain turns identically and keeps them. Saved with every checkpoint, so evaluation sees the same.
        tokenizer.chat_template = lfm2_v2_chat_template
        log.info("chat template: LFM2's original template replaced by TRL's lfm2_v2 (tool calls kept)")
    return tokenizer


def resolve_bf16(config: TrainConfig) -> bool:
    import torch

    if config.bf16 == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(config.bf16)


def build_grpo_config(config: TrainConfig, plan: RunPlan, bf16: bool) -> Any:
    from trl import GRPOConfig

    from browser_control.training.launch import deepspeed_config

    return GRPOConfig(
        output_dir=str(plan.run_dir),
        run_name=plan.name,
        seed=config.seed,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        weight_decay=config.weight_decay,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        mask_truncated_completions=config.mask_truncated_completions,
        # One tool-calling round per browser action; the service also truncates at the same limit.
        max_tool_calling_iterations=config.max_episode_steps,
        # The metrics reward observes only; the task reward comes from BrowserEnvironment.get_reward, which
        # TRL appends after these with weight 1.
        reward_weights=[0.0],
        bf16=bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        # fp32 master weights (bf16 autocast does the speed-up): a 1e-6 update vanishes in bf16 weights.
        # sdpa: flash-attn has no kernels for every target GPU (GB10).
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
        use_vllm=config.use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_max_model_length=config.vllm_max_model_length,
        vllm_enable_sleep_mode=config.vllm_enable_sleep_mode,
        # Rows are already a seeded random mixture; keeping their order makes the dataset prefix-stable, so a
        # resumed run with a larger max_steps skips exactly the instances it has seen.
        shuffle_dataset=False,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        deepspeed=deepspeed_config(config),  # zero1/zero2 (training/launch.py); None = DDP or one process
        # TensorBoard is attached explicitly (one run directory per run under logging_dir).
        report_to=[],
        log_completions=False,
    )


def build_peft_config(config: TrainConfig) -> Any:
    if not config.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")


def check_reward_wiring(trainer: GRPOTrainer) -> None:
    """Refuse to train unless the task reward is wired with weight 1 (and the metrics reward with 0).

    A run whose reward is not connected trains happily on zeros; this makes that impossible to miss.
    """
    weights = dict(zip(trainer.reward_func_names, trainer.reward_weights.tolist(), strict=True))
    if weights.get(ENV_REWARD_NAME) != 1.0 or weights.get(METRICS_REWARD_NAME) != 0.0 or len(weights) != 2:
        raise TrainingSetupError(
            f"reward wiring is wrong: expected {{{ENV_REWARD_NAME!r}: 1.0, {METRICS_REWARD_NAME!r}: 0.0}} "
            f"(task success from BrowserEnvironment.get_reward), got {weights}"
        )


def check_lora_targets(model: Any, targets: Sequence[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        log.warning("lora_target_modules %s match no module of the model; they are not adapted", missing)


# -- the run ------------------------------------------------------------------------------------------

def _write_run_config(plan: RunPlan) -> None:
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

    from browser_control.agent.concurrency import ConcurrentRolloutsMixin
    from browser_control.recording import EpisodeRecorder
    from browser_control.training.callbacks import (
        CollapseGuard,
        CompletionMarker,
        GracefulStop,
        HeldOutEvaluation,
    )
    from browser_control.training.rollouts import EnvironmentFactory, EpisodeMetrics, SaturationMonitor

    class BrowserGRPOTrainer(ConcurrentRolloutsMixin, GRPOTrainer):
        """GRPOTrainer whose environment calls can run concurrently (agent/concurrency.py)."""

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
    dataset = Dataset.from_list(build_rows(config, plan.world_size))
    factory = EnvironmentFactory(config.browsergym_url, config.max_episode_steps,
                                 timeout_s=config.env_timeout_s, retries=config.env_retries)
    monitor = SaturationMonitor(config.saturation_patience)
    trainer_ref: list[GRPOTrainer] = []
    rank = int(os.environ.get("RANK", "0") or 0)
    metrics = EpisodeMetrics(
        factory, monitor,
        step_getter=lambda: trainer_ref[0].state.global_step + 1 if trainer_ref else 0,
        episode_log=plan.run_dir / (EPISODE_LOG_FILE if rank == 0 else f"episodes-rank{rank}.jsonl"),
        recorder=EpisodeRecorder(plan.run_dir, max_bytes=int(config.record_max_mb * 1e6),
                                 screenshots=config.record_screenshots)
        if config.record_every_steps and rank == 0 else None,
        record_every=config.record_every_steps, record_episodes=config.record_episodes, run_name=plan.name,
    )
    guard = CollapseGuard(config.entropy_warning_threshold, monitor)
    # The guard comes first so the collapse scalars it adds to a step's logs reach TensorBoard with it.
    # Only the main process writes (a SummaryWriter creates its event file at once).
    if rank == 0:
        plan.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        tensorboard = TensorBoardCallback(SummaryWriter(log_dir=str(plan.tensorboard_dir)))
        _write_run_config(plan)
    else:
        tensorboard = TensorBoardCallback()  # never initialised off the main process
    stop = GracefulStop()
    held_out = []
    if config.eval_steps and rank == 0:  # the other ranks wait for it at the next step's gather
        held_out.append(HeldOutEvaluation(
            config.eval_steps, config.eval_tasks or [t.name for t in config.tasks], config.eval_episodes,
            config.browsergym_url, config.max_episode_steps, config.max_completion_length,
            writer=tensorboard.tb_writer if rank == 0 else None,
            record_dir=plan.run_dir / "eval" if rank == 0 and config.record_every_steps else None,
        ))

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
            "resume_from_checkpoint: true", stop.signal_number)
    summary = guard.summary(trainer.state)
    summary["run_name"] = plan.name
    summary["episodes"] = {"generation_batches": metrics.batches}
    if not trainer.is_world_process_zero():
        return plan.final_dir
    final = save_final_checkpoint(trainer, tokenizer, plan, summary)
    log.info("checkpoint written: %s", final)
    return final


def save_final_checkpoint(trainer: GRPOTrainer, tokenizer: PreTrainedTokenizerBase, plan: RunPlan,
                          summary: dict[str, Any]) -> Path:
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
