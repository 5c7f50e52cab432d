"""The SFT configuration: one YAML file -> a validated :class:`SftConfig`.

Loaded with the training config's machinery (browser_control.training.config.load_config with ``schema=SftConfig``):
the same precedence (defaults, file, CHECKPOINT_DIR/LOGGING_DIR, ``--set``) and the same error messages,
unknown keys with the closest valid one. Imports only pydantic and PyYAML, so ``sft --help`` is fast.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from browser_control.protocol import DEFAULT_MAX_EPISODE_STEPS, bare_task_name
from browser_control.training.config import RunName, _Strict


class SftConfig(_Strict):
    """Everything `browser-control sft` needs. Field descriptions are the documentation (sft --help)."""

    model_name: str = Field("LiquidAI/LFM2-350M", min_length=1, description="Hugging Face model id or local directory")
    demos: list[str] = Field(min_length=1, description="demonstration JSONL files written by `browser-control demos`")
    tasks: list[str] | None = Field(None, description="keep only the demonstrations of these tasks (unset = all)")
    max_demos_per_task: int | None = Field(
        None, ge=1, description="keep only the first N demonstrations of each task (a deliberately weak start)"
    )
    max_episode_steps: int = Field(
        DEFAULT_MAX_EPISODE_STEPS,
        ge=1,
        le=100,
        description="the action budget the demonstrations were recorded "
        "with; `evaluate` uses it as the default --max-episode-steps of this checkpoint",
    )
    # -- optimisation ------------------------------------------------------------------------------------
    num_train_epochs: float = Field(3.0, gt=0, description="passes over the demonstrations")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; set, it wins over num_train_epochs")
    per_device_train_batch_size: int = Field(8, ge=1, description="conversations per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(2e-5, gt=0, le=1.0, description="AdamW learning rate")
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "linear", description="learning-rate schedule"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up optimizer steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    max_length: int = Field(
        4096,
        ge=64,
        description="tokens of one conversation; longer ones are dropped (a cut episode would "
        "teach a step without the page it answers)",
    )
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 autocast; auto = on when the GPU supports it")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    # -- outputs -------------------------------------------------------------------------------------------
    checkpoint_dir: str = Field("checkpoints", description="where the finished model goes [CHECKPOINT_DIR]")
    logging_dir: str = Field("runs", description="TensorBoard runs, one sub-directory per run [LOGGING_DIR]")
    run_name: RunName | None = Field(
        None,
        description="name of the checkpoint and TensorBoard directories; unset = "
        "{model}-sft-{task or mix}-{YYYYMMDD-HHMMSS}",
    )
    logging_steps: int = Field(1, ge=1, description="optimizer steps between logged losses")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="seeds shuffling and dropout")

    @field_validator("demos", "tasks", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("tasks")
    @classmethod
    def _canonical_tasks(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [bare_task_name(v) for v in value]
        if not names or not all(names):
            raise ValueError("give task names such as [click-test, focus-text], or leave tasks unset")
        return names

    @property
    def model_short_name(self) -> str:
        return self.model_name.rstrip("/").split("/")[-1].lower()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_sft_config(path: str, overrides: list[str] | None = None, environ: dict[str, str] | None = None) -> SftConfig:
    """Read, merge and validate; raises browser_control.training.config.ConfigError with a message fit for a user."""
    from browser_control.training.config import load_config

    config: SftConfig = load_config(path, overrides, environ, schema=SftConfig)
    return config
