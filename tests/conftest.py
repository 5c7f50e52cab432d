"""Shared fixtures: a real environment service (the container's entry command, run as a plain process)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

# One launcher for tests and benchmarks; re-exported here for the tests that import them from conftest.
from browser_control.env_service.process import ServiceProcess as ServiceProcess
from browser_control.env_service.process import child_env
from browser_control.env_service.process import free_port as free_port

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# The environment of every child process a test starts: this checkout's src/ first on PYTHONPATH.
subprocess_env = child_env


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module (the scripts are no package). It is registered in sys.modules first:
    dataclasses look their module up while a class is built."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/lib/chromium/chromium",
)


def find_chromium() -> str | None:
    """A Chromium binary for tests: CHROMIUM_EXECUTABLE, else Debian's, else None (Playwright's own)."""
    configured = os.environ.get("CHROMIUM_EXECUTABLE")
    if configured:
        return configured
    for candidate in _CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _playwright_has_own_chromium() -> bool:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        return Path(pw.chromium.executable_path).exists()


def require_chromium() -> str | None:
    chromium = find_chromium()
    if chromium is None and not _playwright_has_own_chromium():
        reason = "no Chromium: apt-get install chromium-headless-shell, or set CHROMIUM_EXECUTABLE"
        if os.environ.get("BROWSER_CONTROL_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium


@pytest.fixture(scope="session")
def chromium() -> str | None:
    return require_chromium()


@pytest.fixture(scope="session")
def env_service(chromium: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One shared service for the whole run; tests that need their own start a ServiceProcess."""
    service = ServiceProcess(
        "--max-sessions",
        "64",
        "--workers",
        "4",
        log_path=tmp_path_factory.mktemp("env_service") / "serve-env.log",
        chromium=chromium,
    )
    try:
        service.wait_healthy()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def env_url(env_service: ServiceProcess) -> str:
    return env_service.url


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test: on two shared cores, torch's threads and Chromium fight each other
    and a training step gets many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CLICK_REPLY = "<|tool_call_start|>[click(bid='13')]<|tool_call_end|>"


def tiny_training_config(**overrides: object) -> dict[str, object]:
    """A training config for the tiny test models: two task instances x two rollouts, seconds per step on CPU."""
    config: dict[str, object] = {
        "tasks": ["click-test"],
        "max_steps": 2,
        "max_episode_steps": 2,
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-4,
        "max_completion_length": 256,
        "bf16": False,
        "gradient_checkpointing": False,
        "save_steps": 1,
        "env_retries": 1,
        "env_wait_s": 30,
        "seed": 3,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def clicking_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LFM2 (local tokenizer, LFM2 special tokens) that answers every turn with click(bid='13').

    A random model almost never calls a tool; this one gives multi-turn episodes of a known shape on
    click-test (solved at once) and click-checkboxes (never solved by that click).
    """
    import torch

    from browser_control.models.tiny import build_tiny_lfm2, imprint_reply
    from browser_control.rollout.environment import bound_tools
    from browser_control.rollout.prompts import task_prompt

    torch.set_num_threads(1)  # torch's threads and Chromium otherwise fight over two cores
    path = build_tiny_lfm2(tmp_path_factory.mktemp("clicker"), hidden_size=32, intermediate_size=64)
    call = {"type": "function", "function": {"name": "click", "arguments": {"bid": "13"}}}
    prompts = []
    for task, page, result in (
        ("click-test", "[13] button 'Click Me!'", "The episode is over after 1 actions: the task is solved."),
        ("click-checkboxes", "[18] checkbox 'x'", "Goal: Select x.\nPage:\n[18] checkbox 'x'"),
    ):
        first = task_prompt(task)
        first[-1] = {
            **first[-1],
            "content": first[-1]["content"] + f"Goal: do it.\nStep 0 of 3. Last action error: none\nPage:\n{page}",
        }
        prompts += [
            first,
            [
                *first,
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "click", "content": result},
            ],
        ]
    return imprint_reply(path, CLICK_REPLY, prompts, tools=bound_tools(), steps=150)


def which(name: str) -> str | None:
    return shutil.which(name) or (
        str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else None
    )


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's -o size=, e.g. 64k) at `mount`, so filling it affects nothing else.

    Root only: skipped where mounting is not allowed.
    """
    mount.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
