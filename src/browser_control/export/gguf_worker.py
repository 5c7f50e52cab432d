r"""The steps of a GGUF export that run llama.cpp's code, each in a child process of its own.

A child process can be stopped at once on Ctrl-C (llama.cpp's quantizer is one long C call that Python
cannot interrupt), its memory is returned when it ends, and a crash in C code becomes an exit status
instead of taking the command down. Each step writes what happened to a JSON result file (``--result``)
that the parent reads; progress bars go to stderr.

  convert   llama.cpp's convert_hf_to_gguf.py, run unmodified, from the llama-cpp-python source
            distribution (see browser_control.export.llama_cpp_setup).
  quantize  llama.cpp's llama_model_quantize through llama-cpp-python's ctypes bindings.
  check     loads GGUF files with llama.cpp and compares their tokens with the checkpoint tokenizer's.

Not meant to be called by hand: ``browser-control checkpoints export --format gguf`` drives it.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import re
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

_GGML_LOG_LEVEL_ERROR = 4  # enum ggml_log_level in ggml.h
# llama.cpp's file types for the quantizations we offer (enum llama_ftype in llama.h).
FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17}


def _write_result(path: Path, **result: Any) -> None:
    path.write_text(json.dumps(result), encoding="utf-8")


def _disk_full(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- convert --------------------------------------------------------------------------------------
def convert(converter_dir: Path, model: Path, outfile: Path, outtype: str, pre_tokenizer: str | None) -> None:
    """Run convert_hf_to_gguf.py as its own ``__main__``, with the gguf-py it ships with.

    ``pre_tokenizer`` is used only where the converter does not recognise the tokenizer: it names the
    pre-tokenizer llama.cpp should apply (``tokenizer.ggml.pre``), which the converter otherwise finds by
    hashing the tokens of a fixed text and looking the hash up in a table of published models. A model
    trained with its own tokenizer is in no table, so the caller states its pre-tokenizer instead, and
    ``check`` then proves that llama.cpp splits text into the same tokens as the checkpoint's tokenizer.
    """
    script = converter_dir / "convert_hf_to_gguf.py"
    # The script puts its own gguf-py first on sys.path unless NO_LOCAL_GGUF is set: the converter and
    # gguf-py of one llama.cpp revision belong together (PyPI's gguf 0.19.0 lacks constants it uses).
    os.environ.pop("NO_LOCAL_GGUF", None)
    sys.path[:0] = [str(converter_dir), str(converter_dir / "gguf-py")]
    # The converter logs every tensor at INFO; its progress bar and warnings are what a user needs.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    import conversion.base as base  # the converter's package, importable now

    if pre_tokenizer:
        recognise = base.TextModel.get_vocab_base_pre
        converter_log = logging.getLogger("hf-to-gguf")

        def get_vocab_base_pre(self, tokenizer):  # type: ignore[no-untyped-def]
            level = converter_log.level
            converter_log.setLevel(logging.CRITICAL)  # its "not recognized" banner is expected here
            try:
                return recognise(self, tokenizer)
            except NotImplementedError:
                print(
                    f"gguf: tokenizer not in llama.cpp's table; its pre-tokenizer is {pre_tokenizer!r}", file=sys.stderr
                )
                return pre_tokenizer
            finally:
                converter_log.setLevel(level)

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), str(model), "--outfile", str(outfile), "--outtype", outtype]
    runpy.run_path(str(script), run_name="__main__")


# -- quantize -------------------------------------------------------------------------------------
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def quantize(source: Path, output: Path, quant: str, threads: int) -> dict[str, Any]:
    """llama_model_quantize(source -> output) with a progress bar fed by llama.cpp's per-tensor log."""
    import llama_cpp
    from tqdm import tqdm

    bar = tqdm(desc=f"quantize {quant.upper()}", unit="tensor", file=sys.stderr, dynamic_ncols=True)
    messages: list[str] = []
    line = []

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        piece = text.decode("utf-8", "replace")
        line.append(piece)
        if not piece.endswith("\n"):
            return
        whole = "".join(line).strip()
        line.clear()
        found = _TENSOR_LINE.search(whole)
        if found:
            bar.total = int(found.group(2))
            bar.n = int(found.group(1))
            bar.refresh()
        elif whole:
            messages.append(whole)

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p())
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), ctypes.byref(params))
    bar.close()
    fallback = next((m for m in messages if "fallback quantization" in m), None)
    if status != 0:
        failure = next((m for m in reversed(messages) if "failed to quantize" in m), None) or "\n".join(messages[-3:])
        raise RuntimeError(f"llama_model_quantize returned {status}: {failure}")
    return {"fallback": fallback}


# -- check ----------------------------------------------------------------------------------------
def check(gguf_files: list[Path], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Load each file with llama.cpp and tokenize every case's ``text``: it must give the case's ``ids``
    (the checkpoint tokenizer's tokens, computed by the parent, which has that tokenizer loaded).

    Each model is loaded whole (not vocab-only), so a file with wrong tensor shapes or types fails here.
    Returns, per file, the first text whose tokens differ (None when all agree) and the file's metadata.
    """
    import llama_cpp

    @llama_cpp.llama_log_callback
    def errors_only(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level == _GGML_LOG_LEVEL_ERROR:  # the rest is llama.cpp describing a healthy load
            sys.stderr.write(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(errors_only, ctypes.c_void_p())
    files = {}
    for gguf_file in gguf_files:
        llama = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=64, n_threads=1, verbose=False)
        mismatch = None
        for case in cases:
            ours, theirs = llama.tokenize(case["text"].encode("utf-8"), add_bos=False, special=True), case["ids"]
            if list(ours) != list(theirs):
                at = next(
                    (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    min(len(ours), len(theirs)),
                )
                mismatch = {
                    "text": case["text"][:200],
                    "index": at,
                    "llama_cpp": list(ours[at : at + 8]),
                    "transformers": list(theirs[at : at + 8]),
                }
                break
        metadata = {k: v for k, v in llama.metadata.items() if "chat_template" not in k}
        llama.close()
        files[str(gguf_file)] = {"mismatch": mismatch, "metadata": metadata}
    return {"files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m browser_control.export.gguf_worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--result", type=Path, required=True, help="JSON file to write the outcome to")
    sub = parser.add_subparsers(dest="step", required=True)
    conv = sub.add_parser("convert")
    conv.add_argument("--converter", type=Path, required=True)
    conv.add_argument("--model", type=Path, required=True)
    conv.add_argument("--outfile", type=Path, required=True)
    conv.add_argument("--outtype", default="f16")
    conv.add_argument("--pre-tokenizer")
    quant = sub.add_parser("quantize")
    quant.add_argument("--source", type=Path, required=True)
    quant.add_argument("--output", type=Path, required=True)
    quant.add_argument("--quant", choices=sorted(FTYPES), required=True)
    quant.add_argument("--threads", type=int, default=0)
    chk = sub.add_parser("check")
    chk.add_argument("--gguf", type=Path, required=True, action="append", help="a file to check (repeatable)")
    chk.add_argument("--cases", required=True, help='JSON list of {"text": ..., "ids": [...]} to tokenize')
    args = parser.parse_args(argv)
    try:
        if args.step == "convert":
            convert(args.converter, args.model, args.outfile, args.outtype, args.pre_tokenizer)
            outcome: dict[str, Any] = {}
        elif args.step == "quantize":
            outcome = quantize(args.source, args.output, args.quant, args.threads)
        else:
            outcome = check(args.gguf, json.loads(args.cases))
    except SystemExit as exc:  # the converter's own refusals: it has logged why
        code = exc.code if isinstance(exc.code, int) else 1
        if code == 0:
            _write_result(args.result, ok=True)
            return 0
        _write_result(
            args.result, ok=False, error=f"the converter stopped with exit status {code} (see above)", disk_full=False
        )
        return 1
    except BaseException as exc:  # reported to the parent, which decides what it means
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        full = _disk_full(exc) or "No space left on device" in message or "ENOSPC" in message
        _write_result(args.result, ok=False, error=message, disk_full=full)
        return 1
    _write_result(args.result, ok=True, **outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
