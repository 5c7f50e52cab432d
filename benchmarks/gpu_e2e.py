"""The default path end to end: `browser-control train --config configs/...` against the real environment service.

Everything a user's `make fine-tune-local` runs, as separate processes talking HTTP: `browser-control
serve-env` (real Chromium, real MiniWoB pages) and `browser-control train` with the shipped configs, vLLM
colocated unless a run says otherwise, then `browser-control evaluate --backend vllm` on the checkpoint.

WEIGHTS ARE RANDOM in LiquidAI/LFM2-350M's architecture (no model hub on the GPU machine), with the small
local tokenizer of `models/tiny.py`. So that rewards are neither all 0 nor all 1, the model is first
imprinted to answer click-test with click(bid='13') (right) once for every three click(bid='12') (a wrong
element): a policy that solves about a quarter of its turns, which GRPO can improve. That it does, and that
vLLM generates with the updated weights after every step, shows in each run's reward curve and in TRL's
importance-sampling metrics (vLLM's sampling log-probabilities against the trainer's).

    # on the GPU machine, after benchmarks/gpu_stage.sh (see its header):
    source /tmp/stage/env.sh
    python3 benchmarks/gpu_e2e.py --out "$OUT" --runs debug,debug-lora,debug-transformers
    python3 benchmarks/gpu_e2e.py --out "$OUT" --runs multitask,debug-64 --evaluate
    # a CPU smoke run of this script (tiny model, transformers generate):
    python benchmarks/gpu_e2e.py --out /tmp/e2e --tiny --runs debug-transformers --set max_steps=2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from browser_control.env_service.process import ServiceProcess  # noqa: E402
from browser_control.models.tiny import LFM2_350M_SHAPE, TINY_SHAPE  # noqa: E402

TASK = "click-test"
RIGHT = "<|tool_call_start|>[click(bid='13')]<|tool_call_end|>"
WRONG = "<|tool_call_start|>[click(bid='12')]<|tool_call_end|>"

# name -> (config file, overrides). The debug config is the one `make fine-tune-local` uses.
RUNS: dict[str, tuple[str, list[str]]] = {
    "debug": ("lfm2_350m_local.yaml", ["eval_steps=5", "eval_episodes=8", "eval_tasks=[click-test]"]),
    "debug-transformers": ("lfm2_350m_local.yaml", ["use_vllm=false"]),
    "debug-lora": (
        "lfm2_350m_local_lora.yaml",
        [
            "tasks=[click-test]",
            "max_steps=10",
            "max_episode_steps=3",
            "per_device_train_batch_size=8",
            "max_completion_length=1024",
            "save_steps=5",
            "warmup_steps=0",
        ],
    ),
    "debug-64": ("lfm2_350m_local.yaml", ["per_device_train_batch_size=64", "max_steps=4", "save_steps=100"]),
    "debug-16": ("lfm2_350m_local.yaml", ["per_device_train_batch_size=16", "max_steps=6", "save_steps=100"]),
    # vLLM settings measured against the debug run: sleep mode, a shorter context, the model's own context,
    # a smaller memory share.
    "debug-sleep": ("lfm2_350m_local.yaml", ["vllm_enable_sleep_mode=true", "max_steps=6", "save_steps=100"]),
    "debug-len4k": ("lfm2_350m_local.yaml", ["vllm_max_model_length=4096", "max_steps=6", "save_steps=100"]),
    "debug-len-model": ("lfm2_350m_local.yaml", ["vllm_max_model_length=null", "max_steps=6", "save_steps=100"]),
    "debug-share10": ("lfm2_350m_local.yaml", ["vllm_gpu_memory_utilization=0.1", "max_steps=6", "save_steps=100"]),
    "multitask": ("miniwob_multitask.yaml", ["max_steps=4", "save_steps=100", "warmup_steps=0"]),
}
# Scalars read back from TensorBoard for the table (TRL's names plus ours).
KEYS = (
    "train/step_time",
    "train/time/rollout_s",
    "train/time/env_wait_s",
    "train/time/generation_s",
    "train/time/weight_sync_s",
    "train/gpu/peak_allocated_gib",
    "train/reward",
    "train/reward_std",
    "train/frac_reward_zero_std",
    "train/sampling/sampling_logp_difference/mean",
    "train/sampling/importance_sampling_ratio/mean",
    "train/sampling/importance_sampling_ratio/min",
    "train/sampling/importance_sampling_ratio/max",
    "train/tools/call_frequency",
    "train/completions/mean_length",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        TRL_EXPERIMENTAL_SILENCE="1",
        HF_HUB_OFFLINE="1",
    )
    env.update(extra)
    return env


def build_model(path: Path, url: str, tiny: bool) -> dict:
    """Random LFM2-350M-shaped weights, imprinted on real click-test observations (first and later turns)."""
    from transformers import AutoConfig, Lfm2ForCausalLM

    from browser_control.models.tiny import build_lfm2, imprint_reply
    from browser_control.rollout.environment import BrowserEnvironment, bound_tools
    from browser_control.rollout.prompts import task_prompt

    started = time.perf_counter()
    build_lfm2(path, TINY_SHAPE if tiny else LFM2_350M_SHAPE)
    config = AutoConfig.from_pretrained(path)
    env = BrowserEnvironment(base_url=url, max_episode_steps=3)

    def click(messages: list[dict], bid: str) -> list[dict]:
        call = {"type": "function", "function": {"name": "click", "arguments": {"bid": bid}}}
        return [
            *messages,
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "click", "content": env.click(bid=bid)},
        ]

    prompts, episode_over = [], []
    for seed in range(3):
        messages = task_prompt(TASK)
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + env.reset(TASK, seed)}
        prompts.append(list(messages))
        messages = click(messages, "12")
        prompts.append(messages)
        # Once the tool says the episode is over (solved, or out of actions), the turn ends, as an instruct
        # model's does; a random model would otherwise talk on to the token limit in every finished rollout.
        episode_over.append(click(messages, "13") if seed < 2 else click(click(messages, "12"), "12"))
    env._close()
    replies = [RIGHT, WRONG, WRONG, WRONG]
    settings = dict(tools=bound_tools(), steps=60, learning_rate=3e-3 if tiny else 5e-5, max_rounds=8)
    try:
        imprint_reply(path, replies, prompts, end_turn_prompts=episode_over, **settings)
        ends_turns = True
    except RuntimeError as exc:  # the tiny CPU model may not separate the two kinds of prompt in time
        log(f"imprint with end of turn failed ({exc}); imprinting the replies alone")
        imprint_reply(path, replies, prompts, **settings)
        ends_turns = False
    params = sum(p.numel() for p in Lfm2ForCausalLM(config).parameters())
    return {
        "model": str(path),
        "params_m": round(params / 1e6, 1),
        "ends_turn_after_episode": ends_turns,
        "build_and_imprint_s": round(time.perf_counter() - started, 1),
        "shape": "tiny" if tiny else "LFM2-350M (random weights)",
    }


class GpuMemoryPoller:
    """Peak device memory in use (nvidia-smi), which includes vLLM's reservation; none without a GPU."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self.per_gpu_mib: list[int] = []  # several GPUs (num_processes > 1): each one's peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                used = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.split()
                if used:
                    values = [int(u) for u in used]
                    before = self.per_gpu_mib or [0] * len(values)
                    self.per_gpu_mib = [max(a, b) for a, b in zip(values, before, strict=True)]
                    self.peak_mib = max(self.per_gpu_mib)
            except (OSError, subprocess.SubprocessError, ValueError):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemoryPoller:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def read_scalars(logdir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[float]] = {}
    for events in sorted(logdir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return series


def train(name: str, model: Path, url: str, work: Path, out: Path, extra: list[str]) -> dict:
    config, overrides = RUNS[name]
    logdir = work / "tb" / name
    cmd = [sys.executable, "-m", "browser_control", "train", "--config", str(REPO / "configs" / config)]
    for item in [
        f"model_name={model}",
        f"browsergym_url={url}",
        f"checkpoint_dir={work / 'checkpoints'}",
        f"logging_dir={logdir}",
        f"run_name=e2e-{name}",
        *overrides,
        *extra,
    ]:
        cmd += ["--set", item]
    log(f"{name}: {' '.join(cmd[2:])}")
    started = time.perf_counter()
    with GpuMemoryPoller() as memory, (out / f"train-{name}.log").open("w") as log_file:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, env=_env(), cwd=work)
    wall = time.perf_counter() - started
    (out / f"train-{name}.stdout").write_text(proc.stdout)
    result: dict = {
        "run": name,
        "config": config,
        "overrides": overrides + extra,
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "nvidia_smi_peak_mib": memory.peak_mib,
        "nvidia_smi_peak_mib_per_gpu": memory.per_gpu_mib,
    }
    match = re.search(r"^checkpoint: (.+)$", proc.stdout, re.M)
    result["checkpoint"] = match.group(1) if match else None
    scalars = read_scalars(logdir) if logdir.exists() else {}
    result["series"] = {k: [round(v, 4) for v in scalars[k]] for k in KEYS if k in scalars}
    result["eval"] = {k: [round(v, 4) for v in vs] for k, vs in scalars.items() if k.startswith("eval")}
    steps = scalars.get("train/step_time", [])
    # Step 1 includes vLLM's engine start and the first weight sync: report steps 2.. as the steady state.
    if len(steps) > 1:
        result["s_per_step"] = round(sum(steps[1:]) / len(steps[1:]), 2)
    log(
        f"{name}: exit {proc.returncode}, {wall:.0f} s, s/step {result.get('s_per_step')}, "
        f"reward {result['series'].get('train/reward')}"
    )
    if proc.returncode:
        log((out / f"train-{name}.log").read_text()[-3000:])
    return result


def evaluate(checkpoint: str, base: Path, url: str, out: Path, backend: str, episodes: int) -> dict:
    results = {}
    for label, model in (("base", str(base)), ("trained", checkpoint)):
        target = out / f"eval-{label}"
        cmd = [
            sys.executable,
            "-m",
            "browser_control",
            "evaluate",
            "--model",
            model,
            "--backend",
            backend,
            "--tasks",
            TASK,
            "--episodes",
            str(episodes),
            "--max-episode-steps",
            "3",
            "--temperature",
            "1.0",
            "--browsergym-url",
            url,
            "--output",
            str(target),
            "--quiet",
        ]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        (out / f"eval-{label}.log").write_text(proc.stdout + proc.stderr)
        results[label] = {
            "exit": proc.returncode,
            "wall_s": round(time.perf_counter() - started, 1),
            "stdout_tail": proc.stdout[-1500:],
        }
        log(f"evaluate {label} ({backend}): exit {proc.returncode}\n{proc.stdout[-800:]}{proc.stderr[-1500:]}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="results and logs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/e2e"), help="model, checkpoints, TensorBoard")
    parser.add_argument("--runs", default="debug", help=f"comma-separated, of: {', '.join(RUNS)}")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every run")
    parser.add_argument("--evaluate", action="store_true", help="evaluate the last run's checkpoint and the base")
    parser.add_argument("--eval-backend", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--eval-episodes", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke run of this script)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=16, help="browser worker threads of the service")
    parser.add_argument("--max-sessions", type=int, default=128)
    parser.add_argument("--build-model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_model:
        print(json.dumps(build_model(args.build_model, f"http://127.0.0.1:{args.port}", args.tiny)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    service = ServiceProcess(
        "--workers",
        str(args.workers),
        "--max-sessions",
        str(args.max_sessions),
        "--log-level",
        "warning",
        log_path=args.out / "serve-env.log",
        port=args.port,
        env={"TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"},
    )
    summary: dict = {"machine": _machine()}
    try:
        service.wait_healthy(timeout_s=300)
        model = args.work / ("model-tiny" if args.tiny else "model")
        if not (model / "config.json").exists():
            # In a process of its own, so that its GPU memory is free again before training starts.
            cmd = [
                sys.executable,
                __file__,
                "--out",
                str(args.out),
                "--build-model",
                str(model),
                "--port",
                str(args.port),
                *(["--tiny"] if args.tiny else []),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
            if proc.returncode:
                raise RuntimeError(f"building the model failed: {proc.stderr[-3000:]}")
            summary["model"] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"model: {summary['model']}")
        summary["runs"] = [
            train(name, model, url, args.work, args.out, args.extra) for name in filter(None, args.runs.split(","))
        ]
        last = summary["runs"][-1] if summary["runs"] else None
        if args.evaluate and last and last.get("checkpoint"):
            summary["evaluate"] = evaluate(
                last["checkpoint"], model, url, args.out, args.eval_backend, args.eval_episodes
            )
    finally:
        service.stop(grace_s=30)
        path = args.out / f"e2e-{int(time.time())}.json"
        path.write_text(json.dumps(summary, indent=1))
        log(f"wrote {path}")
    return 0 if all(r["exit"] == 0 for r in summary.get("runs", [])) else 1


def _machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info: dict = {"cpus": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        info["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    for package in ("torch", "vllm", "trl", "transformers", "playwright"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    return info


if __name__ == "__main__":
    raise SystemExit(main())
