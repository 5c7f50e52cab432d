"""GRPO training end to end on CPU: a tiny LFM2, real TRL, the real environment service and Chromium.

The tiny model is imprinted to answer every turn with click(bid='13'), which solves click-test: so
episodes have tool calls, rewards are not all zero, and a broken reward wiring would show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from browser_control.client import EnvServiceUnavailable
from browser_control.rollout.environment import BrowserEnvironment
from browser_control.training.config import TrainConfig
from tests.conftest import ServiceProcess, subprocess_env, tiny_training_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

HUB_ID = "browser-control-tests/Tiny-LFM2"  # served from a local HF cache with HF_HUB_OFFLINE=1
NAME_RE = re.compile(r"^tiny-lfm2-click-test-\d{8}-\d{6}$")


@pytest.fixture(scope="module")
def hf_home(clicking_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding the tiny model under a hub id, with LFM2's ORIGINAL chat template.

    Loading it by id with HF_HUB_OFFLINE=1 is how the container loads a cached LiquidAI/LFM2-350M; the
    original template (which drops tool calls) proves the trainer swaps in lfm2_v2.
    """
    from trl.chat_template_utils import lfm2_chat_template

    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(clicking_model, snapshot)
    (snapshot / "chat_template.jinja").write_text(lfm2_chat_template)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return home


def _config(tmp_path: Path, **overrides: object) -> dict[str, object]:
    data = tiny_training_config(**{"model_name": HUB_ID, **overrides})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return data


def _train_cli(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "browser_control", "train", "--config", str(tmp_path / "train.yaml"), *extra],
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )


def _cli_env(tmp_path: Path, hf_home: Path, url: str) -> dict[str, str]:
    return {
        "BROWSERGYM_URL": url,
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "LOGGING_DIR": str(tmp_path / "logs"),
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _scalars(event_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, list[float]] = {}
    for event_file in sorted(event_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return values


def test_cli_trains_two_steps_logs_metrics_and_writes_a_loadable_checkpoint(
    hf_home: Path, env_url: str, tmp_path: Path
) -> None:
    _config(tmp_path)
    proc = _train_cli(tmp_path, _cli_env(tmp_path, hf_home, env_url))
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-4000:]
    checkpoints = tmp_path / "checkpoints"
    finals = [p for p in checkpoints.iterdir() if p.name != "runs"]
    assert len(finals) == 1 and NAME_RE.match(finals[0].name), finals
    final = finals[0]
    assert f"checkpoint: {final}" in out
    assert "lfm2_v2" in err  # the original LFM2 template was swapped

    # the checkpoint: complete, and loads like a hub model
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "training_config.yaml",
        "metrics.json",
    ):
        assert (final / name).is_file(), name
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import lfm2_v2_chat_template

    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.model_type == "lfm2" and model.config.use_cache
    assert tokenizer.chat_template == lfm2_v2_chat_template
    resolved = TrainConfig.model_validate(yaml.safe_load((final / "training_config.yaml").read_text()))
    assert resolved.checkpoint_dir == str(checkpoints) and resolved.max_steps == 2  # env override recorded
    summary = json.loads((final / "metrics.json").read_text())
    assert summary["global_step"] == 2 and summary["run_name"] == final.name
    assert 0.0 <= summary["recent"]["success/overall"] <= 1.0
    # intermediate checkpoints, with the tokenizer; nothing temporary left
    run_dir = checkpoints / "runs" / final.name
    assert (run_dir / "checkpoint-2" / "trainer_state.json").is_file()
    assert (run_dir / "checkpoint-2" / "tokenizer.json").is_file()
    assert not list(checkpoints.glob(".tmp-*"))

    # TensorBoard: TRL's metrics and ours, one run directory named like the checkpoint
    scalars = _scalars(tmp_path / "logs" / final.name)
    for tag in (
        "train/reward",
        "train/reward_std",
        "train/rewards/BrowserEnvironment/mean",
        "train/entropy",
        "train/frac_reward_zero_std",
        "train/success/overall",
        "train/success/click-test",
        "train/episode/steps",
        "train/episode/invalid_action_rate",
        "train/env/latency_s",
        "train/collapse/low_entropy",
        "train/collapse/saturated_tasks",
        "train/tools/call_frequency",
    ):
        assert len(scalars.get(tag, [])) == 2, (tag, sorted(scalars))
    # the imprinted model clicks the button: tool calls happen and the reward is the task success
    assert max(scalars["train/tools/call_frequency"]) > 0
    assert scalars["train/rewards/BrowserEnvironment/mean"] == scalars["train/success/overall"]
    assert max(scalars["train/success/click-test"]) > 0, "no episode was solved: is the reward wired?"

    # every rollout of a GRPO group replayed the same task instance, and groups differ
    records = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    seen_seeds = []
    for record in records:
        episodes = record["episodes"]
        assert len(episodes) == 4
        groups = [episodes[i : i + 2] for i in range(0, 4, 2)]
        for group in groups:
            assert len({(e["task_name"], e["seed"]) for e in group}) == 1, group
        seen_seeds += [g[0]["seed"] for g in groups]
    assert len(set(seen_seeds)) == len(seen_seeds) == 4 and all(s < 1_000_000_000 for s in seen_seeds)

    # step 1's rollouts were recorded step by step (record_every_steps 10: step 2 is not), and the log points
    # at each trace, so browser-control view lists every rollout and opens these
    from browser_control.recording import EpisodeTrace

    traced = [[e["trace"] for e in r["episodes"] if "trace" in e] for r in records]
    assert [len(t) for t in traced] == [4, 0]
    traces = [EpisodeTrace.model_validate_json((run_dir / t).read_text()) for t in traced[0]]
    assert all(t.source == "training" and t.training_step == 1 and t.task == "click-test" for t in traces)
    assert any(s.action == "click('13')" and s.output and "click" in s.output for t in traces for s in t.steps)


def test_a_killed_service_stops_training_clearly_and_the_run_resumes(
    hf_home: Path, chromium: str | None, env_url: str, tmp_path: Path
) -> None:
    service = ServiceProcess("--workers", "2", log_path=tmp_path / "serve-1.log", chromium=chromium)
    service.wait_healthy()
    _config(tmp_path, max_steps=40)
    proc = _train_cli(tmp_path, _cli_env(tmp_path, hf_home, service.url))
    runs = tmp_path / "checkpoints" / "runs"
    try:
        deadline = time.monotonic() + 300
        while not list(runs.glob("*/checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "no intermediate checkpoint within 300 s"
            time.sleep(0.2)
    finally:
        service.stop()  # mid-training: the next reset or tool call finds no service
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-4000:]
    assert "error: environment service unavailable, training stopped" in err
    assert service.url in err
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["runs"]  # no final, no temporary checkpoint
    (run_dir,) = runs.iterdir()
    saved = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert saved and all((p / "trainer_state.json").is_file() for p in saved)  # nothing partial
    last_step = int(saved[-1].name.split("-")[1])

    # another service (the shared one: another address, as after a restart) and the same config: resume the run
    assert env_url != service.url
    proc = _train_cli(
        tmp_path,
        _cli_env(tmp_path, hf_home, env_url),
        "--set",
        "resume_from_checkpoint=true",
        "--set",
        f"max_steps={last_step + 1}",
    )
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-4000:]
    final = checkpoints / run_dir.name  # the crashed run's name: same directories, same curves
    assert f"checkpoint: {final}" in out
    assert json.loads((final / "metrics.json").read_text())["global_step"] == last_step + 1
    assert "changed config keys" in err and "max_steps" in err
    assert len(list((tmp_path / "logs" / run_dir.name).glob("events.out.tfevents.*"))) == 2


def test_a_dead_service_met_by_a_tool_call_is_not_swallowed_by_trl(
    clicking_model: Path, chromium: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL catches tool exceptions and gives the model their text: the run must still stop, not score 0."""
    from browser_control.training.trainer import train

    service = ServiceProcess("--workers", "1", log_path=tmp_path / "serve.log", chromium=chromium)
    service.wait_healthy()
    data = _config(
        tmp_path,
        model_name=str(clicking_model),
        browsergym_url=service.url,
        max_steps=3,
        concurrent_env_calls=False,
        checkpoint_dir=str(tmp_path / "ck"),
        logging_dir=str(tmp_path / "tb"),
    )
    config = TrainConfig.model_validate(data)
    original_reset = BrowserEnvironment.reset
    resets = []

    def reset_then_kill_on_the_second_batch(self: BrowserEnvironment, *args: object, **kwargs: object) -> str:
        observation = original_reset(self, *args, **kwargs)
        resets.append(1)
        if len(resets) == 8:  # every rollout of step 2 has its first page: the service dies before any tool
            service.stop()
        return observation

    monkeypatch.setattr(BrowserEnvironment, "reset", reset_then_kill_on_the_second_batch)
    try:
        with pytest.raises(EnvServiceUnavailable) as info:
            train(config)
    finally:
        service.stop()
    frames = [frame.name for frame in info.traceback]
    assert "_calculate_rewards" in frames  # raised by the reward side, after TRL swallowed the tool error
    assert "_tool_call_loop" not in frames
    assert not (tmp_path / "ck").exists() or sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["runs"]


def test_lora_run_saves_adapter_and_merged_model(clicking_model: Path, env_url: str, tmp_path: Path) -> None:
    from peft import PeftConfig
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from browser_control.training.trainer import train

    data = _config(
        tmp_path,
        model_name=str(clicking_model),
        browsergym_url=env_url,
        max_steps=1,
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        merge_lora=True,
        checkpoint_dir=str(tmp_path / "ck"),
        logging_dir=str(tmp_path / "tb"),
    )
    final = train(TrainConfig.model_validate(data))
    assert final.parent == tmp_path / "ck" and final.is_dir()
    adapter = PeftConfig.from_pretrained(final / "adapter")
    assert set(adapter.target_modules) == {"q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"}
    with safe_open(final / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k for k in keys)  # merged: a plain model
    with safe_open(final / "adapter" / "adapter_model.safetensors", "pt") as f:
        names = f.keys()
    adapted = {k.split(".")[-3] for k in names if "lora_A" in k}
    assert {"in_proj", "w1", "q_proj"} <= adapted  # conv and MLP layers too, not only attention
    AutoModelForCausalLM.from_pretrained(final)
    assert (final / "metrics.json").is_file() and (final / "tokenizer.json").is_file()


def test_sigterm_saves_a_checkpoint_and_stops(clicking_model: Path, env_url: str, tmp_path: Path) -> None:
    """`docker compose stop` sends SIGTERM: the run ends at a step boundary with a checkpoint to resume."""
    import signal

    from transformers import TrainerCallback

    from browser_control.training.trainer import TrainingStopped, train

    class SendSigterm(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    data = _config(
        tmp_path,
        model_name=str(clicking_model),
        browsergym_url=env_url,
        max_steps=5,
        save_steps=50,
        checkpoint_dir=str(tmp_path / "ck"),
        logging_dir=str(tmp_path / "tb"),
    )
    with pytest.raises(TrainingStopped, match=r"signal 15 at step 1 of 5") as info:
        train(TrainConfig.model_validate(data), callbacks=[SendSigterm()])
    assert info.value.signal_number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler_before
    (run_dir,) = (tmp_path / "ck" / "runs").iterdir()
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-1"]
    assert (run_dir / "checkpoint-1" / "trainer_state.json").is_file()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["runs"]  # no finished checkpoint
