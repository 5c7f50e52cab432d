r"""Export an LFM2 checkpoint to GGUF files for llama.cpp (f16, q8_0, q5_k_m, q4_k_m).

The work is llama.cpp's own, taken from PyPI: its ``convert_hf_to_gguf.py`` (vendored in the
llama-cpp-python source distribution) writes an F16 file, and its quantizer (``llama_model_quantize``
in libllama, called through llama-cpp-python's ctypes bindings) makes the other types from it.
``python -m browser_control.export.llama_cpp_setup`` installs both.

Every file is written under a ``.tmp-gguf-*`` directory in the output directory and renamed into place
only once llama.cpp has loaded it and tokenized a MiniWoB prompt exactly as the checkpoint's tokenizer
does; on any failure (unknown quantization, a checkpoint that is not LFM2, a corrupt one, a full disk,
Ctrl-C) the temporary directory is removed and nothing partial is left.

Tokenizers: the converter recognises a tokenizer by hashing the tokens of a fixed text and looking the
hash up in a table of published models (LiquidAI's LFM2 tokenizer is there, as ``lfm2``). A tokenizer
trained locally (the tiny test models) is in no table; when it is a plain GPT-2 style byte-level BPE
(tokenizer.json: ByteLevel pre-tokenizer with the GPT-2 regex, no prefix space, no normalizer) the export
tells the converter that llama.cpp's ``gpt-2`` pre-tokenizer applies, and the tokenization check above
proves it. Any other unknown tokenizer is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from browser_control.export.llama_cpp_setup import (
    LLAMA_CPP_PYTHON_VERSION,
    default_converter_dir,
    installed_version,
)
from browser_control.models.files import human_size

# The quantizations offered, best quality first, and roughly what each costs per parameter on disk
# (F16 2 bytes; Q8_0 34 bytes per 32 weights; the K-quants mix 5-6 and 4-6 bit blocks).
QUANTS = ("f16", "q8_0", "q5_k_m", "q4_k_m")
_BYTES_PER_PARAM = {"f16": 2.0, "q8_0": 1.07, "q5_k_m": 0.75, "q4_k_m": 0.65}
DEFAULT_QUANT = "q8_0"
# The pre-tokenizer llama.cpp applies for a tokenizer.json whose pre-tokenizer is exactly GPT-2's.
_GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
SETUP_COMMAND = f"{Path(sys.executable).name} -m browser_control.export.llama_cpp_setup"


class GgufExportError(RuntimeError):
    """Bad input or a failed step; the message says what to do. Nothing partial is left behind."""


@dataclass
class GgufFile:
    quant: str
    path: Path
    size_bytes: int


def file_name(name: str, quant: str) -> str:
    """llama.cpp's naming: ``LFM2-350M-Q4_K_M.gguf``."""
    return f"{name}-{quant.upper()}.gguf"


def parse_quants(spec: str | Sequence[str]) -> list[str]:
    """``"q8_0,q4_k_m"`` (or a list, or ``all``) as a list of known quantizations, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    quants: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        for quant in QUANTS if item == "all" else [item]:
            if quant not in QUANTS:
                raise GgufExportError(f"unknown quantization {item!r}: choose from {', '.join(QUANTS)} (or all)")
            if quant not in quants:
                quants.append(quant)
    if not quants:
        raise GgufExportError(f"no quantization given: choose from {', '.join(QUANTS)}")
    return quants


def converter_dir() -> Path:
    configured = os.environ.get("LLAMA_CPP_CONVERTER")
    return Path(configured) if configured else default_converter_dir()


def require_tools() -> Path:
    """The converter's directory, after checking that llama-cpp-python and the converter are installed."""
    converter = converter_dir()
    version = installed_version()
    missing = []
    if version is None:
        missing.append("llama-cpp-python is not installed")
    elif version != LLAMA_CPP_PYTHON_VERSION and "LLAMA_CPP_CONVERTER" not in os.environ:
        missing.append(f"llama-cpp-python {version} is installed, the export is tested with {LLAMA_CPP_PYTHON_VERSION}")
    if not (converter / "convert_hf_to_gguf.py").is_file():
        missing.append(f"llama.cpp's converter is not in {converter}")
    if missing:
        raise GgufExportError(
            "; ".join(missing) + f". Install both with: {SETUP_COMMAND} (builds llama.cpp once: "
            "minutes; needs a C++ compiler), or point LLAMA_CPP_CONVERTER at a llama.cpp checkout"
        )
    return converter


def lfm2_problem(model_dir: Path) -> str | None:
    """Why ``model_dir`` is not an LFM2 language model the export supports, or None."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{model_dir / 'config.json'} is unreadable ({exc})"
    architectures = config.get("architectures") or []
    lfm2_classes = ("Lfm2ForCausalLM", "LFM2ForCausalLM")
    if config.get("model_type") != "lfm2" or not any(a in lfm2_classes for a in architectures):
        found = config.get("model_type") or "unknown"
        return (
            f"it is a {found!r} model ({', '.join(architectures) or 'no architectures'}); the GGUF export "
            "supports LFM2 language models (model_type 'lfm2', Lfm2ForCausalLM)"
        )
    return None


def pre_tokenizer_for(model_dir: Path) -> str | None:
    """The llama.cpp pre-tokenizer to name when the converter does not know the tokenizer, or None.

    Only a tokenizer whose pre-tokenization is GPT-2's (byte-level with GPT-2's split regex, no prefix
    space, no normalizer) gets one (``gpt-2``); the converter's own table decides for any other.
    """
    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is None and all(pre.get(k) == v for k, v in _GPT2_BYTE_LEVEL.items()):
        return "gpt-2"
    return None


def parameter_count(model_dir: Path) -> int:
    """Parameters in the model's safetensors files, from their headers (no tensor is read)."""
    total = 0
    for weights in model_dir.glob("*.safetensors"):
        with open(weights, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, tensor in header.items():
            if key != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total


def estimated_bytes(params: int, quants: Sequence[str]) -> int:
    """Disk the export needs at its peak: the F16 file, every quantized file, and 5% for metadata."""
    need = params * _BYTES_PER_PARAM["f16"] + sum(params * _BYTES_PER_PARAM[q] for q in quants if q != "f16")
    return int(need * 1.05) + (1 << 20)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def check_cases(model_dir: Path) -> list[dict[str, Any]]:
    """Texts llama.cpp must split into the checkpoint tokenizer's tokens, with those tokens: a MiniWoB
    prompt in the checkpoint's chat format with every tool, a tool call, and text that exercises the
    pre-tokenizer (spaces, digits, unicode, quotes)."""
    from transformers import AutoTokenizer

    from browser_control.rollout.environment import bound_tools
    from browser_control.rollout.prompts import task_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [
        "<|tool_call_start|>[click(bid='13')]<|tool_call_end|><|im_end|>",
        "\n \n\n \t\t x  y   z 3 33 333 3.3 3..3 I've 'RE sure? ü ∑ 😀 ---=== ''' \"\" ... !!! ???\n",
        "\tStaticText 'Click Me!'\n\t[13] button 'Submit', focused\n[fill(bid='14', value='Hello, world')]",
    ]
    if tokenizer.chat_template:
        texts.insert(
            0,
            tokenizer.apply_chat_template(
                task_prompt("click-test"), tools=bound_tools(), add_generation_prompt=True, tokenize=False
            ),
        )
    return [{"text": text, "ids": tokenizer.encode(text, add_special_tokens=False)} for text in texts]


def _child_env() -> dict[str, str]:
    """The environment for a worker: it must import this same browser_control (a checkout or an install)."""
    env = dict(os.environ)
    source_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_worker(step: str, args: list[str]) -> dict[str, Any]:
    """Run one worker step; its progress goes to this terminal. A failure raises with the worker's reason.

    The result file lives in the system's temporary directory, not beside the output: it must be
    writable when the output's disk is the one that filled up.
    """
    with tempfile.TemporaryDirectory(prefix="browser-control-gguf-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "browser_control.export.gguf_worker", "--result", str(result), step, *args]
        proc = subprocess.Popen(cmd, env=_child_env())
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        try:
            outcome = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            outcome = {
                "ok": False,
                "error": f"the {step} step ended with exit status {code} and no result (killed? out of memory?)",
                "disk_full": False,
            }
    if not outcome.get("ok"):
        raise _StepFailed(step, outcome.get("error") or "unknown error", bool(outcome.get("disk_full")))
    return outcome


class _StepFailed(RuntimeError):
    def __init__(self, step: str, error: str, disk_full: bool):
        super().__init__(f"{step}: {error}")
        self.step, self.error, self.disk_full = step, error, disk_full


def _is_disk_full(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _nearly_full(directory: Path) -> bool:
    """Whether a write under ``directory`` failed for want of space: torch and safetensors report a full
    disk in their own error types, without an errno. Asked before the partial files are removed."""
    free = _free_bytes(directory)
    return free is not None and free < (1 << 20)


def _discard(workspace: Path, created_dir: Path | None) -> None:
    """Remove the temporary files, and the output directory when this export created it and it is empty."""
    shutil.rmtree(workspace, ignore_errors=True)
    if created_dir is not None:
        try:
            created_dir.rmdir()
        except OSError:
            pass  # not empty: other files were there or arrived meanwhile


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def export_gguf(
    model_dir: Path,
    out_dir: Path,
    name: str,
    quants: Sequence[str],
    *,
    prepare: Callable[[Path], None] | None = None,
    check_space: bool = True,
    threads: int = 0,
    pre_tokenizer: str | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[GgufFile]:
    """Write ``out_dir/{name}-{QUANT}.gguf`` for each quantization; returns the files written.

    ``prepare(dir)``, when given, writes the full model to convert into ``dir`` first (a LoRA checkpoint
    merged into its base model); ``model_dir`` is then only named in messages. ``check_space`` refuses
    before any write when the disk obviously cannot hold the files (the write itself also reports a full
    disk). ``threads`` for the quantizer, 0 = all cores. ``pre_tokenizer`` names llama.cpp's pre-tokenizer
    for a tokenizer the converter does not recognise (default: ``gpt-2`` for a GPT-2 byte-level BPE, else
    none); the tokenization check decides whether the choice was right.
    """
    quants = parse_quants(list(quants))
    if prepare is None:
        problem = lfm2_problem(model_dir)
        if problem:
            raise GgufExportError(f"{model_dir.name} cannot be exported to GGUF: {problem}")
    targets = {q: out_dir / file_name(name, q) for q in quants}
    taken = [str(t) for t in targets.values() if t.exists()]
    if taken:
        raise GgufExportError(
            f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; "
            "remove it or choose another --output directory"
        )
    converter = require_tools()
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".tmp-gguf-{name}-", dir=out_dir))
    steps = len(quants) + (3 if prepare else 2) - (1 if "f16" in quants else 0)
    step = 0

    def announce(what: str) -> None:
        nonlocal step
        step += 1
        log(f"[{step}/{steps}] {what}")

    started = time.monotonic()
    try:
        source = model_dir
        if prepare is not None:
            announce("merging the LoRA adapter into its base model (peft)")
            source = workspace / "merged"
            source.mkdir()
            prepare(source)
            problem = lfm2_problem(source)
            if problem:
                raise GgufExportError(f"{name} cannot be exported to GGUF: merged with its base model, {problem}")
        params = parameter_count(source)
        need = estimated_bytes(params, quants)
        free = _free_bytes(out_dir)
        if check_space and free is not None and free < need:
            raise GgufExportError(
                f"not enough disk space in {out_dir}: the export needs about {human_size(need)} "
                f"({_count(params)} parameters), {human_size(free)} is free"
            )
        pre = pre_tokenizer or pre_tokenizer_for(source)
        f16 = workspace / file_name(name, "f16")
        announce(f"converting {_count(params)} parameters to F16 (llama.cpp convert_hf_to_gguf.py)")
        _run_worker(
            "convert",
            [
                "--converter",
                str(converter),
                "--model",
                str(source),
                "--outfile",
                str(f16),
                "--outtype",
                "f16",
                *(["--pre-tokenizer", pre] if pre else []),
            ],
        )
        cases = json.dumps(check_cases(source))
        written: dict[str, Path] = {}
        notes: dict[str, str] = {}
        for quant in quants:
            if quant == "f16":
                written[quant] = f16
                continue
            announce(f"quantizing to {quant.upper()} (llama.cpp llama_model_quantize)")
            path = workspace / file_name(name, quant)
            outcome = _run_worker(
                "quantize",
                ["--source", str(f16), "--output", str(path), "--quant", quant, "--threads", str(threads)],
            )
            if outcome.get("fallback"):
                notes[quant] = outcome["fallback"].split("WARNING: ", 1)[-1]
            written[quant] = path
        announce(
            f"checking {len(written)} file(s): llama.cpp loads each and must tokenize a MiniWoB prompt like {name}"
        )
        checked = _run_worker(
            "check",
            [
                *(a for path in written.values() for a in ("--gguf", str(path))),
                "--cases",
                cases,
            ],
        )
        for outcome in checked["files"].values():
            mismatch = outcome["mismatch"]
            if mismatch:
                raise GgufExportError(
                    f"llama.cpp tokenizes differently from {name}'s tokenizer (pre-tokenizer "
                    f"{outcome['metadata'].get('tokenizer.ggml.pre')!r}): at token {mismatch['index']} of "
                    f"{mismatch['text'][:60]!r} it gives {mismatch['llama_cpp']}, transformers "
                    f"{mismatch['transformers']}; the file would not behave like the checkpoint, so none was kept"
                )
        files = []
        for quant, path in written.items():
            os.replace(path, targets[quant])
            files.append(GgufFile(quant, targets[quant], targets[quant].stat().st_size))
    except GgufExportError:
        _discard(workspace, out_dir if created else None)
        raise
    except _StepFailed as exc:
        full = exc.disk_full or _nearly_full(out_dir)
        _discard(workspace, out_dir if created else None)
        if full:
            raise GgufExportError(
                f"disk full while writing GGUF files in {out_dir} ({exc.step}); the partial "
                "files were removed: free some space and run the export again"
            ) from None
        hint = ""
        if "pre-tokenizer was not recognized" in exc.error:
            hint = (
                ": llama.cpp's converter does not know this tokenizer. If you know which llama.cpp pre-tokenizer "
                "matches it, name it with --pre-tokenizer (e.g. lfm2, gpt-2, llama-bpe); the export then checks "
                "that llama.cpp tokenizes like the checkpoint"
            )
        raise GgufExportError(f"the GGUF {exc.step} step failed: {exc.error}{hint}") from None
    except BaseException as exc:
        full = _is_disk_full(exc) or (isinstance(exc, Exception) and _nearly_full(out_dir))
        _discard(workspace, out_dir if created else None)
        if full:
            raise GgufExportError(
                f"disk full while writing GGUF files in {out_dir}; the partial files were removed: "
                "free some space and run the export again"
            ) from exc
        raise
    shutil.rmtree(workspace, ignore_errors=True)
    for quant, note in notes.items():
        log(f"note: {quant.upper()}: {note} (tensors whose rows are not a multiple of the block size)")
    log(f"done in {time.monotonic() - started:.0f} s")
    return files


def export_command(
    checkpoint: Path,
    output: Path | None,
    quant_spec: str | Sequence[str],
    *,
    corrupt: str | None,
    merge: Callable[[Path], None] | None,
    pre_tokenizer: str | None = None,
) -> int:
    """``checkpoints export --format gguf``: export, print the files with their sizes, return the exit code.

    ``corrupt`` is what makes the checkpoint unloadable (None when it is whole); ``merge`` writes a LoRA
    checkpoint's merged model into a directory (None for a full checkpoint).
    """
    out_dir = output if output is not None else checkpoint / "gguf"
    try:
        quants = parse_quants(quant_spec)
        if corrupt:
            raise GgufExportError(f"{checkpoint.name} is corrupt: {corrupt}")
        files = export_gguf(checkpoint, out_dir, checkpoint.name, quants, prepare=merge, pre_tokenizer=pre_tokenizer)
    except GgufExportError as exc:
        print(f"browser-control checkpoints: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("browser-control checkpoints: interrupted; the partial GGUF files were removed", file=sys.stderr)
        return 130
    width = max(len(str(f.path)) for f in files)
    print(f"{checkpoint.name}: {len(files)} GGUF file{'s' if len(files) > 1 else ''} in {out_dir}")
    for f in files:
        print(f"  {str(f.path).ljust(width)}  {human_size(f.size_bytes):>9}  {f.quant.upper()}")
    return 0
