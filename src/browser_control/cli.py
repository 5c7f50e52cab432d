"""`browser-control` command line: one sub-command per job, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from browser_control.arg_types import ENV_VALUE_MARK

# Each module defines add_arguments(parser) and run(args) -> exit code; the key is the command's name. Modules are
# imported lazily by name so `browser-control serve-env` never imports torch and `train` never imports
# Playwright.
COMMAND_MODULES = {
    "serve-env": "browser_control.env_service.cli",
    "evaluate": "browser_control.evaluation.cli",
    "checkpoints": "browser_control.training.checkpoints_cli",
    "train": "browser_control.training.cli",
    "demos": "browser_control.sft.demos_cli",
    "sft": "browser_control.sft.cli",
    "view": "browser_control.viewer.cli",
    "demo": "browser_control.demo",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when there is one: "(default: None)" or "(default: False)" says nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A bad environment value is not a usage mistake: report it in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        if ENV_VALUE_MARK in message:
            self.exit(2, f"{self.prog}: error: {message}\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="browser-control",
        description="Teach small language models to operate a web browser (MiniWoB++) with GRPO.",
        epilog="Run 'browser-control COMMAND --help' for the options of a command.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        command = sub.add_parser(
            name,
            help=doc.splitlines()[0] if doc else None,
            description=doc,
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
