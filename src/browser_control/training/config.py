"""The training configuration: one YAML file -> a validated, typed :class:`TrainConfig`.

Precedence, lowest first: the field defaults, the YAML file, the environment variables of
:data:`ENV_OVERRIDES` (set by docker/compose.yaml), then ``--set key=value`` overrides. Every error names
the file (or ``--set``) and the key, and an unknown key names the closest valid one, because a typo that
is silently ignored costs a whole training run.

This module imports only pydantic, PyYAML and the wire contract (protocol.py): ``browser-control train
--help`` and ``--dry-run`` must work without torch.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from browser_control.protocol import (
    BROWSERGYM_URL_VARIABLE,
    DEFAULT_BROWSERGYM_URL,
    DEFAULT_MAX_EPISODE_STEPS,
    bare_task_name,
)

# LFM2's real linear layers: attention q/k/v/out_proj, the short-convolution blocks' in_proj/out_proj and
# the SwiGLU MLP w1/w2/w3. A Llama-style list (o_proj, gate_proj, ...) silently adapts only q/k/v of the
# 6 attention layers out of 16.
LFM2_LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]

# Environment variable -> config key. docker/compose.yaml sets these; they win over the YAML file so one
# config works both on a laptop and inside the containers. HF_HOME is read by the Hugging Face libraries
# themselves (model cache) and is only reported here.
ENV_OVERRIDES = {
    BROWSERGYM_URL_VARIABLE: "browsergym_url",
    "CHECKPOINT_DIR": "checkpoint_dir",
    "LOGGING_DIR": "logging_dir",
    "NUM_PROCESSES": "num_processes",
}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_run_name(value: str) -> str:
    if not _SAFE_NAME.match(value):
        raise ValueError("use letters, digits, '.', '_' and '-' only (it names directories)")
    return value


# A run name becomes directory names (checkpoints, TensorBoard), so it is checked wherever it is configured.
RunName = Annotated[str, AfterValidator(_check_run_name)]


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSpec(_Strict):
    """One MiniWoB task of the training mixture."""

    name: str = Field(min_length=1, max_length=200, description="MiniWoB task, e.g. click-test")
    weight: float = Field(1.0, gt=0, description="relative sampling weight in the mixture")

    @field_validator("name")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        # The service accepts both spellings; one canonical form keeps checkpoint names and metric tags stable.
        return bare_task_name(value)


class TrainConfig(_Strict):
    """Everything `browser-control train` needs. Field descriptions are the documentation (train --help)."""

    # -- model -------------------------------------------------------------------------------------
    model_name: str = Field("LiquidAI/LFM2-350M", min_length=1, description="Hugging Face model id or local directory")
    # -- data ----------------------------------------------------------------------------------------
    tasks: list[TaskSpec] = Field(
        min_length=1,
        description="MiniWoB tasks: [click-test] or [{name: click-test, weight: 2}, ...]",
    )
    max_episode_steps: int = Field(DEFAULT_MAX_EPISODE_STEPS, ge=1, le=100, description="browser actions per episode")
    # -- GRPO ------------------------------------------------------------------------------------------
    max_steps: int = Field(100, ge=1, description="optimizer steps")
    num_generations: int = Field(8, ge=2, description="rollouts per task instance (one GRPO group)")
    per_device_train_batch_size: int = Field(8, ge=1, description="rollouts per device per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(1e-6, gt=0, le=1e-2, description="AdamW learning rate")
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant_with_warmup", description="learning-rate schedule"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up optimizer steps")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_completion_length: int = Field(
        1024,
        ge=16,
        le=65536,
        description="tokens of one episode after the prompt, tool results (observations) included",
    )
    temperature: float = Field(1.0, gt=0, le=2.0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1.0, description="nucleus sampling of the rollouts")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the initial model (0 = no reference)")
    top_entropy_quantile: float = Field(
        1.0,
        ge=0,
        le=1,
        description=(
            "the policy loss keeps only this share of completion tokens, those of highest entropy (TRL's rho; 1 ="
            " all). With a short tool call, 0.2 keeps the choice (the bid) and leaves its syntax to `beta`"
        ),
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field("dapo", description="TRL GRPO loss")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="advantage scaling")
    mask_truncated_completions: bool = Field(
        False, description="drop episodes cut by max_completion_length from the loss"
    )
    # -- precision and memory ------------------------------------------------------------------------
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 autocast; auto = on when the GPU supports it")
    gradient_checkpointing: bool = Field(True, description="trade compute for activation memory")
    # -- LoRA ------------------------------------------------------------------------------------------
    use_peft: bool = Field(False, description="train a LoRA adapter instead of all weights")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(LFM2_LORA_TARGET_MODULES),
        min_length=1,
        description="module names to adapt (LFM2's real ones by default)",
    )
    merge_lora: bool = Field(True, description="also save the adapter merged into the base weights")
    # -- generation backend ----------------------------------------------------------------------------
    use_vllm: bool = Field(False, description="generate with vLLM colocated on the training GPU")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM's share of GPU memory")
    vllm_max_model_length: int | None = Field(None, ge=256, description="vLLM context; unset = the model's")
    vllm_enable_sleep_mode: bool = Field(
        False, description="offload vLLM between generations (crashes on DGX Spark: keep off there)"
    )
    # -- environment service ---------------------------------------------------------------------------
    browsergym_url: str = Field(
        DEFAULT_BROWSERGYM_URL,
        description="environment service [BROWSERGYM_URL]; several replicas: comma-separated URLs (a pool)",
    )
    env_timeout_s: float = Field(60.0, gt=0, description="HTTP timeout of one environment request")
    env_retries: int = Field(
        4, ge=0, le=20, description="retries (exponential backoff) before the service counts as dead and training stops"
    )
    env_wait_s: float = Field(120.0, ge=0, description="how long to wait for the service at start")
    concurrent_env_calls: bool = Field(
        True, description="run the browser calls of all rollouts concurrently (TRL runs them one by one)"
    )
    # -- several GPUs (training/launch.py, docs/scaling.md) ---------------------------------------------
    num_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="training processes, one per GPU, data parallel: more than 1 starts the "
        "trainer under `accelerate launch` [NUM_PROCESSES]",
    )
    distributed: str = Field(
        "ddp",
        description="how the processes share the model: ddp (a full copy each), zero1 or zero2 (DeepSpeed "
        "shards optimizer states / and gradients); zero3, fsdp and tensor parallel are refused (they hang "
        "with tool-calling rollouts)",
    )
    # -- outputs ---------------------------------------------------------------------------------------
    checkpoint_dir: str = Field("checkpoints", description="final and intermediate checkpoints [CHECKPOINT_DIR]")
    logging_dir: str = Field("runs", description="TensorBoard runs, one sub-directory per run [LOGGING_DIR]")
    run_name: RunName | None = Field(
        None,
        description="name of the run's checkpoint and TensorBoard directories; "
        "unset = {model}-{task or mix}-{YYYYMMDD-HHMMSS}",
    )
    logging_steps: int = Field(1, ge=1, description="optimizer steps between TensorBoard points")
    save_steps: int = Field(50, ge=1, description="optimizer steps between intermediate checkpoints")
    save_total_limit: int | None = Field(2, ge=1, description="intermediate checkpoints kept (unset = all)")
    resume_from_checkpoint: bool | str = Field(
        False, description="true = the newest intermediate checkpoint of this model and task; or a path"
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="seeds the task mixture, sampling and init")
    # -- held-out evaluation during training -------------------------------------------------------------
    eval_steps: int | None = Field(
        None, ge=1, description="optimizer steps between greedy evaluations on held-out seeds (unset = none)"
    )
    eval_episodes: int = Field(10, ge=1, le=1000, description="episodes per task of each such evaluation")
    eval_tasks: list[str] | None = Field(None, description="tasks of that evaluation; unset = the training tasks")
    # -- episode recordings (browser-control view) -----------------------------------------------------
    record_every_steps: int | None = Field(
        10,
        ge=1,
        description="record a sample of rollouts step by step at step 1 and every this many optimizer "
        "steps, into the run's traces/ (unset = never)",
    )
    record_episodes: int = Field(4, ge=1, le=1024, description="rollouts recorded at each such step")
    record_max_mb: float = Field(200.0, gt=0, description="disk budget of the recordings; past it none are kept")
    record_screenshots: bool = Field(
        False, description="keep a screenshot per step in the recordings (the service must run with --screenshots)"
    )
    # -- collapse guards -------------------------------------------------------------------------------
    entropy_warning_threshold: float = Field(
        0.05, ge=0, description="warn when the mean token entropy falls below this (policy collapse)"
    )
    saturation_patience: int = Field(
        5, ge=1, description="warn when every group of a task had identical rewards this many steps running"
    )
    # -- task curriculum (training/curriculum.py) --------------------------------------------------------
    curriculum: bool = Field(
        False,
        description="draw each group's task by how much it can still teach (the moving share of its "
        "groups whose rewards were not all equal) instead of by the fixed weights; needs two tasks or more",
    )
    curriculum_ema: float = Field(
        0.3, gt=0, le=1, description="weight of the newest generation batch in that moving share (1 = no memory)"
    )
    curriculum_min_share: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="floor on each task's sampling probability, so that none starves; at most 1/number of tasks",
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):  # `--set tasks=click-test`
            value = [value]
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("browsergym_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Several addresses, comma-separated: a pool of service replicas (env_pool.py).
        from browser_control.env_pool import PoolConfigError, parse_urls

        try:
            return ",".join(parse_urls(value))
        except PoolConfigError as exc:
            if "," not in value:
                raise ValueError("expected an http(s) URL such as http://browsergym:8000") from None
            raise ValueError(f"{exc} (a pool of replicas: http(s) URLs separated by commas)") from None

    @field_validator("distributed")
    @classmethod
    def _safe_distribution(cls, value: str) -> str:
        value = value.strip().lower().replace("-", "").replace("_", "")
        if value in SAFE_DISTRIBUTED:
            return value
        reason = REFUSED_DISTRIBUTED.get(value)
        if reason is None:
            raise ValueError(f"expected one of {', '.join(SAFE_DISTRIBUTED)}")
        raise ValueError(f"{value} is refused: {reason}")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tasks: {', '.join(duplicates)} listed twice; use one entry with a weight")
        if self.curriculum and len(self.tasks) < 2:
            raise ValueError("curriculum: true needs at least two tasks to choose between")
        if self.curriculum and len(self.tasks) * self.curriculum_min_share > 1:
            raise ValueError(
                f"curriculum_min_share = {self.curriculum_min_share} for {len(self.tasks)} tasks: the floors "
                f"alone exceed 1; use at most {1 / len(self.tasks):.3g}"
            )
        # Inside a launch WORLD_SIZE says how many processes there are; before it, num_processes will.
        launched = os.environ.get("WORLD_SIZE")
        world_size = int(launched or self.num_processes)
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * world_size
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * gradient_accumulation_steps"
                f"{(' * WORLD_SIZE' if launched else ' * num_processes') if world_size > 1 else ''} = {batch} "
                f"must be a multiple of "
                f"num_generations = {self.num_generations}: a GRPO group must fit in one optimizer step"
            )
        if (
            self.use_vllm
            and self.vllm_max_model_length is not None
            and (self.vllm_max_model_length <= self.max_completion_length)
        ):
            raise ValueError(
                f"vllm_max_model_length = {self.vllm_max_model_length} must exceed max_completion_length = "
                f"{self.max_completion_length}: the prompt (tool list and first page) comes on top"
            )
        return self

    # -- derived values --------------------------------------------------------------------------------
    @property
    def model_short_name(self) -> str:
        return self.model_name.rstrip("/").split("/")[-1].lower()

    @property
    def task_label(self) -> str:
        return self.tasks[0].name if len(self.tasks) == 1 else "mix"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# -- loading -----------------------------------------------------------------------------------------


def field_names(schema: type[BaseModel] | None = None) -> list[str]:
    return list((schema or TrainConfig).model_fields)


def _closest(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _key_path(loc: tuple[Any, ...], root: type[BaseModel] = TrainConfig) -> tuple[list[str], type[BaseModel]]:
    """The user's key path of an error location, without pydantic's union-member tags (bool, literal[...])."""
    parts: list[str] = []
    model: type[BaseModel] = root
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
        elif part in model.model_fields:
            parts.append(part)
            if model is TrainConfig and part == "tasks":
                model = TaskSpec
        elif not parts:
            parts.append(str(part))
    return parts, model


def _describe_errors(
    errors: list[dict[str, Any]],
    source: str,
    root: type[BaseModel] = TrainConfig,
    origins: dict[str, str] | None = None,
) -> list[str]:
    by_key: dict[str, list[str]] = {}
    unknown: list[str] = []
    for error in errors:
        parts, model = _key_path(tuple(error.get("loc", ())), root)
        key = ".".join(parts)
        kind = error.get("type", "")
        if kind == "extra_forbidden":
            extra = str(error["loc"][-1])
            unknown.append(
                f"{source}: unknown key '{key + '.' if key else ''}{extra}'{_closest(extra, list(model.model_fields))}"
            )
            continue
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if key and "input" in error and kind != "missing":
            message += f" (got {error['input']!r:.80})"
        by_key.setdefault(key, []).append(message)
    # A typo'd key also makes its intended key look missing: report the typo first.
    lines = list(unknown)
    for key, messages in by_key.items():
        # A value from the environment or --set is reported against where it came from, not the file.
        where = (origins or {}).get(key.split(".", 1)[0], source)
        lines.append(f"{where}: {key + ': ' if key else ''}{' or '.join(dict.fromkeys(messages))}")
    return lines


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def parse_overrides(pairs: list[str], schema: type[BaseModel] = TrainConfig) -> dict[str, Any]:
    """``["max_steps=5", "tasks=[click-test]"]`` -> ``{"max_steps": 5, "tasks": ["click-test"]}`` (YAML values)."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set max_steps=10")
        if key not in schema.model_fields:
            raise ConfigError(f"--set: unknown key '{key}'{_closest(key, field_names(schema))}")
        try:
            result[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {value!r} is not valid YAML: {exc}") from exc
    return result


def env_overrides(environ: dict[str, str] | None = None, schema: type[BaseModel] = TrainConfig) -> dict[str, str]:
    environ = dict(os.environ if environ is None else environ)
    return {key: environ[var] for var, key in ENV_OVERRIDES.items() if environ.get(var) and key in schema.model_fields}


def load_config(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    schema: type[BaseModel] = TrainConfig,
) -> Any:
    """Read, merge and validate a config; raise :class:`ConfigError` with a message fit for a user."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        shipped = sorted(p.name for p in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
        hint = f"; shipped configs: {', '.join('configs/' + s for s in shipped)}" if shipped else ""
        raise ConfigError(f"{source}: no such config file{hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from exc
    data = _parse_yaml(text, source)
    # Unknown keys of the file itself are reported against the file, before any override can hide them.
    for key in data:
        if key not in schema.model_fields:
            raise ConfigError(f"{source}: unknown key '{key}'{_closest(str(key), field_names(schema))}")
    check_launcher_environment(environ)
    from_env = env_overrides(environ, schema)
    merged: dict[str, Any] = {**data, **from_env}
    variables = {key: var for var, key in ENV_OVERRIDES.items()}
    origins = {key: f"{variables[key]}={value!r} in the environment" for key, value in from_env.items()}
    if overrides:
        given = parse_overrides(overrides, schema) if isinstance(overrides, list) else overrides
        merged.update(given)
        origins.update(dict.fromkeys(given, "--set"))
    return validate_config(merged, source, schema, origins)


def validate_config(
    data: dict[str, Any],
    source: str = "config",
    schema: type[BaseModel] = TrainConfig,
    origins: dict[str, str] | None = None,
) -> Any:
    """Validate against ``schema`` (TrainConfig, or another strict model such as the SFT config).

    ``origins`` names where a key's value came from when it was not the file (an environment variable,
    ``--set``), so an error points at what to change.
    """
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = [dict(e) for e in exc.errors()]
        raise ConfigError("\n".join(_describe_errors(errors, source, schema, origins))) from None


# Which ways of sharing the model across processes are safe with tool-calling rollouts. TRL plays the turns
# of an episode in a loop that runs while any rollout of THIS process still calls a tool, so the processes
# run different numbers of generation turns. Anything that makes a generation turn a collective operation
# then pairs one process's turn with another's different turn, or waits for a turn that never comes: the
# run hangs. DDP and ZeRO-1/2 keep a full copy of the weights on every process, so generation (transformers
# or a vLLM engine colocated per process, tensor_parallel_size 1) involves no other process; the
# collectives (gradients, reward gathering, weight sync) come once per step on every process.
SAFE_DISTRIBUTED = ("ddp", "zero1", "zero2")
REFUSED_DISTRIBUTED = {
    "zero3": "ZeRO-3 shards the weights, so every generation turn gathers them from all processes; with tool "
    "calls the processes run different numbers of turns and the gathers hang (rank 0's held-out "
    "evaluation too). Use zero2 (optimizer states and gradients sharded) or ddp",
    "fsdp": "FSDP shards the weights, so every generation turn gathers them from all processes; with tool calls "
    "the processes run different numbers of turns and the gathers hang. Use zero2 or ddp",
    "tp": "vLLM tensor parallelism gathers the prompts of a process group on every generation turn; with tool "
    "calls the processes run different numbers of turns and hang. Each process runs its own colocated "
    "vLLM (tensor_parallel_size 1); use ddp",
}
REFUSED_DISTRIBUTED["tensorparallel"] = REFUSED_DISTRIBUTED["tp"]

# Set by torchrun / accelerate for distributed runs; read as numbers by the config and the trainer.
LAUNCHER_VARIABLES = {"WORLD_SIZE": 1, "RANK": 0, "LOCAL_RANK": 0}


def check_launcher_environment(environ: dict[str, str] | None = None) -> None:
    """Refuse a malformed WORLD_SIZE/RANK in one line here rather than as a traceback later."""
    environ = dict(os.environ if environ is None else environ)
    for variable, minimum in LAUNCHER_VARIABLES.items():
        value = (environ.get(variable) or "").strip()
        if not value:
            continue
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise ConfigError(
                f"{variable}={value!r} in the environment: expected a whole number >= {minimum} "
                "(torchrun and accelerate set it; unset it for a single-process run)"
            )
    # An accelerate config of the user's own can shard the weights behind the config's back: refuse it too.
    flag = {
        k: (environ.get(k) or "").strip().lower() in ("1", "true", "yes")
        for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM")
    }
    if flag["ACCELERATE_USE_FSDP"]:
        raise ConfigError(f"ACCELERATE_USE_FSDP in the environment: {REFUSED_DISTRIBUTED['fsdp']}")
    if flag["ACCELERATE_USE_MEGATRON_LM"]:
        raise ConfigError(f"ACCELERATE_USE_MEGATRON_LM in the environment: {REFUSED_DISTRIBUTED['tp']}")
    if flag["ACCELERATE_USE_DEEPSPEED"] and (environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or "").strip() == "3":
        raise ConfigError(f"ACCELERATE_DEEPSPEED_ZERO_STAGE=3 in the environment: {REFUSED_DISTRIBUTED['zero3']}")


def config_keys_help(schema: type[BaseModel]) -> str:
    """Every key of ``schema`` with its default and description, for a command's --help epilog.

    Built from the config model itself, so the help can never drift from what is validated.
    """
    import textwrap

    lines = ["config keys (YAML; default in brackets):"]
    for name, info in schema.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        lines += textwrap.wrap(
            f"{name} [{default}]: {info.description or ''}", width=100, initial_indent="  ", subsequent_indent="      "
        )
    return "\n".join(lines)


def _markdown_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()  # as YAML writes it
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def config_table(schema: type[BaseModel]) -> str:
    """The keys of ``schema`` as a Markdown table (key, default, meaning): the docs' table is this text.

    tests/test_config.py compares the block in docs/training.md with it, so the docs cannot drift from the
    model; regenerate with ``python -m browser_control.training.config``.
    """
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, info in schema.model_fields.items():
        default = "required" if info.is_required() else _markdown_default(info.get_default(call_default_factory=True))
        meaning = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_table(TrainConfig), end="")
