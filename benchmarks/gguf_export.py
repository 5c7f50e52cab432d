"""How long `checkpoints export --format gguf` takes and how big its files are, and how fast llama.cpp runs them.

Builds a model locally (no hub): ``--shape tiny`` is the test suite's tiny LFM2 (32 wide, 2 layers);
``--shape 350m`` is LiquidAI/LFM2-350M's architecture with random weights, saved in bf16 like the
published checkpoint (its vocabulary is the small local tokenizer's, padded to 65,536 ids). Then runs the
real export (llama.cpp's converter to F16, llama_model_quantize for the others, the load-and-tokenize
check of every file) and reports each step's wall time and each file's size. With ``--generate N`` it
also loads every file with llama-cpp-python and times the prompt (the MiniWoB click-test prompt in the
training chat format, with every tool) and N greedy tokens. Model building is not timed.

    python benchmarks/gguf_export.py --shape tiny
    python benchmarks/gguf_export.py --shape 350m --quant all --generate 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from browser_control.export import gguf
from browser_control.models.tiny import LFM2_350M_SHAPE


def build(path: Path, shape: str) -> Path:
    import torch
    from transformers import Lfm2ForCausalLM

    from browser_control.models.tiny import build_tiny_lfm2, build_tokenizer, lfm2_config

    torch.set_num_threads(os.cpu_count() or 1)
    if shape == "tiny":
        return build_tiny_lfm2(path, hidden_size=32, intermediate_size=64)
    tokenizer = build_tokenizer(path)
    config = lfm2_config(
        **LFM2_350M_SHAPE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Lfm2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(path))
    return path


def generate(path: Path, model_dir: Path, tokens: int, threads: int) -> dict[str, float]:
    import llama_cpp
    from transformers import AutoTokenizer

    from browser_control.rollout.environment import bound_tools
    from browser_control.rollout.prompts import task_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    messages = task_prompt("click-test")
    messages[-1]["content"] += (
        "Goal: Click the button.\nStep 0 of 3. Last action error: none\nPage:\n[13] button 'Click Me!'"
    )
    text = tokenizer.apply_chat_template(messages, tools=bound_tools(), add_generation_prompt=True, tokenize=False)
    started = time.perf_counter()
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_threads=threads, n_batch=512, verbose=False)
    loaded = time.perf_counter()
    ids = llama.tokenize(text.encode(), add_bos=False, special=True)
    llama.eval(ids)
    prompted = time.perf_counter()
    made = 0
    for token in llama.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=False):
        made += 1
        if made >= tokens or token == llama.token_eos():
            break
    done = time.perf_counter()
    llama.close()
    return {
        "load_s": loaded - started,
        "prompt_tokens": len(ids),
        "prompt_tok_per_s": len(ids) / (prompted - loaded),
        "generated": made,
        "gen_tok_per_s": made / (done - prompted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", "350m"), default="tiny")
    parser.add_argument("--quant", default="all", help="as for checkpoints export --quant [all]")
    parser.add_argument("--generate", type=int, default=0, metavar="N", help="also time N greedy tokens per file")
    parser.add_argument("--threads", type=int, default=0, help="quantizer and generation threads [all cores]")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build and export [a temporary dir]")
    args = parser.parse_args()

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gguf-bench-", dir=args.workdir) as tmp:
        model_dir = build(Path(tmp) / f"lfm2-{args.shape}", args.shape)
        checkpoint_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        marks: list[tuple[float, str]] = []

        def log(line: str) -> None:
            marks.append((time.perf_counter(), line))
            print(line, flush=True)

        started = time.perf_counter()
        files = gguf.export_gguf(
            model_dir, Path(tmp) / "gguf", model_dir.name, gguf.parse_quants(args.quant), threads=args.threads, log=log
        )
        total = time.perf_counter() - started
        steps = [
            (line, (marks[i + 1][0] if i + 1 < len(marks) else started + total) - t)
            for i, (t, line) in enumerate(marks)
            if line.startswith("[")
        ]
        result = {
            "shape": args.shape,
            "parameters": gguf.parameter_count(model_dir),
            "checkpoint_bytes": checkpoint_bytes,
            "total_s": round(total, 1),
            "steps_s": {line: round(s, 1) for line, s in steps},
            "files": {f.quant: f.size_bytes for f in files},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        }
        if args.generate:
            threads = args.threads or os.cpu_count() or 1
            result["generation"] = {f.quant: generate(f.path, model_dir, args.generate, threads) for f in files}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
