"""Where model directories live and whether their files are whole, before anything loads them.

Shared by the checkpoints command (list, export), evaluation (resolving a model argument) and model location
for training; it imports neither torch nor transformers, so listing and `train --dry-run` stay fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_CHECKPOINT_DIR = "./checkpoints"
# A directory still being written (or cut short) carries this prefix until it is renamed into place.
TMP_PREFIX = ".tmp-"
# Written beside every finished checkpoint (GRPO and SFT): the resolved config it was trained with, which
# evaluation reads its defaults from, and the run's summary.
TRAINING_CONFIG_FILE = "training_config.yaml"
METRICS_FILE = "metrics.json"


def checkpoint_dir(configured: str | None = None) -> Path:
    return Path(configured or os.environ.get("CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR)


def adapter_dir(path: Path) -> Path | None:
    """Where a LoRA checkpoint keeps its adapter: the checkpoint itself or its adapter/ subdirectory."""
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (empty, truncated, unreadable header), or None.

    The format is an 8-byte little-endian header length, a JSON header giving every tensor's byte range,
    then the data: a file cut short by a full disk or a crash is shorter than its header says.
    """
    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty"
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if header_len < 2 or 8 + header_len > size:
            return f"{path} is truncated or not a safetensors file ({size} bytes, no complete header)"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return f"{path} has an unreadable header (not a safetensors file?)"
    if not isinstance(header, dict):
        return f"{path} has an unreadable header (not a safetensors file?)"
    ends = [
        int(t["data_offsets"][1])
        for name, t in header.items()
        if name != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets") or ()) == 2
    ]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        return f"{path} is truncated: {size} bytes of {expected} (the save was cut short)"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{path} is not valid JSON (empty or cut short?)"
    return None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def model_files_problem(path: Path) -> str | None:
    """What makes the model directory ``path`` unloadable, naming the file; None when it looks whole.

    Checked before any model is loaded, so a corrupt checkpoint fails in one line instead of a traceback
    (or a misleading "install sentencepiece" when tokenizer.json is missing).
    """
    adapter = adapter_dir(path)
    if adapter is not None:
        problem = _json_problem(adapter / "adapter_config.json")
        if problem:
            return problem
        weights = [adapter / "adapter_model.safetensors"]
        if not weights[0].is_file():
            return f"{weights[0]} is missing"
        tokenizer_dirs = [d for d in (path, adapter) if (d / "tokenizer_config.json").is_file()]
        tokenizer_required = False  # the base model's tokenizer serves when the adapter has none
    else:
        problem = _json_problem(path / "config.json")
        if problem:
            return problem
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"{index} is not a valid weight index (empty or cut short?)"
            weights = [path / shard for shard in shards]
            missing = [w for w in weights if not w.is_file()]
            if missing:
                return f"{missing[0]} is missing (listed in {index.name})"
        elif (path / "model.safetensors").is_file():
            weights = [path / "model.safetensors"]
        elif (path / "pytorch_model.bin").is_file():
            weights = []
            if (path / "pytorch_model.bin").stat().st_size == 0:
                return f"{path / 'pytorch_model.bin'} is empty"
        else:
            return f"{path}/model.safetensors is missing: the directory has no model weights"
        tokenizer_dirs = [path]
        tokenizer_required = True
    for weight in weights:
        problem = _safetensors_problem(weight)
        if problem:
            return problem
    for directory in tokenizer_dirs[:1] or ([path] if tokenizer_required else []):
        config = directory / "tokenizer_config.json"
        if not config.is_file():
            return f"{config} is missing: the checkpoint has no tokenizer"
        problem = _json_problem(config)
        if problem:
            return problem
        present = [directory / n for n in _TOKENIZER_FILES if (directory / n).is_file()]
        if not present:
            return f"{directory / 'tokenizer.json'} is missing: the checkpoint's tokenizer is incomplete"
        if present[0].name.endswith(".json"):
            problem = _json_problem(present[0])
            if problem:
                return problem
        elif present[0].stat().st_size == 0:
            return f"{present[0]} is empty"
    return None


def human_size(n: float) -> str:
    """A byte count as people read it (checkpoint and export listings): 512 B, 1.5 KB, 378.2 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
