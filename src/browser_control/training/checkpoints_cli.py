r"""List finished checkpoints and export them (a LoRA run merged into a full model).

Checkpoints live in CHECKPOINT_DIR (default ./checkpoints), one directory per finished run:
config.json + model.safetensors (full fine-tune) or adapter_config.json + adapter_model.safetensors
(LoRA, at the top or in adapter/), tokenizer files, training_config.yaml and metrics.json. Directories
named .tmp-* are checkpoints still being written (or cut short) and are never listed; runs/ holds the
trainer's intermediate checkpoints.

Examples:
  browser-control checkpoints list
  browser-control checkpoints list --json
  CHECKPOINT_DIR=/data/checkpoints browser-control checkpoints list

  # a LoRA run as a standalone model (for vLLM, sharing, or a GGUF converter)
  browser-control checkpoints export lfm2-350m-click-test-20260101-120000 --merge-lora --output exported/run1

  # evaluate the export against the base model
  browser-control evaluate --model LiquidAI/LFM2-350M --model exported/run1 --suite miniwob-easy

  # GGUF files for llama.cpp (a LoRA run is merged first), written to NAME/gguf/ beside the weights
  browser-control checkpoints export NAME --format gguf --quant q8_0
  browser-control checkpoints export NAME --format gguf --quant f16,q5_k_m,q4_k_m --output gguf/
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from browser_control.models.files import (
    DEFAULT_CHECKPOINT_DIR,
    TMP_PREFIX,
    adapter_dir,
    checkpoint_dir,
    human_size,
    model_files_problem,
)

# Files of a full model or adapter that an export copies (weights are matched by suffix below).
_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "training_config.yaml",
    "metrics.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


class CheckpointCliError(RuntimeError):
    """Bad input; the message says what to do."""


@dataclass
class CheckpointInfo:
    name: str
    path: str
    kind: str  # "full" or "lora"
    size_bytes: int
    modified: str
    base_model: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _kind(path: Path) -> str | None:
    if adapter_dir(path) is not None:
        return "lora"
    if (path / "config.json").is_file():
        return "full"
    return None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summarize_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers that say how a run ended: step, reward and success rates (recent averages first)."""
    if not isinstance(metrics, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(metrics.get("global_step"), int):
        out["step"] = metrics["global_step"]
    for section in ("recent", "last", "eval"):
        values = metrics.get(section)
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and (key == "reward" or key.startswith("success") or key.endswith("success_rate"))
            ):
                out.setdefault(key, value)
    if len(out) <= 1:  # an unfamiliar layout: show its top-level numbers instead
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.setdefault(key, value)
    if isinstance(metrics.get("warnings"), list) and metrics["warnings"]:
        out["warnings"] = len(metrics["warnings"])
    return out


def describe(path: Path) -> CheckpointInfo | None:
    kind = _kind(path)
    if kind is None:
        return None
    base = None
    adapter = adapter_dir(path)
    if adapter is not None:
        try:
            base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
    metrics: dict[str, Any] = {}
    metrics_file = path / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = summarize_metrics(json.loads(metrics_file.read_text()))
        except (OSError, ValueError) as exc:
            metrics = {"error": f"unreadable metrics.json: {exc}"}
    modified = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return CheckpointInfo(path.name, str(path), kind, _size(path), modified, base, metrics)


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Finished checkpoints under ``root``, newest first; .tmp-* (incomplete) directories are skipped."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if not child.is_dir() or child.name.startswith((TMP_PREFIX, ".")):
            continue
        info = describe(child)
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda c: Path(c.path).stat().st_mtime, reverse=True)


def find_checkpoint(name: str, root: Path) -> Path:
    path = Path(name).expanduser()
    if not path.is_dir():
        path = root / name
    if name.startswith(TMP_PREFIX) or path.name.startswith(TMP_PREFIX):
        raise CheckpointCliError(f"{name} is a checkpoint still being written (or cut short); it cannot be used")
    if not path.is_dir() or _kind(path) is None:
        names = [c.name for c in list_checkpoints(root)]
        import difflib

        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else (f"; checkpoints there: {', '.join(names[:10])}" if names else "; there are no checkpoints there")
        )
        raise CheckpointCliError(f"no checkpoint {name!r} in {root}{hint}")
    return path


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts) or "-"


# -- export ---------------------------------------------------------------------------------------
def _copy_model_files(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        if item.is_file() and (
            item.name in _MODEL_FILES
            or item.name.endswith(_WEIGHT_SUFFIXES)
            or item.name.startswith("tokenizer")
            or item.name.endswith((".jinja", ".txt"))
        ):
            shutil.copy2(item, dst / item.name)


def merge_lora(checkpoint: Path, output: Path) -> None:
    """Load the base model named by the adapter, apply the adapter, merge it and save a full model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from browser_control.evaluation.model_lookup import resolve_model
    from browser_control.models.chat_template import use_tool_calling_template

    adapter = adapter_dir(checkpoint)
    assert adapter is not None
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise CheckpointCliError(f"{adapter}/adapter_config.json names no base_model_name_or_path")
    try:
        base_path = resolve_model(base)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        has_tokenizer = any((d / "tokenizer_config.json").is_file() for d in (checkpoint, adapter))
        tokenizer_dir = checkpoint if (checkpoint / "tokenizer_config.json").is_file() else adapter
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir) if has_tokenizer else base_path)
    except OSError as exc:
        raise CheckpointCliError(f"could not load the base model {base!r} of {checkpoint.name}: {exc}") from None
    # The exported model must call tools like the trained one: keep (or set) the tool-calling template.
    use_tool_calling_template(tokenizer)
    merged.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    for extra in ("training_config.yaml", "metrics.json"):
        if (checkpoint / extra).is_file():
            shutil.copy2(checkpoint / extra, output / extra)


def export_checkpoint(checkpoint: Path, output: Path, merge: bool) -> str:
    """Write ``checkpoint`` to ``output`` (a temporary sibling renamed at the end); returns what was done."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CheckpointCliError(f"{output} already exists and is not empty; choose a new --output")
    problem = model_files_problem(checkpoint)
    if problem:
        raise CheckpointCliError(f"{checkpoint.name} is corrupt: {problem}")
    kind = _kind(checkpoint)
    tmp = output.parent / f"{TMP_PREFIX}{output.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if kind == "lora" and merge:
            merge_lora(checkpoint, tmp)
            done = "merged the LoRA adapter into its base model"
        else:
            source = adapter_dir(checkpoint) if kind == "lora" else checkpoint
            assert source is not None
            _copy_model_files(source, tmp)
            if source != checkpoint:
                _copy_model_files(checkpoint, tmp)
            done = (
                "copied the LoRA adapter (add --merge-lora for a full model)"
                if kind == "lora"
                else ("copied the full model" + (" (it has no LoRA adapter to merge)" if merge else ""))
            )
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return done


# -- command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-dir", default=None, help=f"where checkpoints are [CHECKPOINT_DIR, else {DEFAULT_CHECKPOINT_DIR}]"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list",
        help="checkpoints with kind, size, date and final metrics",
        description="List finished checkpoints, newest first.",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    export = sub.add_parser(
        "export",
        help="copy a checkpoint, merge a LoRA run, or write GGUF files for llama.cpp",
        description="Export a checkpoint to a directory that loads with from_pretrained\n"
        "(and vLLM, when it is a full model), or (--format gguf) to GGUF files for llama.cpp,\n"
        "written to .tmp-* names and renamed once llama.cpp has loaded them. GGUF needs\n"
        "llama-cpp-python and llama.cpp's converter; one command installs both (it compiles\n"
        "llama.cpp once, minutes): python -m browser_control.export.llama_cpp_setup\n"
        "Details: docs/evaluation.md (GGUF).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  browser-control checkpoints export NAME --merge-lora --output merged/NAME\n"
        "  browser-control checkpoints export NAME --format gguf --quant q8_0\n"
        "  browser-control checkpoints export NAME --format gguf --quant all --output gguf/",
    )
    export.add_argument("name", help="checkpoint name in the checkpoint directory, or a path")
    export.add_argument(
        "--format",
        choices=("hf", "gguf"),
        default="hf",
        help="hf: a transformers model directory; gguf: llama.cpp files [hf]",
    )
    export.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="hf: new directory to write (required); gguf: directory for the .gguf files [CHECKPOINT/gguf]",
    )
    export.add_argument(
        "--merge-lora",
        action="store_true",
        help="merge a LoRA adapter into its base model (peft merge_and_unload); --format gguf always merges",
    )
    export.add_argument(
        "--quant",
        default="q8_0",
        metavar="Q[,Q...]",
        help="gguf: f16, q8_0, q5_k_m, q4_k_m, several separated by commas, or all [q8_0]",
    )
    export.add_argument(
        "--pre-tokenizer",
        default=None,
        metavar="NAME",
        help="gguf: llama.cpp's pre-tokenizer for a tokenizer its converter does not know (lfm2, "
        "gpt-2, ...); the export checks that llama.cpp then tokenizes like the checkpoint",
    )


def run(args: argparse.Namespace) -> int:
    root = checkpoint_dir(args.checkpoint_dir)
    try:
        if args.action == "list":
            return _list(root, args.json)
        checkpoint = find_checkpoint(args.name, root)
        if args.format == "gguf":
            from browser_control.export.gguf import export_command

            merge = (lambda dst: merge_lora(checkpoint, dst)) if _kind(checkpoint) == "lora" else None
            return export_command(
                checkpoint,
                args.output,
                args.quant,
                corrupt=model_files_problem(checkpoint),
                merge=merge,
                pre_tokenizer=args.pre_tokenizer,
            )
        if args.output is None:
            raise CheckpointCliError("export needs --output DIR (a new directory) for --format hf")
        done = export_checkpoint(checkpoint, args.output, args.merge_lora)
    except CheckpointCliError as exc:
        print(f"browser-control checkpoints: error: {exc}", file=sys.stderr)
        return 2
    print(f"{checkpoint.name}: {done} -> {args.output}")
    return 0


def _list(root: Path, as_json: bool) -> int:
    checkpoints = list_checkpoints(root)
    if as_json:
        print(json.dumps([asdict(c) for c in checkpoints], indent=2))
        return 0
    if not checkpoints:
        where = root if root.is_dir() else f"{root} (does not exist)"
        print(f"no finished checkpoints in {where}; set CHECKPOINT_DIR or --checkpoint-dir to look elsewhere")
        return 0
    rows = [(c.name, c.kind, human_size(c.size_bytes), c.modified, _format_metrics(c.metrics)) for c in checkpoints]
    header = ("NAME", "KIND", "SIZE", "DATE", "FINAL METRICS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0
