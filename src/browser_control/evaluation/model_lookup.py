"""Which model an evaluation argument names, and what its checkpoint says about how it was trained.

A model is a local directory, a checkpoint name under CHECKPOINT_DIR or a Hugging Face Hub id; a checkpoint
carries the training configuration it was trained with (``training_config.yaml``), from which evaluation
takes its defaults (tasks, episode length) and the base model to compare against.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from browser_control.evaluation.runner import EvaluationError
from browser_control.models.files import TRAINING_CONFIG_FILE, adapter_dir, checkpoint_dir, model_files_problem
from browser_control.models.source import looks_local, missing_path_message

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str) -> str:
    """A local model directory, a checkpoint name under CHECKPOINT_DIR, or a Hugging Face Hub id.

    Raises EvaluationError with what was looked for when the model cannot be found.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EvaluationError(f"model path {spec!r} is a file; give the model's directory")
        if not (path / "config.json").exists() and adapter_dir(path) is None:
            raise EvaluationError(
                f"{spec!r} is not a model directory: it has no config.json (full model) or "
                "adapter_config.json (LoRA adapter)"
            )
        problem = model_files_problem(path)
        if problem:
            raise EvaluationError(f"model {spec!r} is corrupt: {problem}")
        return str(path)
    named = checkpoint_dir() / spec
    if "/" not in spec and named.is_dir():
        return resolve_model(str(named))
    if _HUB_ID_RE.match(spec) and not looks_local(spec):
        return spec  # a hub id; from_pretrained finds it in the local cache or downloads it
    raise EvaluationError(missing_path_message(spec) + " A Hub model is given by its id, e.g. LiquidAI/LFM2-350M.")


def training_config(spec: str) -> dict[str, Any] | None:
    """The training configuration saved with a checkpoint; None for a Hub id or a model without one."""
    import yaml

    path = Path(resolve_model(spec)) / TRAINING_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def trained_tasks(config: dict[str, Any]) -> list[str]:
    """Task names of a training configuration (``tasks: [click-test]`` or ``[{name: ..., weight: ...}]``)."""
    names = []
    for task in config.get("tasks") or []:
        name = task.get("name") if isinstance(task, dict) else task
        if isinstance(name, str) and name:
            names.append(name)
    return names


def base_model_of(spec: str) -> str | None:
    """The model a checkpoint was trained from: training_config.yaml's model_name, else the adapter's base."""
    config = training_config(spec)
    if config and isinstance(config.get("model_name"), str):
        return config["model_name"]
    lora = adapter_of(resolve_model(spec))
    return lora[1] if lora else None


def adapter_of(path: str) -> tuple[Path, str] | None:
    """(adapter directory, base model) of a LoRA checkpoint; None for a full model or a Hub id."""
    adapter = adapter_dir(Path(path)) if Path(path).is_dir() else None
    if adapter is None:
        return None
    if adapter != Path(path) and (Path(path) / "config.json").is_file():
        return None  # merge_lora: the checkpoint is the merged model; adapter/ is kept beside it
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise EvaluationError(f"{adapter}/adapter_config.json names no base_model_name_or_path; cannot load it")
    return adapter, base
