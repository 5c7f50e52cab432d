"""Warm-start a model on scripted demonstrations (supervised fine-tuning with TRL's SFTTrainer).

The model learns the assistant turns of the conversations written by `browser-control demos` (tool
calls and the final stop); the system prompt, tool list, task and observations are context only
(labels -100). The result is written atomically to {checkpoint_dir}/{model}-sft-{task or mix}-{stamp}/
like a training checkpoint, and can be given as model_name to `browser-control train` (SFT, then GRPO).

Examples:
  browser-control demos --tasks click-test,focus-text --episodes 50 --output data/demos.jsonl
  browser-control sft --config configs/sft_learning.yaml
  browser-control sft --config configs/sft_learning.yaml --set demos=[data/demos.jsonl] --set max_steps=30
  browser-control train --config configs/learning_grpo.yaml --set model_name=checkpoints/<sft run>

Environment variables (they override the config file; --set overrides them):
  CHECKPOINT_DIR   checkpoint directory         -> checkpoint_dir
  LOGGING_DIR      TensorBoard directory        -> logging_dir

Exit status: 0 done, 2 bad configuration, demonstrations or model, 4 checkpoint not written, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_SETUP = 2
EXIT_CHECKPOINT = 4


def _config_keys_help() -> str:
    # Importing the config costs only pydantic + yaml: torch and trl stay unimported for --help.
    from browser_control.sft.config import SftConfig
    from browser_control.training.config import config_keys_help

    return config_keys_help(SftConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _config_keys_help()
    parser.add_argument("--config", required=True, metavar="YAML", help="SFT config, e.g. configs/sft_learning.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (YAML value, e.g. max_steps=20); repeatable",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from browser_control.sft.config import load_sft_config
    from browser_control.sft.demos import DemoError
    from browser_control.sft.trainer import SftSetupError, plan_sft, select_demos
    from browser_control.training.checkpoints import CheckpointError
    from browser_control.training.config import ConfigError

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_sft_config(args.config, args.overrides)
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        plan = plan_sft(config)
        select_demos(config)  # a missing or bad demonstrations file fails before torch is imported
        from browser_control.sft.trainer import train_sft

        final = train_sft(config, plan=plan)
    except ConfigError as exc:
        print(f"error: invalid config\n{exc}", file=sys.stderr)
        return EXIT_SETUP
    except (DemoError, SftSetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT
    print(f"checkpoint: {final}")
    return 0
