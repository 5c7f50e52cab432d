"""Supervised fine-tuning on demonstrations with TRL's SFTTrainer, loss on the assistant's tokens only.

Masking: the conversations are tokenized here with the chat template TRL itself uses for
``assistant_only_loss`` (``trl.chat_template_utils.get_training_chat_template``: for LFM2's lfm2_v2
template it is lfm2_v2_training, which renders the same tokens and wraps each assistant turn, its
``<|tool_call_start|>[...]<|tool_call_end|><|im_end|>`` included, in ``{% generation %}`` markers).
``return_assistant_tokens_mask`` gives the assistant mask and the labels are -100 everywhere else: the
system prompt, the tool list, the task, every observation (tool result) and the chat scaffolding.

Why tokenize here rather than hand SFTTrainer the ``messages`` column with ``assistant_only_loss=True``:
a datasets/Arrow table unifies the ``arguments`` of all tool calls into one struct, so ``click`` gains a
``value: None`` that the template renders as ``click(bid='13', value=None)``, and the tool schemas get the
same treatment. Reading the JSONL with ``json`` keeps every message as written; SFTTrainer then receives
``input_ids`` and ``labels`` and trains on them as they are.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from browser_control.models.files import METRICS_FILE, TRAINING_CONFIG_FILE
from browser_control.sft.config import SftConfig
from browser_control.sft.demos import DemoError, read_demos
from browser_control.training import checkpoints as ckpt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class SftSetupError(RuntimeError):
    """SFT cannot start as configured; the message says why."""


@dataclass
class SftPlan:
    config: SftConfig
    name: str
    final_dir: Path
    run_dir: Path
    tensorboard_dir: Path


def plan_sft(config: SftConfig, now: float | None = None) -> SftPlan:
    label = config.tasks[0] if config.tasks and len(config.tasks) == 1 else "mix"
    name = config.run_name or ckpt.run_name(f"{config.model_short_name}-sft", label, now)
    final_dir = Path(config.checkpoint_dir) / name
    if final_dir.exists():
        raise SftSetupError(f"{final_dir} already exists: that run is finished. Choose another run_name, or unset it")
    return SftPlan(
        config, name, final_dir, ckpt.runs_dir(Path(config.checkpoint_dir)) / name, Path(config.logging_dir) / name
    )


def select_demos(config: SftConfig) -> list[dict[str, Any]]:
    """The demonstrations of the configured files, filtered by task and capped per task, in file order."""
    records: list[dict[str, Any]] = []
    for path in config.demos:
        records += read_demos(path)
    if config.tasks is not None:
        present = {r.get("task_name") for r in records}
        absent = [t for t in config.tasks if t not in present]
        if absent:
            raise DemoError(
                f"tasks: no demonstration of {', '.join(absent)} in {', '.join(config.demos)} "
                f"(they hold {', '.join(sorted(map(str, present)))})"
            )
        records = [r for r in records if r.get("task_name") in config.tasks]
    if config.max_demos_per_task is not None:
        kept: dict[str, int] = {}
        selected = []
        for record in records:
            task = str(record.get("task_name"))
            if kept.get(task, 0) < config.max_demos_per_task:
                kept[task] = kept.get(task, 0) + 1
                selected.append(record)
        records = selected
    return records


def training_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The chat template with ``{% generation %}`` markers that TRL's assistant_only_loss would use."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if isinstance(template, str) and has_generation_markers(template):
        return template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError as exc:
        raise SftSetupError(
            f"the model's chat template has no {{% generation %}} markers and TRL has no training variant of it "
            f"({exc}); assistant-only loss needs one"
        ) from exc


def tokenize_demo(tokenizer: PreTrainedTokenizerBase, record: dict[str, Any], template: str) -> dict[str, list[int]]:
    """``input_ids`` of the whole conversation and ``labels`` that keep only the assistant's tokens."""
    tools = record.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    rendered = tokenizer.apply_chat_template(
        record["messages"],
        tools=tools,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    input_ids = list(rendered["input_ids"])
    mask = list(rendered["assistant_masks"])
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]
    return {"input_ids": input_ids, "labels": labels}


def build_dataset_rows(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[dict[str, Any]], template: str, max_length: int
) -> list[dict[str, list[int]]]:
    rows, too_long = [], 0
    for record in records:
        row = tokenize_demo(tokenizer, record, template)
        if len(row["input_ids"]) > max_length:
            too_long += 1
            continue
        if all(label == IGNORE_INDEX for label in row["labels"]):
            raise DemoError(
                f"demonstration of {record.get('task_name')} seed {record.get('seed')} has no assistant "
                "token to learn from"
            )
        rows.append(row)
    if too_long:
        log.warning(
            "dropped %d of %d demonstrations longer than max_length=%d tokens", too_long, len(records), max_length
        )
    if not rows:
        raise DemoError(f"every demonstration is longer than max_length={max_length} tokens; raise max_length")
    return rows


def train_sft(config: SftConfig, callbacks: Sequence[TrainerCallback] = (), plan: SftPlan | None = None) -> Path:
    """Fine-tune ``config.model_name`` on the demonstrations and return the finished checkpoint directory."""
    plan = plan or plan_sft(config)
    records = select_demos(config)  # before any model loads: a bad file fails in a second

    import torch
    from datasets import Dataset
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoModelForCausalLM
    from transformers.integrations import TensorBoardCallback
    from trl import SFTConfig, SFTTrainer

    from browser_control.training.grpo import load_tokenizer
    from browser_control.training.plan import TrainingSetupError

    try:
        tokenizer = load_tokenizer(config.model_name)
    except TrainingSetupError as exc:
        raise SftSetupError(str(exc)) from exc
    tokenizer.padding_side = "right"
    rows = build_dataset_rows(tokenizer, records, training_template(tokenizer), config.max_length)
    bf16 = (
        bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if config.bf16 == "auto"
        else bool(config.bf16)
    )
    model = AutoModelForCausalLM.from_pretrained(config.model_name, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(plan.run_dir),
        run_name=plan.name,
        seed=config.seed,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_length=config.max_length,
        bf16=bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        # The rows are already input_ids + labels (see the module docstring): nothing for TRL to mask again.
        assistant_only_loss=False,
        completion_only_loss=False,
        logging_steps=config.logging_steps,
        save_strategy="no",  # short runs; the finished model is written atomically below
        report_to=[],
    )
    plan.tensorboard_dir.mkdir(parents=True, exist_ok=True)
    tensorboard = TensorBoardCallback(SummaryWriter(log_dir=str(plan.tensorboard_dir)))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[tensorboard, *callbacks],
    )
    log.info(
        "SFT %s: %d demonstrations of %s",
        plan.name,
        len(rows),
        ", ".join(sorted({str(r.get("task_name")) for r in records})),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tasks: dict[str, int] = {}
    for record in records:
        tasks[str(record.get("task_name"))] = tasks.get(str(record.get("task_name")), 0) + 1
    summary = {
        "run_name": plan.name,
        "method": "sft",
        "global_step": trainer.state.global_step,
        "demonstrations": len(rows),
        "demonstrations_per_task": tasks,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": losses,
    }
    if losses and not all(math.isfinite(x) for x in losses):
        log.warning("the SFT loss was not finite at some step: lower learning_rate")

    def write(tmp: Path) -> None:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        unwrapped.config.use_cache = True  # a checkpoint is for generation
        unwrapped.save_pretrained(str(tmp))
        tokenizer.padding_side = "left"  # what GRPO and evaluation load with
        tokenizer.save_pretrained(str(tmp))
        (tmp / TRAINING_CONFIG_FILE).write_text(config.to_yaml())
        (tmp / METRICS_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    final = ckpt.write_atomically(plan.final_dir, write)
    log.info("checkpoint written: %s", final)
    return final
