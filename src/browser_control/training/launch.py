"""Training on several GPUs: ``num_processes: N`` re-runs ``browser-control train`` under ``accelerate launch``.

The command a user types stays the same. With ``num_processes`` above 1 (``make fine-tune-local GPUS=N``
sets it through ``NUM_PROCESSES``) the first process only plans: it validates the config, fixes the run's
name (every rank must write under the same one, and a date-time name taken by each rank could differ by a
second), checks the environment service or pool once, then starts N ranks with accelerate (data parallel,
the way TRL runs multi-GPU GRPO) and exits with their status. Each rank is the ordinary trainer: it plays
its own rollouts against the environment pool; rank 0 alone writes checkpoints, TensorBoard, recordings
and the held-out evaluation. Which ways of sharing the model are safe is decided in training/config.py
(SAFE_DISTRIBUTED); this module only builds and runs the launch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from browser_control.training.config import TrainConfig

log = logging.getLogger(__name__)

# Where each rank leaves its exit status for the launching process: torchrun itself only says that a rank
# failed, while the CLI's codes say how (2 setup, 3 environment service unavailable, 4 checkpoint, ...).
RANK_STATUS_ENV = "BROWSER_CONTROL_RANK_STATUS_DIR"


def record_rank_status(code: int, environ: dict[str, str] | None = None) -> None:
    environ = dict(os.environ if environ is None else environ)
    directory, rank = environ.get(RANK_STATUS_ENV), environ.get("RANK")
    if not directory or rank is None:
        return
    try:
        Path(directory, f"rank-{int(rank)}").write_text(str(int(code)))
    except (OSError, ValueError):
        pass  # the launcher then reports torchrun's own status


def launched_status(directory: Path, launcher_code: int) -> int:
    """The exit status of the run: the first rank's own failure code, else what the launcher returned.

    A rank stopped by a signal (128+N) is usually the launcher ending it after another rank failed, so a
    code below 128 wins over it.
    """
    codes = []
    for path in sorted(directory.glob("rank-*"), key=lambda p: int(p.name.split("-")[1])):
        try:
            codes.append(int(path.read_text()))
        except (OSError, ValueError):
            continue
    failures = [c for c in codes if c != 0]
    own = [c for c in failures if c < 128]
    if own:
        return own[0]
    if failures:
        return failures[0]
    return launcher_code


def in_launched_process(environ: dict[str, str] | None = None) -> bool:
    """True inside a torchrun/accelerate rank: it trains, it does not launch again."""
    environ = dict(os.environ if environ is None else environ)
    return bool(environ.get("WORLD_SIZE") or environ.get("LOCAL_RANK"))


def needs_launch(config: TrainConfig, environ: dict[str, str] | None = None) -> bool:
    return config.num_processes > 1 and not in_launched_process(environ)


def deepspeed_config(config: TrainConfig) -> dict[str, Any] | None:
    """The DeepSpeed config of zero1/zero2 (GRPOConfig ``deepspeed=``), "auto" values filled by transformers."""
    if not config.distributed.startswith("zero"):
        return None
    return {
        "zero_optimization": {"stage": int(config.distributed[-1]), "overlap_comm": True, "contiguous_gradients": True},
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(
    config: TrainConfig,
    config_path: str,
    overrides: list[str],
    run_name: str,
    log_level: str = "info",
    port: int | None = None,
) -> list[str]:
    """``accelerate launch`` of N ranks of ``browser-control train`` with the same config and overrides."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # multi_gpu is accelerate's torchrun launcher; on a machine without CUDA the ranks run on CPU with
        # gloo (ACCELERATE_USE_CPU, set by launch()), which is how the tests prove the wiring.
        "--multi_gpu",
        "--num_processes",
        str(config.num_processes),
        "--num_machines",
        "1",
        # Precision and DeepSpeed come from the config through GRPOConfig (bf16, deepspeed=); the launcher's
        # own defaults would only conflict with them.
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port or _free_port()),
        "-m",
        "browser_control",
        "train",
        "--config",
        config_path,
        *[arg for pair in overrides for arg in ("--set", pair)],
        "--set",
        f"run_name={run_name}",
        "--log-level",
        log_level,
    ]


def launch_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        env.setdefault("ACCELERATE_USE_CPU", "true")  # otherwise the ranks would not form a gloo group
    env.setdefault("OMP_NUM_THREADS", "1")  # N ranks each starting a thread per core only fight for the cores
    return env


def launch(command: list[str], env: dict[str, str]) -> int:
    """Run the ranks; a SIGTERM/SIGINT goes to the ranks themselves, which save a checkpoint and stop.

    The signal is sent to the trainer ranks rather than to the launcher: torchrun answers one by killing its
    ranks after 30 s, which can cut a checkpoint save short.
    """
    log.info("starting %s", " ".join(command))
    status_dir = tempfile.TemporaryDirectory(prefix="browser-control-ranks-")
    env = {**env, RANK_STATUS_ENV: status_dir.name}
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        try:
            import psutil

            ranks = psutil.Process(proc.pid).children()
        except Exception:  # psutil missing or the launcher already gone: signal the launcher itself
            ranks = []
        if ranks and len(received) == 1:
            for rank in ranks:
                try:
                    rank.send_signal(signum)
                except Exception:
                    pass
        else:  # asked twice, or no ranks to reach: stop everything now
            os.killpg(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        returncode = proc.wait()
        status = launched_status(Path(status_dir.name), returncode)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        status_dir.cleanup()
    if received and status in (0, returncode):
        return 128 + received[0]
    return status
