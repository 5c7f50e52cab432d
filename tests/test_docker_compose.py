"""docker/: the compose file, the Dockerfiles and uv.lock, checked without a Docker engine.

The compose file is validated against the Compose Specification schema and cross-checked against the code:
the health-check path is a route of the service, the volumes are mounted where the code looks, every
environment variable is one something reads, and every command the images run exists. The containers'
commands are run as plain processes.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import ServiceProcess, free_port, subprocess_env

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
COMPOSE_PATH = REPO / "docker" / "compose.yaml"
# Shipped with the tests (tests/data/README.md says where it comes from), so no checkout skips the check.
SCHEMA_PATH = REPO / "tests" / "data" / "compose-spec.json"
DOCKERFILES = {name: REPO / "docker" / name / "Dockerfile" for name in ("browsergym", "training", "tensorboard")}
VENV_BIN = Path(sys.executable).parent

# The sub-commands the containers and scripts may run: a name outside this set is a typo.
KNOWN_COMMANDS = {"serve-env", "train", "evaluate", "checkpoints", "view"}
# Services that run another service's image with another command.
SHARED_IMAGE = {"view": "browsergym"}
# Where the code expects each volume inside the training container (docs/docker.md).
TRAINING_MOUNTS = {"hf-cache": "/hf_cache", "checkpoints": "/model_checkpoints", "logs": "/logs"}
MOUNT_ENV = {"/hf_cache": "HF_HOME", "/model_checkpoints": "CHECKPOINT_DIR", "/logs": "LOGGING_DIR"}


# -- helpers ------------------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_PATH.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with VAR unset, the form this file uses."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path}: a line continuation runs off the end of the file"
    return instructions


def instruction(path: Path, keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions(path) if kw == keyword]


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction(path, "ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"{path}: use ENV KEY=VALUE, not the legacy 'ENV KEY VALUE' form ({args!r})"
            env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    """A CMD/HEALTHCHECK CMD in exec (JSON) form: shell form would skip signals and be run by /bin/sh -c."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def image_cmd(name: str) -> list[str]:
    cmds = instruction(DOCKERFILES[name], "CMD")
    assert len(cmds) == 1, f"{name}: expected one CMD, found {cmds}"
    return exec_form(cmds[0])


def healthcheck_cmd(name: str) -> list[str]:
    checks = instruction(DOCKERFILES[name], "HEALTHCHECK")
    assert len(checks) == 1, f"{name}: expected one HEALTHCHECK"
    _, _, cmd = checks[0].partition(" CMD ")
    return exec_form(cmd)


def registered_commands() -> set[str]:
    from browser_control.cli import COMMAND_MODULES

    return set(COMMAND_MODULES)


def used_commands() -> dict[str, list[str]]:
    """browser-control sub-commands named by the Dockerfiles and the scripts, with where."""
    used: dict[str, list[str]] = {}
    sources = [*DOCKERFILES.values(), *sorted((REPO / "scripts").glob("*.sh")), REPO / "Makefile"]
    for path in sources:
        for match in re.finditer(r"browser-control\s+([a-z][a-z-]*)", path.read_text()):
            used.setdefault(match.group(1), []).append(str(path.relative_to(REPO)))
    return used


# -- the compose file ---------------------------------------------------------------------------------------


def _schema_validator():
    from jsonschema import Draft7Validator

    return Draft7Validator(json.loads(SCHEMA_PATH.read_text()))


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    errors = sorted(_schema_validator().iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_validation_catches_a_broken_compose_file(compose: dict[str, Any]) -> None:
    # Guards against a validator that passes anything (wrong draft, empty schema).
    broken = copy.deepcopy(compose)
    broken["services"]["training"]["depends_on"]["browsergym"]["condition"] = "service_ready"
    broken["services"]["browsergym"]["unknown_key"] = True
    errors = list(_schema_validator().iter_errors(broken))
    assert len(errors) >= 2


def test_project_name_is_fixed_so_volume_names_do_not_depend_on_the_folder(compose: dict[str, Any]) -> None:
    assert compose["name"] == "browser-control"


def test_images_named_in_compose_match_the_scripts(compose: dict[str, Any]) -> None:
    helper = (REPO / "scripts" / "docker_check.sh").read_text()
    for service, variable in (("browsergym", "BC_BROWSERGYM_IMAGE"), ("training", "BC_TRAINING_IMAGE")):
        assert f'{variable}="{compose["services"][service]["image"]}"' in helper


def test_builds_point_at_existing_dockerfiles(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service["build"]
        context = (COMPOSE_PATH.parent / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert dockerfile.resolve() == DOCKERFILES[SHARED_IMAGE.get(name, name)].resolve()
    for name, owner in SHARED_IMAGE.items():
        assert compose["services"][name]["image"] == compose["services"][owner]["image"]


def test_healthcheck_paths_are_routes_of_the_service(compose: dict[str, Any]) -> None:
    from browser_control.env_service.app import ServiceSettings, create_app

    app = create_app(ServiceSettings())
    get_routes = {route.path for route in app.routes if "GET" in getattr(route, "methods", set())}
    probes = {
        "compose": " ".join(compose["services"]["browsergym"]["healthcheck"]["test"]),
        "Dockerfile": " ".join(healthcheck_cmd("browsergym")),
    }
    for where, probe in probes.items():
        paths = re.findall(r"'(/[A-Za-z0-9_/-]*)'", probe)
        assert paths, f"no URL path in the {where} health check: {probe}"
        assert set(paths) <= get_routes, f"{where} probes {paths}; GET routes are {sorted(get_routes)}"


def test_browsergym_service_settings_for_chromium(compose: dict[str, Any]) -> None:
    svc = compose["services"]["browsergym"]
    assert svc["init"] is True
    assert svc.get("ipc") == "host" or svc.get("shm_size") in {"1gb", "1g", "2gb", "2g"}
    health = svc["healthcheck"]
    assert health["test"][0] == "CMD"
    # /health waits up to 10 s for every browser worker; the first Chromium start needs longer still.
    assert int(health["timeout"].rstrip("s")) > 10
    assert int(health["start_period"].rstrip("s")) >= 60


def test_published_ports_are_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {
        name: [interpolate(p) for p in service.get("ports", [])] for name, service in compose["services"].items()
    }
    assert published["browsergym"] == ["127.0.0.1:8000:8000"]
    assert published["tensorboard"] == ["127.0.0.1:6006:6006"]
    assert published["view"] == ["127.0.0.1:8050:8050"]
    assert published.get("training", []) == []


def test_training_service_waits_for_a_healthy_environment_and_gets_the_gpus(compose: dict[str, Any]) -> None:
    svc = compose["services"]["training"]
    assert svc["depends_on"]["browsergym"]["condition"] == "service_healthy"
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert svc["ipc"] == "host"
    assert svc["ulimits"] == {"memlock": -1, "stack": 67108864}


def test_tensorboard_is_optional_and_reads_the_logs_volume(compose: dict[str, Any]) -> None:
    svc = compose["services"]["tensorboard"]
    assert svc["profiles"] == ["tensorboard"]
    assert "logs:/logs:ro" in svc["volumes"]
    cmd = image_cmd("tensorboard")
    assert cmd[cmd.index("--logdir") + 1] == "/logs"
    assert "--bind_all" in cmd


def test_viewer_is_optional_reads_both_volumes_read_only_and_probes_its_own_route(compose: dict[str, Any]) -> None:
    from browser_control.cli import build_parser
    from browser_control.viewer.app import Viewer
    from browser_control.viewer.store import Store

    svc = compose["services"]["view"]
    assert svc["profiles"] == ["view"]
    assert sorted(svc["volumes"]) == ["checkpoints:/model_checkpoints:ro", "logs:/logs:ro"]
    cmd = svc["command"]
    assert cmd[:2] == ["browser-control", "view"]
    args = build_parser().parse_args(cmd[1:])
    # The directories the viewer reads are where the training container writes.
    assert args.logs == [TRAINING_MOUNTS["logs"]] and args.checkpoints == TRAINING_MOUNTS["checkpoints"]
    assert args.host == "0.0.0.0"  # inside the container; published on loopback only
    published = interpolate(svc["ports"][0])
    assert published.endswith(f":{args.port}")
    probe = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{args.port}/" in probe
    paths = re.findall(r":\d+(/[A-Za-z0-9_/-]*)'", probe)
    assert paths and set(paths) <= set(Viewer(Store([])).routes), probe


def test_named_volumes_are_declared_and_mounted_where_the_code_expects(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert declared == used, f"declared but never mounted: {declared - used}"

    training = compose["services"]["training"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in training["volumes"]}
    env = training["environment"]
    for volume, target in TRAINING_MOUNTS.items():
        assert mounts[volume] == target
        # The variable that tells the code where to look must name the mount point.
        assert env[MOUNT_ENV[target]] == target


def test_training_image_defaults_match_compose(compose: dict[str, Any]) -> None:
    env = compose["services"]["training"]["environment"]
    image_env = dockerfile_env(DOCKERFILES["training"])
    for key in ("BROWSERGYM_URL", "CHECKPOINT_DIR", "LOGGING_DIR", "HF_HOME"):
        assert image_env[key] == env[key], key
    assert image_env["CONFIG"] == interpolate(env["CONFIG"]) == "lfm2_350m_local.yaml"
    assert env["BROWSERGYM_URL"] == "http://browsergym:8000"


def test_hf_token_and_offline_flag_are_passed_through_only_when_set(compose: dict[str, Any]) -> None:
    env = compose["services"]["training"]["environment"]
    # A key without a value makes compose copy the caller's variable if it is set, and nothing otherwise.
    assert env["HF_TOKEN"] is None
    assert env["HF_HUB_OFFLINE"] is None


def _readers(name: str) -> list[str]:
    """What reads the environment variable `name`: our code, the Hugging Face hub library, or a CMD."""
    literal = re.compile(rf"""["']{re.escape(name)}["']""")
    found = [str(p.relative_to(REPO)) for p in SRC.rglob("*.py") if literal.search(p.read_text())]
    import huggingface_hub

    hub = Path(huggingface_hub.__file__).parent
    if any(literal.search(p.read_text()) for p in hub.rglob("*.py")):
        found.append("huggingface_hub")
    for dockerfile in DOCKERFILES.values():
        if any(f"${{{name}}}" in cmd or f"${name}" in cmd for cmd in instruction(dockerfile, "CMD")):
            found.append(str(dockerfile.relative_to(REPO)) + " CMD")
    return found


@pytest.mark.parametrize(
    ("service", "variable"),
    [(s, v) for s, svc in load_compose()["services"].items() for v in svc.get("environment", {})],
)
def test_every_environment_variable_in_compose_is_read_by_something(service: str, variable: str) -> None:
    assert _readers(variable), f"{service}: nothing reads {variable} (a typo, or code that was renamed)"


def test_reader_search_does_not_accept_an_unused_name() -> None:
    assert _readers("BROWSER_CONTROL_NO_SUCH_VARIABLE") == []


def test_compose_environment_values_are_accepted_by_serve_env(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: interpolate(str(v)) for k, v in compose["services"]["browsergym"]["environment"].items()}
    env.update({k: v for k, v in dockerfile_env(DOCKERFILES["browsergym"]).items() if k in {"HOST", "PORT"}})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CHROMIUM_EXECUTABLE", raising=False)  # as in the image, which sets none
    from browser_control.cli import build_parser

    args = build_parser().parse_args(["serve-env"])
    assert args.host == "0.0.0.0"
    assert args.port == 8000
    # BROWSERGYM_SCREENSHOTS unset: off, it costs time on every step. The environment's text is converted when
    # serve-env runs (a bad value then fails that command alone), with the same function as here.
    from browser_control.arg_types import boolean

    assert boolean(args.screenshots) is False
    assert args.max_sessions == int(env["MAX_SESSIONS"])
    assert args.workers == int(env["BROWSER_WORKERS"])
    assert args.chromium_executable is None  # Playwright's own browser in the image


# -- the Dockerfiles ----------------------------------------------------------------------------------------


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pinned(requirements: list[str], name: str) -> str:
    for text in requirements:
        req = Requirement(text)
        if req.name == name:
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name} must be pinned exactly, got {req}"
            return spec.version
    raise AssertionError(f"{name} is not in {requirements}")


def test_playwright_image_tag_equals_the_pinned_playwright() -> None:
    playwright = _pinned(_pyproject()["project"]["optional-dependencies"]["env"], "playwright")
    images = [args.split()[0] for args in instruction(DOCKERFILES["browsergym"], "FROM")]
    assert f"mcr.microsoft.com/playwright/python:v{playwright}-jammy" in images


def test_vllm_image_is_inside_trls_supported_vllm_window() -> None:
    arg = next(a for a in instruction(DOCKERFILES["training"], "ARG") if a.startswith("VLLM_IMAGE="))
    image = arg.partition("=")[2]
    match = re.fullmatch(r"vllm/vllm-openai:v(\d+\.\d+\.\d+)", image)
    assert match, f"pin an official vllm/vllm-openai release tag, got {image}"
    window = next(
        Requirement(r).specifier
        for r in importlib.metadata.requires("trl") or []
        if Requirement(r).name == "vllm" and "vllm" in str(Requirement(r).marker)
    )
    assert Version(match.group(1)) in window, f"vllm {match.group(1)} is outside trl's window {window}"
    # CUDA 13 (GB10) images start at v0.20.
    assert Version(match.group(1)) >= Version("0.20")
    assert instruction(DOCKERFILES["training"], "FROM") == ["${VLLM_IMAGE}"]


def test_training_image_freezes_torch_and_vllm_for_every_install() -> None:
    runs = instruction(DOCKERFILES["training"], "RUN")
    assert instruction(DOCKERFILES["training"], "ENTRYPOINT") == ["[]"]
    freeze = next(r for r in runs if "> /etc/pip-constraints.txt" in r)
    assert "^(torch|" in freeze and "|vllm|" in freeze
    installs = [r for r in runs if "pip install" in r]
    assert installs
    for run in installs:
        assert "-c /etc/pip-constraints.txt" in run, run
    # An arch list is set: no GPU is visible at build time, so nothing may detect one.
    arch = dockerfile_env(DOCKERFILES["training"])["TORCH_CUDA_ARCH_LIST"].split()
    assert {"8.0", "9.0"} <= set(arch) and any(a.startswith("12.0") for a in arch)


def test_training_requirements_extraction_matches_pyproject() -> None:
    # The image installs exactly what this command prints; run it here on the real pyproject.toml.
    run = next(r for r in instruction(DOCKERFILES["training"], "RUN") if "import tomllib" in r)
    code = re.search(r"python3 -c '([^']*)'", run)
    assert code
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    project = _pyproject()["project"]
    assert out == project["dependencies"] + project["optional-dependencies"]["train"]
    assert any(line.startswith("trl==") for line in out)


def test_tensorboard_pin_satisfies_the_train_extra() -> None:
    run = instruction(DOCKERFILES["tensorboard"], "RUN")[0]
    pinned = re.search(r"tensorboard==(\S+)", run)
    assert pinned
    spec = next(
        Requirement(r).specifier
        for r in _pyproject()["project"]["optional-dependencies"]["train"]
        if Requirement(r).name == "tensorboard"
    )
    assert Version(pinned.group(1)) in spec


def test_browsergym_image_runs_as_non_root_and_binds_all_interfaces() -> None:
    assert instruction(DOCKERFILES["browsergym"], "USER") == ["pwuser"]
    env = dockerfile_env(DOCKERFILES["browsergym"])
    assert env["HOST"] == "0.0.0.0"
    assert "CHROMIUM_EXECUTABLE" not in env
    assert image_cmd("browsergym") == ["browser-control", "serve-env"]


def test_training_cmd_trains_with_the_configured_file() -> None:
    cmd = image_cmd("training")
    assert cmd[:2] == ["/bin/sh", "-c"]
    assert shlex.split(cmd[2]) == ["exec", "browser-control", "train", "--config", "configs/${CONFIG}"]


def test_every_browser_control_command_used_is_a_known_one() -> None:
    used = used_commands()
    assert {"serve-env", "train", "evaluate"} <= set(used)
    unknown = {cmd: where for cmd, where in used.items() if cmd not in KNOWN_COMMANDS}
    assert not unknown, f"unknown browser-control sub-commands: {unknown}"


@pytest.mark.parametrize("command", sorted(used_commands()))
def test_commands_used_by_images_and_scripts_are_registered(command: str) -> None:
    assert command in registered_commands(), f"'browser-control {command}' is used but not registered in cli.py"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name: str) -> None:
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(DOCKERFILES[name])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_dockerignore_files_keep_the_context_small() -> None:
    for name, dockerfile in DOCKERFILES.items():
        ignore = dockerfile.with_name("Dockerfile.dockerignore").read_text().splitlines()
        assert "*" in ignore, f"{name}: the ignore file should start from nothing and allow what is needed"
        copied = [a.split()[0] for a in instruction(dockerfile, "COPY") if not a.startswith("--from")]
        for source in copied:
            assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, (name, source)


# -- uv.lock ------------------------------------------------------------------------------------------------


def _normalized(name: str, extras: list[str] | tuple[str, ...], specifier: str, marker: str | None) -> tuple:
    return (name.lower().replace("_", "-"), tuple(sorted(extras)), str(SpecifierSet(specifier)), marker or "")


def test_uv_lock_matches_pyproject() -> None:
    """The check `uv sync --locked` makes first, without needing the index."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    project = _pyproject()
    package = next(p for p in lock["package"] if p["name"] == "browser-control")
    locked = {
        _normalized(d["name"], d.get("extras", []), d.get("specifier", ""), d.get("marker"))
        for d in package["metadata"]["requires-dist"]
    }
    wanted = set()
    for extra, requirements in [
        (None, project["project"]["dependencies"]),
        *project["project"]["optional-dependencies"].items(),
    ]:
        for text in requirements:
            req = Requirement(text)
            wanted.add(
                _normalized(req.name, sorted(req.extras), str(req.specifier), f"extra == '{extra}'" if extra else None)
            )
    assert locked == wanted, "uv.lock is stale: run `uv lock` (or `.venv/bin/uv lock`)"
    constraints = {c["name"]: c["specifier"] for c in lock["manifest"]["constraints"]}
    assert constraints == {
        Requirement(c).name: str(Requirement(c).specifier) for c in project["tool"]["uv"]["constraint-dependencies"]
    }
    versions = {p["name"]: p.get("version") for p in lock["package"]}
    assert versions["torch"] == "2.13.0"
    assert versions["playwright"] == _pinned(project["project"]["optional-dependencies"]["env"], "playwright")


# -- the containers' commands as plain processes ------------------------------------------------------------


def test_browsergym_command_serves_health_and_its_probe_tells_up_from_down(
    compose: dict[str, Any], chromium: str | None, tmp_path: Path
) -> None:
    env = {k: interpolate(str(v)) for k, v in compose["services"]["browsergym"]["environment"].items()}
    # Loopback instead of the image's 0.0.0.0, and one worker: the check is that the command starts and
    # answers, not how many browsers it runs.
    env.update(HOST="127.0.0.1", BROWSER_WORKERS="1")
    service = ServiceProcess(log_path=tmp_path / "serve-env.log", chromium=chromium, env=env)
    probe = compose["services"]["browsergym"]["healthcheck"]["test"][1:]
    assert probe[0] == "python"
    probe = [sys.executable, *probe[1:]]
    probe_env = subprocess_env(PORT=str(service.port))
    try:
        service.wait_healthy(timeout_s=90)
        up = subprocess.run(probe, env=probe_env, capture_output=True, text=True, timeout=30)
        assert up.returncode == 0, up.stderr
        assert httpx.get(service.url + "/health", timeout=15).json()["status"] == "ok"
    finally:
        service.stop()
    down = subprocess.run(probe, env=probe_env, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0


def test_training_command_answers_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "browser_control", "train", "--help"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_tensorboard_command_serves_the_logs_folder(tmp_path: Path) -> None:
    cmd = image_cmd("tensorboard")
    assert cmd[0] == "tensorboard"
    port = free_port()
    args = [a for a in cmd[1:] if a != "--bind_all"]  # loopback only in tests
    args[args.index("--logdir") + 1] = str(tmp_path)
    args[args.index("--port") + 1] = str(port)
    log = open(tmp_path / "tensorboard.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(VENV_BIN / "tensorboard"), *args, "--host", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=subprocess_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "tensorboard did not answer within 60 s"
                time.sleep(0.3)
        assert response.status_code == 200
        assert "tensorboard" in response.text.lower()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)
        log.close()
