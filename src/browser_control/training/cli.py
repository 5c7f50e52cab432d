"""Train a model on MiniWoB++ with GRPO (TRL), one YAML config per run.

The model plays MiniWoB episodes through the environment service: each browser action is a tool call,
the reward is task success, TensorBoard shows progress, and the finished model is written to
{checkpoint_dir}/{model}-{task or mix}-{YYYYMMDD-HHMMSS}/.

Examples:
  browser-control train --config configs/lfm2_350m_local.yaml
  browser-control train --config configs/lfm2_350m_local.yaml --dry-run
  browser-control train --config configs/miniwob_multitask.yaml --set max_steps=20 --set use_vllm=false
  browser-control train --config configs/lfm2_350m_local_full.yaml --set resume_from_checkpoint=true

Environment variables (they override the config file; --set overrides them):
  BROWSERGYM_URL   environment service address  -> browsergym_url (several replicas: comma-separated)
  CHECKPOINT_DIR   checkpoint directory         -> checkpoint_dir
  LOGGING_DIR      TensorBoard directory        -> logging_dir
  NUM_PROCESSES    processes (GPUs)             -> num_processes (>1: accelerate launch, data parallel)
  HF_HOME          Hugging Face model cache (with HF_HUB_OFFLINE=1 a cached model loads with no network)

Exit status: 0 done, 2 bad configuration or setup, 3 environment service unavailable, 4 checkpoint not
found or not written (disk full), 130/143 stopped by SIGINT/SIGTERM after saving a checkpoint to resume
from, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_SETUP = 2
EXIT_ENV_UNAVAILABLE = 3
EXIT_CHECKPOINT = 4


def _config_keys_help() -> str:
    # Importing the config costs only pydantic + yaml: torch and trl stay unimported for --help.
    from browser_control.training.config import TrainConfig, config_keys_help

    return config_keys_help(TrainConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _config_keys_help()
    parser.add_argument("--config", required=True, metavar="YAML", help="training config, e.g. configs/NAME.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (YAML value, e.g. tasks=[click-test]); repeatable",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, check the environment service, print the plan and exit",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit (no service needed)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if level != "debug":
        # One line per environment request would bury the training log.
        logging.getLogger("httpx").setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    code = _run(args)
    from browser_control.training.launch import record_rank_status

    record_rank_status(code)  # a rank of a multi-process run: its launcher passes the meaningful code on
    return code


def _run(args: argparse.Namespace) -> int:
    from browser_control.client import EnvServiceUnavailable
    from browser_control.training.checkpoints import CheckpointError
    from browser_control.training.config import ConfigError, load_config
    from browser_control.training.plan import TrainingSetupError, plan_run
    from browser_control.training.preflight import locate_model_or_fail, preflight
    from browser_control.training.trainer import TrainingStopped

    _configure_logging(args.log_level)
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        plan = plan_run(config)
        source = locate_model_or_fail(config.model_name)  # seconds, before waiting on the service
        preflight(plan)
        from browser_control.training.launch import launch, launch_command, launch_environment, needs_launch

        command = (
            launch_command(config, args.config, args.overrides, plan.name, args.log_level)
            if needs_launch(config)
            else None
        )
        if args.dry_run:
            print(plan.describe())
            print(f"model found      {source.describe()}")
            if command:
                print(f"processes        {config.num_processes} ({config.distributed}): {' '.join(command)}")
            print("dry run: configuration valid, model found and environment service ready; nothing was trained")
            return 0
        if command:  # the ranks train; this process waits for them and passes their exit status on
            return launch(command, launch_environment())
        from browser_control.training.trainer import train

        final = train(config, plan=plan)
    except ConfigError as exc:
        print(f"error: invalid config\n{exc}", file=sys.stderr)
        return EXIT_SETUP
    except (TrainingSetupError, CheckpointError) as exc:
        code = EXIT_CHECKPOINT if isinstance(exc, CheckpointError) else EXIT_SETUP
        print(f"error: {exc}", file=sys.stderr)
        return code
    except TrainingStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 128 + exc.signal_number
    except EnvServiceUnavailable as exc:
        print(f"error: environment service unavailable, training stopped: {exc}", file=sys.stderr)
        return EXIT_ENV_UNAVAILABLE
    if os.environ.get("RANK", "0") in ("", "0"):  # one line for a multi-process run too: rank 0 wrote it
        print(f"checkpoint: {final}")
    return 0
