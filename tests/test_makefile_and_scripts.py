"""The Makefile and scripts/*.sh: targets, help texts, and the error paths a user meets without Docker.

A stand-in `docker` (written to a temporary folder put first on PATH) answers the few commands the scripts
send, and runs the `sh -c` programs meant for the training container on this machine, with a folder in
place of the checkpoints volume. The scripts' own logic (name checks, listing, copying, SHA-256
verification, exit codes) runs for real.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
VENV_BIN = Path(sys.executable).parent
DOCKER_SCRIPTS = [
    "docker_check.sh",
    "train.sh",
    "download_checkpoint.sh",
    "evaluate.sh",
    "verify_gpu.sh",
    "export_gguf.sh",
]
ALL_SCRIPTS = sorted(p.name for p in SCRIPTS.glob("*.sh"))

# The targets a user is told about (issue: "what the user actually runs").
REQUIRED_TARGETS = [
    "help",
    "dev-setup",
    "test",
    "test-fast",
    "lint",
    "docker-build",
    "fine-tune-local",
    "fine-tune-local-full",
    "fine-tune-local-lora",
    "tensorboard",
    "view",
    "checkpoints",
    "checkpoint-download",
    "evaluate",
    "docker-down",
    "verify-gpu",
    "checkpoint-export",
]

FAKE_DOCKER = r'''#!{python}
"""Stand-in for the docker CLI in tests: answers what scripts/*.sh send, logs every call."""
import json, os, subprocess, sys

args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "CONFIG": os.environ.get("CONFIG"),
                          "BROWSERGYM_SCREENSHOTS": os.environ.get("BROWSERGYM_SCREENSHOTS"),
                          "BROWSERGYM_REPLICAS": os.environ.get("BROWSERGYM_REPLICAS"),
                          "BROWSERGYM_PORT": os.environ.get("BROWSERGYM_PORT")}}) + "\n")
mode = os.environ.get("FAKE_DOCKER_MODE", "ok")

if args[:1] == ["info"]:
    if mode == "no-engine":
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    print("27.3.1")
    sys.exit(0)
if args[:2] == ["compose", "version"]:
    sys.exit(3 if mode == "no-compose" else print("v2.30.0") or 0)
if args[:2] == ["image", "inspect"]:
    sys.exit(0 if args[2] in os.environ.get("FAKE_DOCKER_IMAGES", "").split(",") else 1)
if args[:1] == ["compose"]:
    rest = args[1:]
    while rest and rest[0] in ("-f", "--profile"):
        rest = rest[2:]
    if rest[:1] != ["run"]:
        sys.exit(0)  # build, up, logs, down: recorded above
    rest = rest[1:]
    env = dict(os.environ, CHECKPOINT_DIR=os.environ["FAKE_VOLUME"])
    mounts = {{}}
    while rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag in ("--volume", "-v"):
            host, container = rest.pop(0).split(":")[:2]
            mounts[container] = host
        elif flag in ("--env", "-e"):
            key, _, value = rest.pop(0).partition("=")
            env[key] = mounts.get(value, value)  # a mount point becomes the host folder
        elif flag in ("--user", "-u", "--entrypoint"):
            rest.pop(0)
    service, command = rest[0], rest[1:]
    if command[:2] == ["sh", "-c"]:
        done = subprocess.run(command, env=env)
        if done.returncode == 0 and mode == "corrupt-copy" and "TMP_NAME" in env:
            copied = os.path.join(env["OUT"], env["TMP_NAME"])
            victim = sorted(os.path.join(d, f) for d, _, fs in os.walk(copied) for f in fs)[0]
            with open(victim, "ab") as fh:
                fh.write(b"!")
        sys.exit(done.returncode)
    sys.exit(int(os.environ.get("FAKE_RUN_EXIT", "0")))
print("fake docker: unexpected " + " ".join(args), file=sys.stderr)
sys.exit(99)
'''


def _path_without_docker() -> str:
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "docker").exists()]
    return os.pathsep.join(keep)


class FakeDocker:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        shim = self.bin / "docker"
        shim.write_text(FAKE_DOCKER.format(python=sys.executable))
        shim.chmod(0o755)
        self.log = tmp_path / "docker.log"
        self.log.touch()
        self.volume = tmp_path / "volume"
        self.volume.mkdir()
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{_path_without_docker()}",
            "FAKE_DOCKER_LOG": str(self.log),
            "FAKE_VOLUME": str(self.volume),
            "FAKE_DOCKER_IMAGES": "browser-control/browsergym:local,browser-control/training:local",
        }
        self.env.pop("CONFIG", None)

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def compose_calls(self) -> list[list[str]]:
        calls = []
        for call in self.calls():
            argv = call["argv"]
            if argv[:1] == ["compose"] and argv[1:3] != ["version"]:
                assert argv[1:3] == ["-f", str(REPO / "docker" / "compose.yaml")], argv
                calls.append(argv[3:])
        return calls

    def add_checkpoint(self, name: str, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            path = self.volume / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def run(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return run_script(*args, env={**self.env, **extra_env})


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def docker(tmp_path: Path) -> FakeDocker:
    return FakeDocker(tmp_path)


# -- Makefile -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_help() -> str:
    out = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return re.sub(r"\x1b\[[0-9;]*m", "", out)


def makefile_targets() -> set[str]:
    """Every explicit target of the Makefile, from make's own database."""
    out = subprocess.run(
        ["make", "-pnrR", "-f", "Makefile", ".DEFAULT_GOAL=_nothing_"], cwd=REPO, capture_output=True, text=True
    ).stdout
    targets = set()
    for line in out.splitlines():
        match = re.match(r"^([A-Za-z][A-Za-z0-9_.-]*):(?!=)", line)
        if match:
            targets.add(match.group(1))
    return targets


@pytest.mark.parametrize("target", REQUIRED_TARGETS)
def test_make_help_lists_every_user_target(make_help: str, target: str) -> None:
    assert re.search(rf"^\s+{re.escape(target)}\s+\S", make_help, re.M), make_help


def test_every_target_readme_names_exists() -> None:
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", readme)) | set(re.findall(r"\|\s*`([a-z][a-z0-9-]*)`", readme))
    assert {"fine-tune-local", "test"} <= named
    missing = named - makefile_targets()
    assert not missing, f"README names make targets that do not exist: {sorted(missing)}"


def test_readme_make_targets_table_lists_every_help_target(make_help: str) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Make targets", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\|\s*`(?:make )?([a-z][a-z0-9-]*)", section, re.M))
    helped = set(re.findall(r"^\s+([a-z][a-z0-9-]*)\s", make_help, re.M))
    assert helped == table


def test_makefile_targets_parser_sees_targets() -> None:
    targets = makefile_targets()
    assert set(REQUIRED_TARGETS) <= targets
    assert "no-such-target" not in targets


def _dry_run(*args: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def test_test_fast_leaves_out_slow_and_learning_tests_and_lint_checks_formatting() -> None:
    assert '-m pytest -m "not slow and not learning"' in _dry_run("test-fast")
    # where the suite's time goes, in every CI log; two workers, a file each (module fixtures stay whole)
    assert "-m pytest -n 2 --dist loadfile --durations=25" in _dry_run("test")
    lint = _dry_run("lint")
    assert "ruff check src tests benchmarks" in lint and "ruff format --check src tests benchmarks" in lint


def test_fine_tune_targets_pick_their_configs() -> None:
    assert "scripts/train.sh --config 'lfm2_350m_local.yaml'" in _dry_run("fine-tune-local")
    assert "--config 'miniwob_multitask.yaml'" in _dry_run("fine-tune-local", "CONFIG=miniwob_multitask.yaml")
    assert "--no-build" in _dry_run("fine-tune-local", "NO_BUILD=1")
    scaled = _dry_run("fine-tune-local", "GPUS=2", "ENV_REPLICAS=2")
    assert "--gpus '2'" in scaled and "--env-replicas '2'" in scaled
    assert "--gpus" not in _dry_run("fine-tune-local")
    assert "--config lfm2_350m_local_full.yaml" in _dry_run("fine-tune-local-full")
    assert "--config lfm2_350m_local_lora.yaml" in _dry_run("fine-tune-local-lora")


def test_configs_named_by_the_makefile_exist() -> None:
    configs = REPO / "configs"
    text = (REPO / "Makefile").read_text() + (REPO / "docker" / "compose.yaml").read_text()
    named = set(re.findall(r"([a-z0-9_]+\.yaml)", text)) - {"compose.yaml"}
    assert named
    for name in named:
        assert (configs / name).is_file(), f"configs/{name} is named but missing"
        # GB10 has no flash-attn kernels: every config must leave attention to sdpa.
        assert "flash_attention" not in (configs / name).read_text()


def test_docker_targets_use_the_compose_file_variable() -> None:
    out = _dry_run("docker-build", "docker-down")
    assert out.count("docker compose -f docker/compose.yaml") == 2
    assert "scripts/docker_check.sh" in out
    assert "TENSORBOARD_PORT='7007'" in _dry_run("tensorboard", "TENSORBOARD_PORT=7007")
    assert "http://127.0.0.1:7007/" in _dry_run("tensorboard", "TENSORBOARD_PORT=7007")


def test_view_target_starts_the_viewer_profile_on_the_chosen_port() -> None:
    out = _dry_run("view", "VIEW_PORT=8123")
    assert "VIEW_PORT='8123' docker compose -f docker/compose.yaml --profile view up" in out
    assert "--wait view" in out and "http://127.0.0.1:8123/" in out
    assert "scripts/docker_check.sh" in out
    # the stack's shutdown takes the viewer down too
    assert "--profile view down" in _dry_run("docker-down")


def test_checkpoint_and_evaluate_targets_pass_their_variables() -> None:
    assert "download_checkpoint.sh 'ckpt-a' --force" in _dry_run("checkpoint-download", "NAME=ckpt-a", "FORCE=1")
    out = _dry_run("evaluate", "NAME=ckpt-a", "SUITE=smoke", "EPISODES=3")
    assert "evaluate.sh 'ckpt-a' --suite 'smoke' --episodes '3'" in out
    assert "download_checkpoint.sh --list" in _dry_run("checkpoints")


def test_make_docker_build_without_docker_fails_clearly(docker: FakeDocker) -> None:
    env = {**docker.env, "FAKE_DOCKER_MODE": "no-engine"}
    result = subprocess.run(
        ["make", "--no-print-directory", "docker-build"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Docker engine is not reachable" in result.stderr
    assert docker.compose_calls() == []


# -- scripts: style and help --------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_script_is_strict_and_shellcheck_clean(script: str) -> None:
    text = (SCRIPTS / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    result = subprocess.run(
        [str(VENV_BIN / "shellcheck"), "-x", str(SCRIPTS / script)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_reports_a_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    result = subprocess.run([str(VENV_BIN / "shellcheck"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "SC2086" in result.stdout


@pytest.mark.parametrize("script", [s for s in ALL_SCRIPTS if s != "dev_setup.sh"])
def test_script_help_needs_no_docker(script: str) -> None:
    result = run_script(f"scripts/{script}", "--help", env={**os.environ, "PATH": _path_without_docker()})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: scripts/" + script)


@pytest.mark.parametrize("script", [s for s in DOCKER_SCRIPTS if s != "docker_check.sh"])
def test_script_rejects_an_unknown_option(script: str, docker: FakeDocker) -> None:
    result = docker.run(f"scripts/{script}", "--bogus")
    assert result.returncode != 0
    assert "unknown" in result.stderr and "--bogus" in result.stderr
    assert docker.compose_calls() == []


# -- scripts: without Docker --------------------------------------------------------------------------------


def _docker_args(script: str) -> list[str]:
    return {"download_checkpoint.sh": ["ckpt-a"], "evaluate.sh": ["ckpt-a"], "export_gguf.sh": ["ckpt-a"]}.get(
        script, []
    )


@pytest.mark.parametrize("script", DOCKER_SCRIPTS)
def test_scripts_say_when_docker_is_not_installed(script: str) -> None:
    env = {**os.environ, "PATH": _path_without_docker()}
    assert shutil.which("docker", path=env["PATH"]) is None
    result = run_script(f"scripts/{script}", *_docker_args(script), env=env)
    assert result.returncode != 0
    assert "docker is not installed" in result.stdout + result.stderr
    assert "https://docs.docker.com/engine/install/" in result.stdout + result.stderr


@pytest.mark.parametrize("script", DOCKER_SCRIPTS)
def test_scripts_say_when_the_engine_is_not_running(script: str, docker: FakeDocker) -> None:
    result = docker.run(f"scripts/{script}", *_docker_args(script), FAKE_DOCKER_MODE="no-engine")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Docker engine is not reachable" in out and "Is the docker daemon running?" in out
    assert "systemctl start docker" in out
    assert docker.compose_calls() == []


def test_real_docker_cli_without_an_engine_gives_the_clear_error() -> None:
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        pytest.skip("no docker CLI on this machine")
    if subprocess.run([docker_cli, "info"], capture_output=True, timeout=60).returncode == 0:
        pytest.skip("a Docker engine is running here; the no-engine path cannot be shown with the real CLI")
    result = run_script("scripts/docker_check.sh")
    assert result.returncode == 1
    assert result.stderr.startswith("error: the Docker engine is not reachable (")


def test_docker_check_says_when_compose_v2_is_missing(docker: FakeDocker) -> None:
    result = docker.run("scripts/docker_check.sh", FAKE_DOCKER_MODE="no-compose")
    assert result.returncode == 1
    assert "Compose v2 plugin is missing" in result.stderr


def test_docker_check_passes_with_a_working_docker(docker: FakeDocker) -> None:
    result = docker.run("scripts/docker_check.sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("docker ok: engine 27.3.1")


# -- train.sh -----------------------------------------------------------------------------------------------


def test_train_refuses_an_unknown_config_with_the_list(docker: FakeDocker) -> None:
    result = docker.run("scripts/train.sh", "--config", "no_such_config.yaml")
    assert result.returncode == 1
    assert "no config 'no_such_config.yaml' in configs/. Available:" in result.stderr
    for config in sorted((REPO / "configs").glob("*.yaml")):
        assert f"  {config.name}\n" in result.stderr
    assert docker.compose_calls() == []


def test_train_refuses_a_path_outside_configs(docker: FakeDocker) -> None:
    result = docker.run("scripts/train.sh", "--config", "../pyproject.toml")
    assert result.returncode == 1 and "no config '../pyproject.toml'" in result.stderr


def _a_config() -> str:
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "configs/ has no YAML files"
    return configs[0].name


def test_train_builds_waits_for_health_runs_and_returns_the_trainers_exit_code(docker: FakeDocker) -> None:
    config = _a_config()
    result = docker.run("scripts/train.sh", "--config", f"configs/{config}", FAKE_RUN_EXIT="3")
    assert result.returncode == 3
    assert "training failed with exit code 3" in result.stderr
    assert docker.compose_calls() == [
        ["build", "browsergym", "training"],
        ["up", "--detach", "--wait", "--wait-timeout", "300", "browsergym"],
        ["run", "--rm", "training"],
    ]
    run = next(c for c in docker.calls() if "run" in c["argv"])
    assert run["CONFIG"] == config


def test_train_on_gpus_against_replicas_passes_the_count_and_every_replicas_address(docker: FakeDocker) -> None:
    config = _a_config()
    result = docker.run(
        "scripts/train.sh", "--config", config, "--gpus", "2", "--env-replicas", "3", BROWSERGYM_PORT="9000"
    )
    assert result.returncode == 0, result.stderr
    up = next(c for c in docker.calls() if c["argv"][3:4] == ["up"])
    assert (up["BROWSERGYM_REPLICAS"], up["BROWSERGYM_PORT"]) == ("3", "9000-9002")
    run = next(c for c in docker.calls() if c["argv"][3:4] == ["run"])
    assert run["BROWSERGYM_REPLICAS"] == "3"  # compose run starts the dependencies: same count
    assert run["argv"][3:] == [
        "run",
        "--rm",
        "-e",
        "NUM_PROCESSES=2",
        "-e",
        "BROWSERGYM_URL=" + ",".join(f"http://browser-control-browsergym-{i}:8000" for i in (1, 2, 3)),
        "training",
    ]
    for bad in (["--gpus", "0"], ["--env-replicas", "two"], ["--gpus"]):
        refused = docker.run("scripts/train.sh", "--config", config, *bad)
        assert refused.returncode == 1 and bad[0] in refused.stderr


def test_train_no_build_uses_existing_images_and_succeeds(docker: FakeDocker) -> None:
    config = _a_config()
    result = docker.run("scripts/train.sh", "--config", config, "--no-build")
    assert result.returncode == 0, result.stderr
    assert "training finished" in result.stderr
    assert ["build", "browsergym", "training"] not in docker.compose_calls()


def test_train_no_build_without_images_says_so(docker: FakeDocker) -> None:
    config = _a_config()
    result = docker.run("scripts/train.sh", "--config", config, "--no-build", FAKE_DOCKER_IMAGES="")
    assert result.returncode == 1
    assert "image browser-control/browsergym:local is missing" in result.stderr


# -- download_checkpoint.sh ---------------------------------------------------------------------------------

CKPT_FILES = {
    "model.safetensors": os.urandom(4096),
    "config.json": b'{"model_type": "lfm2"}',
    "tokenizer/tokenizer.json": b"{}",
}


def test_list_shows_names_sizes_and_dates_and_skips_unfinished(docker: FakeDocker) -> None:
    docker.add_checkpoint("ckpt-b", CKPT_FILES)
    docker.add_checkpoint("ckpt-a", {"config.json": b"{}"})
    docker.add_checkpoint(".tmp-ckpt-c", {"config.json": b"{}"})  # still being written
    docker.add_checkpoint("runs", {"ckpt-b/checkpoint-5/trainer_state.json": b"{}"})  # the trainer's own
    result = docker.run("scripts/download_checkpoint.sh", "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "MODIFIED", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == ["ckpt-a", "ckpt-b"]
    assert re.search(r"^ckpt-b\s+\d+(\.\d)?[KM]iB\s+\d{4}-\d\d-\d\d \d\d:\d\d$", lines[2]), lines[2]


def test_listing_skips_the_folder_the_trainer_keeps_its_runs_in() -> None:
    from browser_control.training.checkpoints import RUNS_SUBDIR, TMP_PREFIX

    helper = (SCRIPTS / "docker_check.sh").read_text()
    assert f"! -name {RUNS_SUBDIR} " in helper
    assert TMP_PREFIX.startswith(".") and '! -name ".*"' in helper


def test_list_with_an_empty_volume(docker: FakeDocker) -> None:
    result = docker.run("scripts/download_checkpoint.sh", "--list")
    assert result.returncode == 0
    assert "no checkpoints yet" in result.stdout


@pytest.mark.parametrize(
    "args", [["download_checkpoint.sh", "--list"], ["download_checkpoint.sh", "ckpt-a"], ["evaluate.sh", "ckpt-a"]]
)
def test_checkpoint_commands_without_a_training_image_explain(docker: FakeDocker, args: list[str]) -> None:
    result = docker.run(f"scripts/{args[0]}", *args[1:], FAKE_DOCKER_IMAGES="")
    assert result.returncode == 1
    assert result.stderr == (
        "error: the training image browser-control/training:local is not built, so no checkpoint can exist "
        "yet: run 'make fine-tune-local' (or 'make docker-build') first.\n"
    )


@pytest.mark.parametrize("name", ["", "ckpt-z", "../etc", ".tmp-ckpt-c"])
def test_download_refuses_a_missing_or_unknown_name_with_the_list(
    docker: FakeDocker, tmp_path: Path, name: str
) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    docker.add_checkpoint("ckpt-b", CKPT_FILES)
    docker.add_checkpoint(".tmp-ckpt-c", CKPT_FILES)
    dest = tmp_path / "out"
    result = docker.run("scripts/download_checkpoint.sh", name, "--dest", str(dest))
    assert result.returncode == 1
    assert result.stderr.endswith("Available:\n  ckpt-a\n  ckpt-b\n"), result.stderr
    assert not dest.exists() or not any(dest.iterdir())


def test_make_checkpoint_download_without_name_lists_the_names(docker: FakeDocker) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    result = subprocess.run(
        ["make", "--no-print-directory", "checkpoint-download"],
        cwd=REPO,
        env=docker.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "name a checkpoint (NAME=... for make). Available:\n  ckpt-a\n" in result.stderr


def test_download_with_no_checkpoints_says_to_train_first(docker: FakeDocker) -> None:
    result = docker.run("scripts/download_checkpoint.sh", "ckpt-a")
    assert result.returncode == 1
    assert "no checkpoints in the volume yet" in result.stderr


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_download_copies_verifies_and_keeps_a_manifest(docker: FakeDocker, tmp_path: Path) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    dest = tmp_path / "out"
    result = docker.run("scripts/download_checkpoint.sh", "ckpt-a", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    assert "3 files, SHA-256 verified" in result.stdout
    assert _sha256_tree(dest / "ckpt-a") == _sha256_tree(docker.volume / "ckpt-a")
    manifest = (dest / "ckpt-a.sha256").read_text().splitlines()
    assert len(manifest) == 3 and all(re.fullmatch(r"[0-9a-f]{64}  \./\S+", line) for line in manifest)
    assert sorted(p.name for p in dest.iterdir()) == ["ckpt-a", "ckpt-a.sha256"]  # no temp left
    check = subprocess.run(["sha256sum", "-c", "../ckpt-a.sha256"], cwd=dest / "ckpt-a", capture_output=True)
    assert check.returncode == 0
    (copy,) = [c for c in docker.compose_calls() if "--volume" in c]
    assert copy[:4] == ["run", "--rm", "--no-deps", "-T"] and f"{dest}:/out" in copy


def test_download_refuses_to_overwrite_without_force(docker: FakeDocker, tmp_path: Path) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    dest = tmp_path / "out"
    (dest / "ckpt-a").mkdir(parents=True)
    (dest / "ckpt-a" / "mine.txt").write_text("keep")
    result = docker.run("scripts/download_checkpoint.sh", "ckpt-a", "--dest", str(dest))
    assert result.returncode == 1 and "already exists" in result.stderr and "--force" in result.stderr
    assert (dest / "ckpt-a" / "mine.txt").read_text() == "keep"
    result = docker.run("scripts/download_checkpoint.sh", "ckpt-a", "--dest", str(dest), "--force")
    assert result.returncode == 0, result.stderr
    assert _sha256_tree(dest / "ckpt-a") == _sha256_tree(docker.volume / "ckpt-a")


def test_a_corrupted_copy_is_detected_and_not_kept(docker: FakeDocker, tmp_path: Path) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    dest = tmp_path / "out"
    result = docker.run(
        "scripts/download_checkpoint.sh", "ckpt-a", "--dest", str(dest), FAKE_DOCKER_MODE="corrupt-copy"
    )
    assert result.returncode == 1
    assert "differs from the volume (SHA-256 mismatch" in result.stderr
    assert list(dest.iterdir()) == []


def test_download_takes_one_name(docker: FakeDocker) -> None:
    result = docker.run("scripts/download_checkpoint.sh", "ckpt-a", "ckpt-b")
    assert result.returncode == 1 and "one checkpoint at a time" in result.stderr


# -- evaluate.sh --------------------------------------------------------------------------------------------


def test_evaluate_refuses_an_unknown_name_with_the_list(docker: FakeDocker) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    result = docker.run("scripts/evaluate.sh", "ckpt-q")
    assert result.returncode == 1
    assert result.stderr.endswith("unknown checkpoint 'ckpt-q'. Available:\n  ckpt-a\n")
    assert not any(c[:1] == ["up"] for c in docker.compose_calls())


def test_evaluate_runs_against_the_service_and_writes_beside_the_checkpoint(docker: FakeDocker) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    result = docker.run("scripts/evaluate.sh", "ckpt-a", "--suite", "smoke", "--episodes", "4")
    assert result.returncode == 0, result.stderr
    calls = docker.compose_calls()
    assert ["up", "--detach", "--wait", "--wait-timeout", "300", "browsergym"] in calls
    assert calls[-1] == [
        "run",
        "--rm",
        "training",
        "browser-control",
        "evaluate",
        "--model",
        "/model_checkpoints/ckpt-a",
        "--suite",
        "smoke",
        "--episodes",
        "4",
        "--output",
        "/model_checkpoints/ckpt-a/eval",
    ]


def test_evaluate_with_screenshots_starts_the_service_with_them_and_asks_for_them(docker: FakeDocker) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    result = docker.run("scripts/evaluate.sh", "ckpt-a", "--screenshots")
    assert result.returncode == 0, result.stderr
    up = [c for c in docker.calls() if c["argv"][-1:] == ["browsergym"] and "up" in c["argv"]]
    assert up and up[0]["BROWSERGYM_SCREENSHOTS"] == "1"
    assert docker.compose_calls()[-1][-3:] == ["--screenshots", "--output", "/model_checkpoints/ckpt-a/eval"]
    assert "--screenshots" in _dry_run("evaluate", "NAME=ckpt-a", "SCREENSHOTS=1")
    assert "--screenshots" not in _dry_run("evaluate", "NAME=ckpt-a")


def test_evaluate_passes_the_evaluators_exit_code(docker: FakeDocker) -> None:
    docker.add_checkpoint("ckpt-a", CKPT_FILES)
    result = docker.run("scripts/evaluate.sh", "ckpt-a", FAKE_RUN_EXIT="2")
    assert result.returncode == 2
    assert "evaluation failed with exit code 2" in result.stderr


def test_evaluate_checks_episodes(docker: FakeDocker) -> None:
    result = docker.run("scripts/evaluate.sh", "ckpt-a", "--episodes", "0")
    assert result.returncode == 1 and "--episodes needs a positive whole number" in result.stderr


# -- verify_gpu.sh ------------------------------------------------------------------------------------------

FAKE_NVIDIA_SMI = textwrap.dedent("""\
    #!/usr/bin/env bash
    case "$*" in
      *driver_version*) echo "{driver}" ;;
      *compute_cap*) printf '%s\\n' {gpus} ;;
      *) echo "| NVIDIA-SMI {driver}    Driver Version: {driver}    CUDA Version: {cuda}     |" ;;
    esac
""")


def _fake_nvidia_smi(docker: FakeDocker, driver: str, cuda: str, gpus: list[str]) -> None:
    smi = docker.bin / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI.format(driver=driver, cuda=cuda, gpus=" ".join(f"'{g}'" for g in gpus)))
    smi.chmod(0o755)


def test_verify_gpu_reports_each_check(docker: FakeDocker) -> None:
    _fake_nvidia_smi(docker, "580.95.05", "13.0", ["0, NVIDIA GB10, [N/A], 12.1"])
    result = docker.run("scripts/verify_gpu.sh", "--min-free-gb", "0", FAKE_DOCKER_IMAGES="")
    lines = result.stdout.splitlines()
    assert lines[0] == "ok    driver     580.95.05"
    assert lines[1] == "ok    cuda       13.0"
    assert lines[2].startswith("ok    gpu 0      NVIDIA GB10, unified memory, compute capability 12.1 (GB10")
    assert lines[3].startswith("ok    docker     engine 27.3.1")
    # The fake docker prints no GPU list, so the toolkit check must fail, naming what to install.
    assert lines[4].startswith("FAIL  container  no GPU visible in ubuntu:24.04 with --gpus all")
    assert "NVIDIA Container Toolkit" in lines[4]
    assert lines[5].startswith("ok    disk ")
    assert result.returncode == 1
    assert "1 check(s) failed." in result.stderr


def test_verify_gpu_fails_an_old_driver_and_gpu(docker: FakeDocker) -> None:
    _fake_nvidia_smi(docker, "535.104.05", "12.2", ["0, Tesla V100-SXM2-32GB, 32768 MiB, 7.0"])
    result = docker.run("scripts/verify_gpu.sh", "--min-free-gb", "999999")
    out = result.stdout
    assert result.returncode == 1
    assert "FAIL  driver     535.104.05 is older than 580" in out
    assert "FAIL  cuda       the driver supports CUDA 12.2" in out
    assert "FAIL  gpu 0      Tesla V100-SXM2-32GB has compute capability 7.0" in out
    assert "FAIL  disk" in out


def test_verify_gpu_without_a_driver(docker: FakeDocker) -> None:
    env = {**docker.env, "PATH": f"{docker.bin}{os.pathsep}{_path_without_docker()}"}
    if shutil.which("nvidia-smi", path=env["PATH"]):
        pytest.skip("this machine has nvidia-smi")
    result = run_script("scripts/verify_gpu.sh", env=env)
    assert result.returncode == 1
    assert "FAIL  driver     nvidia-smi not found" in result.stdout


def test_verify_gpu_checks_its_argument() -> None:
    result = run_script("scripts/verify_gpu.sh", "--min-free-gb", "lots")
    assert result.returncode == 1 and "--min-free-gb needs a whole number" in result.stderr


# -- benchmarks' GPU-machine scripts ------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["gpu_stage.sh", "gpu_learning_run.sh", "gpu_bid_probes.sh"])
def test_benchmark_script_is_strict_and_shellcheck_clean(script: str) -> None:
    path = REPO / "benchmarks" / script
    assert path.read_text().startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in path.read_text()
    result = subprocess.run([str(VENV_BIN / "shellcheck"), "-x", str(path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_learning_run_brings_back_results_and_checkpoints_without_optimizer_state(tmp_path: Path) -> None:
    run = tmp_path / "there" / "lc"
    step = run / "checkpoints" / "runs" / "grpo-1" / "checkpoint-50"
    step.mkdir(parents=True)
    weights = os.urandom(20 * 2**20)  # over one 15 MB piece: the checkpoints come back in two
    (step / "model.safetensors").write_bytes(weights)
    (step / "optimizer.pt").write_bytes(b"optimizer state stays behind")
    (run / "training.json").write_text('{"grpo_checkpoint": "checkpoints/grpo-1"}')
    (run / "run.log").write_text("step 50 of 300\n")
    out = tmp_path / "out"
    out.mkdir()
    script = str(REPO / "benchmarks" / "gpu_learning_run.sh")
    env = {**os.environ, "LEARNING_RUN_DIR": str(run), "OUT": str(out)}

    polled = subprocess.run(["bash", script, "poll"], env=env, capture_output=True, text=True, timeout=120)
    assert polled.returncode == 0, polled.stderr
    assert "step 50 of 300" in polled.stdout
    pieces = sorted(out.glob("ckpt.tgz.*"))
    assert [p.name for p in pieces] == ["ckpt.tgz.00", "ckpt.tgz.01"]
    assert all(p.stat().st_size <= 16 * 2**20 for p in [*pieces, out / "results.tgz"])

    here = tmp_path / "here"
    unpacked = subprocess.run(
        ["bash", script, "unpack", str(here), str(out / "results.tgz"), *map(str, pieces)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unpacked.returncode == 0, unpacked.stderr
    back = here / "lc" / "checkpoints" / "runs" / "grpo-1" / "checkpoint-50"
    assert (back / "model.safetensors").read_bytes() == weights
    assert not (back / "optimizer.pt").exists()
    assert (here / "lc" / "training.json").read_text() == (run / "training.json").read_text()

    no_out = subprocess.run(
        ["bash", script, "poll"], env={**env, "OUT": ""}, capture_output=True, text=True, timeout=120
    )
    assert no_out.returncode != 0 and "OUT must name the folder" in no_out.stderr


@pytest.mark.parametrize(("tar_status", "poll_ok"), [(1, True), (2, False)])
def test_gpu_learning_run_poll_takes_a_log_that_grew_while_read_but_not_a_failed_archive(
    tmp_path: Path, tar_status: int, poll_ok: bool
) -> None:
    # GNU tar exits 1 when a file changed while it was read (a running run's log always does), with the
    # archive written; a poll must bring that back. Exit 2 is a real failure and must stop the poll.
    real_tar = shutil.which("tar")
    assert real_tar
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tar").write_text(f'#!/bin/sh\n"{real_tar}" "$@" || exit $?\nexit {tar_status}\n')
    (bin_dir / "tar").chmod(0o755)
    run = tmp_path / "lc"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.log").write_text("step 120 of 300\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "LEARNING_RUN_DIR": str(run), "OUT": str(out), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    polled = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_learning_run.sh"), "poll"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (polled.returncode == 0) is poll_ok, polled.stdout + polled.stderr
    if poll_ok:
        listed = subprocess.run(["tar", "tzf", str(out / "results.tgz")], capture_output=True, text=True, check=True)
        assert "lc/run.log" in listed.stdout.split()
        assert (out / "ckpt.tgz.00").exists()


def test_gpu_learning_run_start_outlives_its_call_and_records_the_exit_status(tmp_path: Path) -> None:
    run = tmp_path / "lc"
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "LEARNING_RUN_DIR": str(run), "OUT": str(out)}
    script = str(REPO / "benchmarks" / "gpu_learning_run.sh")
    started = subprocess.run(
        ["bash", script, "start", "0", "--", "--no-such-option"], env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    assert (run / "command.txt").read_text().startswith(f"python3 benchmarks/learning_curve.py --out {run} ")
    deadline = time.monotonic() + 120
    while not (run / "rc").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run / "rc").read_text().strip() == "2"  # argparse refused the option, and the status was kept
    assert "unrecognized arguments: --no-such-option" in (run / "run.log").read_text()
    usage = subprocess.run(
        ["bash", script, "start", "soon", "--", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_gpu_bid_probes_runs_every_grid_line_and_counts_the_failures(tmp_path: Path) -> None:
    benchmarks = tmp_path / "benchmarks"
    benchmarks.mkdir()
    for script in ("gpu_bid_probes.sh", "gpu_wheels.sh"):
        shutil.copy(REPO / "benchmarks" / script, benchmarks)
    # a stand-in probe: prints its arguments as a JSON line, fails when asked to
    (benchmarks / "bid_probe.py").write_text(
        "import json, sys\nprint(json.dumps(sys.argv[1:]))\nsys.exit(3 if '--fail' in sys.argv else 0)\n"
    )
    (tmp_path / ".stage" / "probe" / "wheels").mkdir(parents=True)
    (tmp_path / ".stage" / "probe" / "demos.jsonl.gz").write_bytes(gzip.compress(b'{"task_name": "t"}\n'))
    grid = tmp_path / "grid.txt"
    grid.write_text("# a comment\n\nfirst --mode reinforce --lr 1e-4\nsecond --fail\n")
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "BID_PROBES_DIR": str(work)}
    result = subprocess.run(
        ["bash", str(benchmarks / "gpu_bid_probes.sh"), "run", str(grid), "30"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "1 of 2 probes failed" in result.stdout, result.stdout + result.stderr
    args = json.loads((work / "lines" / "first.jsonl").read_text())
    assert args[args.index("--demos") + 1] == str(work / "demos.jsonl")
    assert (work / "demos.jsonl").read_text() == '{"task_name": "t"}\n'  # unpacked from the staged archive
    assert args[args.index("--device") + 1] == "cuda" and args[args.index("--deadline-s") + 1] == "30"
    assert args[-4:] == ["--mode", "reinforce", "--lr", "1e-4"]
    listed = subprocess.run(["tar", "tzf", str(out / "probes.tgz")], capture_output=True, text=True, check=True)
    assert {"lines/first.jsonl", "lines/second.jsonl", "lines/second.err"} <= set(listed.stdout.split())
    for bad in ([], [str(grid), "1.5"], [str(tmp_path / "none.txt"), "30"]):
        usage = subprocess.run(["bash", str(benchmarks / "gpu_bid_probes.sh"), "run", *bad], env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert usage.returncode != 0 and ("usage:" in usage.stderr or "no such grid file" in usage.stderr)
