"""What TRL's GRPOTrainer is given and what is checked once it is built: the tokenizer (with the tool-calling
chat template), the GRPOConfig and LoRA config derived from a TrainConfig, and the reward wiring.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from browser_control.training.config import TrainConfig
from browser_control.training.plan import RunPlan, TrainingSetupError
from browser_control.training.preflight import locate_model_or_fail
from browser_control.training.rollouts import ENV_REWARD_NAME, METRICS_REWARD_NAME

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from trl import GRPOTrainer

log = logging.getLogger(__name__)


def load_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a chat template that TRL can parse tool calls from."""
    log.info("loading model %s", locate_model_or_fail(model_name).describe())
    from transformers import AutoTokenizer

    from browser_control.models.chat_template import use_tool_calling_template

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name, padding_side="left", truncation_side="left")
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise TrainingSetupError(
            f"cannot load the tokenizer of {model_name}: {exc}\n"
            + (
                "HF_HUB_OFFLINE=1: the model must already be in the cache at "
                f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}; run once online to fill it"
                if offline
                else "check model_name (a Hugging Face id or a local directory) and the network"
            )
        ) from exc
    # Saved with every checkpoint, so evaluation and export see the template training used.
    return use_tool_calling_template(tokenizer)


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
        # < 1 leaves the near-certain tokens of a tool call (its syntax) out of the policy loss; with beta > 0
        # the KL term still holds them to the start (docs/learning.md, "What keeps the format").
        top_entropy_quantile=config.top_entropy_quantile,
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

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )


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
