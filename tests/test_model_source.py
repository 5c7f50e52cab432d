"""Finding a model before loading it: a mistyped local path fails at once, naming what exists, and a Hub
that cannot be reached is probed once instead of being retried for minutes.

"The network is unreachable" is played by a local TCP server that accepts connections and never answers
(HF_ENDPOINT points at it): it counts every connection, so a test can assert that the Hub was not
contacted, or contacted once, instead of timing anything.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_control.models.source import ModelNotFound, locate_model, looks_local
from tests.conftest import free_port, subprocess_env

CHECKPOINT = "lfm2-350m-click-test-20260101-120000"


class SilentHub:
    """Accepts TCP connections and never answers, like a network that drops every reply."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._held.append(conn)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for conn in self._held:
                conn.close()


@pytest.fixture()
def silent_hub() -> Iterator[SilentHub]:
    hub = SilentHub()
    yield hub
    hub.close()


def _workdir(tmp_path: Path) -> Path:
    """A project directory with checkpoints/ holding one full model and one LoRA adapter."""
    full = tmp_path / "checkpoints" / CHECKPOINT
    full.mkdir(parents=True)
    (full / "config.json").write_text("{}")
    lora = tmp_path / "checkpoints" / "lfm2-350m-lora-20260102-080000" / "adapter"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "LiquidAI/LFM2-350M"}))
    (tmp_path / "checkpoints" / ".tmp-half-written").mkdir()
    return tmp_path


def _env(tmp_path: Path, hub: SilentHub, **extra: str) -> dict[str, str]:
    env = subprocess_env(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
        CHECKPOINT_DIR="checkpoints",
        OMP_NUM_THREADS="1",
        **extra,
    )
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        if name not in extra:
            env.pop(name, None)
    return env


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The limit only keeps a regression from hanging the suite; nothing here is timed.
    return subprocess.run(
        [sys.executable, "-m", "browser_control", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_mistyped_local_path_names_itself_and_the_models_that_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from browser_control.evaluation.model_lookup import resolve_model
    from browser_control.evaluation.runner import EvaluationError

    monkeypatch.chdir(_workdir(tmp_path))
    monkeypatch.delenv("CHECKPOINT_DIR", raising=False)
    typo = "checkpoints/lfm2-350m-click-test-2026010-120000"
    assert looks_local(typo) and looks_local("./model") and looks_local("a/b/c")
    assert not looks_local("LiquidAI/LFM2-350M")
    with pytest.raises(ModelNotFound) as info:
        locate_model(typo)
    message = str(info.value)
    assert f"'{typo}' does not exist" in message
    assert f"did you mean checkpoints/{CHECKPOINT}?" in message
    assert CHECKPOINT in message and "lfm2-350m-lora-20260102-080000" in message
    assert ".tmp-half-written" not in message
    # evaluate's own resolution refuses it too, instead of handing it to the Hub as an id
    with pytest.raises(EvaluationError, match="does not exist"):
        resolve_model(typo)
    assert locate_model(f"checkpoints/{CHECKPOINT}").kind == "local"


@pytest.mark.timeout(900)
def test_evaluate_with_a_mistyped_checkpoint_fails_at_once_without_the_hub(
    tmp_path: Path, silent_hub: SilentHub
) -> None:
    work = _workdir(tmp_path)
    dead_service = f"http://127.0.0.1:{free_port()}"
    result = _cli(
        ["evaluate", "--model", "checkpoints/lfm2-350m-click-tset-20260101-120000", "--browsergym-url", dead_service],
        work,
        _env(tmp_path, silent_hub),
    )
    assert result.returncode == 2, result.stderr
    assert "model path 'checkpoints/lfm2-350m-click-tset-20260101-120000' does not exist" in result.stderr
    assert f"did you mean checkpoints/{CHECKPOINT}?" in result.stderr
    assert "Traceback" not in result.stderr
    assert silent_hub.connections == 0


@pytest.mark.timeout(900)
def test_train_dry_run_checks_the_model_before_waiting_for_the_service(tmp_path: Path, silent_hub: SilentHub) -> None:
    work = _workdir(tmp_path)
    config = work / "run.yaml"
    # A dead service with a long wait: the model check must answer first, or the run would sit there.
    config.write_text(
        f"tasks: [click-test]\nbrowsergym_url: http://127.0.0.1:{free_port()}\nenv_wait_s: 3\n"
        "model_name: checkpoints/sft-run\n"
    )
    result = _cli(["train", "--config", str(config), "--dry-run"], work, _env(tmp_path, silent_hub))
    assert result.returncode == 2, result.stderr
    assert "model_name: model path 'checkpoints/sft-run' does not exist" in result.stderr
    assert CHECKPOINT in result.stderr and "environment service" not in result.stderr
    assert silent_hub.connections == 0

    # A Hub id that is not cached, with the Hub unreachable: one probe, then a clear answer.
    result = _cli(
        ["train", "--config", str(config), "--dry-run", "--set", "model_name=acme/NotCached-1B"],
        work,
        _env(tmp_path, silent_hub),
    )
    assert result.returncode == 2, result.stderr
    assert "'acme/NotCached-1B' is not a local directory, not in the Hugging Face cache" in result.stderr
    assert f"the Hub at {silent_hub.url} cannot be reached" in result.stderr
    assert silent_hub.connections == 1

    # With HF_HUB_OFFLINE=1 the Hub is not even probed.
    result = _cli(
        ["train", "--config", str(config), "--dry-run", "--set", "model_name=acme/NotCached-1B"],
        work,
        _env(tmp_path, silent_hub, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 2 and "with HF_HUB_OFFLINE=1, must be in the Hugging Face cache" in result.stderr
    assert silent_hub.connections == 1


def _cache_a_tokenizer(hf_home: Path, repo_id: str) -> None:
    """A Hugging Face cache entry (refs/main -> snapshot) holding a small tokenizer and a config."""
    from tokenizers import Tokenizer, models

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    Tokenizer(models.WordLevel({"<unk>": 0, "click": 1}, unk_token="<unk>")).save(str(snapshot / "tokenizer.json"))
    (snapshot / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>"})
    )
    (snapshot / "config.json").write_text(json.dumps({"model_type": "lfm2"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_cached_model_loads_offline_at_once_when_the_hub_cannot_be_reached(
    tmp_path: Path, silent_hub: SilentHub
) -> None:
    repo_id = "browser-control-tests/Cached-Tokenizer"
    _cache_a_tokenizer(tmp_path / "hf_home", repo_id)
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from browser_control.training.grpo import load_tokenizer\n"
        f"tokenizer = load_tokenizer({repo_id!r})\n"
        "print('loaded', tokenizer.convert_tokens_to_ids('click'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_env(tmp_path, silent_hub),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded 1" in result.stdout
    assert f"the Hub at {silent_hub.url} cannot be reached" in result.stderr
    assert "loading from the Hugging Face cache only (HF_HUB_OFFLINE=1 for this run)" in result.stderr
    assert f"loading model {repo_id} (Hugging Face cache" in result.stderr
    # One probe; without it, huggingface_hub would connect again and again, waiting on each.
    assert silent_hub.connections == 1
