"""Training pieces without a model: task mixture, checkpoint files, run plans, the env factory and metrics."""

from __future__ import annotations

import errno
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from browser_control.client import EnvServiceUnavailable
from browser_control.seeds import EVAL_SEED_RANGE, TRAIN_SEED_RANGE
from browser_control.training import checkpoints as ckpt
from browser_control.training.config import TrainConfig
from browser_control.training.data import build_rows, sample_tasks
from browser_control.training.plan import TrainingSetupError, plan_run
from browser_control.training.preflight import preflight
from browser_control.training.rollouts import EnvironmentFactory, EpisodeMetrics, SaturationMonitor
from tests.conftest import ServiceProcess


def config(**overrides: object) -> TrainConfig:
    data: dict[str, object] = {
        "tasks": ["click-test"],
        "max_steps": 4,
        "num_generations": 2,
        "per_device_train_batch_size": 4,
    }
    data.update(overrides)
    return TrainConfig.model_validate(data)


# -- dataset rows ----------------------------------------------------------------------------------


def test_weighted_mixture_is_deterministic_and_follows_the_weights() -> None:
    tasks = config(tasks=[{"name": "click-test", "weight": 1}, {"name": "enter-text", "weight": 3}]).tasks
    draws = sample_tasks(tasks, 4000, seed=7)
    assert draws == sample_tasks(tasks, 4000, seed=7)
    assert draws != sample_tasks(tasks, 4000, seed=8)
    share = Counter(draws)["enter-text"] / len(draws)
    assert 0.72 < share < 0.78  # 3 / (1 + 3), with a fixed seed so never flaky
    assert sample_tasks(tasks, 100, seed=7) == draws[:100]  # prefix-stable: resume sees the same rows


def test_rows_carry_prompt_task_and_a_unique_training_seed() -> None:
    cfg = config(tasks=["click-test", "enter-text"], max_steps=50)
    rows = build_rows(cfg)
    assert len(rows) == 50 * 4 // 2  # steps x task instances per step
    seeds = [row["seed"] for row in rows]
    assert len(set(seeds)) == len(seeds)
    assert all(s in TRAIN_SEED_RANGE and s not in EVAL_SEED_RANGE for s in seeds)
    assert {row["task_name"] for row in rows} == {"click-test", "enter-text"}
    row = rows[0]
    assert row["prompt"][-1]["role"] == "user" and row["task_name"] in row["prompt"][-1]["content"]


# -- checkpoint files ------------------------------------------------------------------------------


def test_atomic_write_renames_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "model-click-test-20260101-000000"

    def write(tmp: Path) -> None:
        assert tmp.name == ".tmp-" + final.name and not final.exists()
        (tmp / "config.json").write_text("{}")

    assert ckpt.write_atomically(final, write) == final
    assert (final / "config.json").is_file() and not (tmp_path / f".tmp-{final.name}").exists()
    with pytest.raises(ckpt.CheckpointError, match="never overwritten"):
        ckpt.write_atomically(final, write)


def test_disk_full_while_saving_leaves_nothing_partial(tmp_path: Path) -> None:
    final = tmp_path / "run"

    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"\0" * 1024)  # half-written weights
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ckpt.CheckpointError, match="disk full") as info:
        ckpt.write_atomically(final, write)
    assert "partial files were removed" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_reported_inside_another_error_type_is_recognised(tmp_path: Path) -> None:
    def write(tmp: Path) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })") from exc

    with pytest.raises(ckpt.CheckpointError, match="disk full"):
        ckpt.write_atomically(tmp_path / "run", write)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_propagate_and_clean_up(tmp_path: Path) -> None:
    (tmp_path / ".tmp-run").mkdir()
    (tmp_path / ".tmp-run" / "stale").write_text("left by a crash")

    def write(tmp: Path) -> None:
        assert not (tmp / "stale").exists()  # a stale temp dir is never reused
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        ckpt.write_atomically(tmp_path / "run", write)
    assert list(tmp_path.iterdir()) == []


def _checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    path = run / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    (path / ckpt.TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    if complete:
        ckpt.mark_complete(path, step)
    else:
        (path / ckpt.TRAINER_STATE).write_text("")  # what a full disk left: written in place, empty
    return path


def test_resume_finds_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    runs = ckpt.runs_dir(tmp_path)
    old = _checkpoint(runs / "tiny-click-test-20260101-000000", 10)
    newer = _checkpoint(runs / "tiny-click-test-20260102-000000", 5)
    # Completed a minute later, whatever the file system's timestamp resolution (no sleep needed).
    stamp = ckpt.completed_at(old) + 60
    os.utime(newer / ckpt.COMPLETE_MARKER, (stamp, stamp))
    _checkpoint(runs / "tiny-click-test-20260102-000000", 10, complete=False)  # cut short
    _checkpoint(runs / "tiny-mix-20260103-000000", 99)  # another task
    assert ckpt.find_resume_checkpoint(tmp_path, "tiny-click-test-") == newer
    assert ckpt.find_resume_checkpoint(tmp_path, "x", exact_name=old.parent.name) == old
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.find_resume_checkpoint(tmp_path, "other-")
    assert ckpt.resolve_resume_path(newer.parent) == newer
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.resolve_resume_path(newer.parent / "checkpoint-10")
    assert ckpt.remove_incomplete_checkpoints(newer.parent) == [newer.parent / "checkpoint-10"]
    assert ckpt.intermediate_checkpoints(newer.parent) == [newer]


def test_only_the_marker_written_last_proves_a_checkpoint_complete(tmp_path: Path) -> None:
    run = tmp_path / "run"
    good = _checkpoint(run, 1)
    marker = json.loads((good / ckpt.COMPLETE_MARKER).read_text())
    assert marker["global_step"] == 1 and marker["files"]["model.safetensors"] == 64
    assert not list(good.glob(".tmp-*"))  # the marker was renamed into place
    # The Trainer's state file is there, but empty (a full disk): not complete, whatever else is there.
    empty_state = _checkpoint(run, 2, complete=False)
    assert ckpt.incomplete_reason(empty_state) is not None
    # Complete once, then a file shrank (truncated copy, disk trouble): no longer complete.
    shrunk = _checkpoint(run, 3)
    (shrunk / "model.safetensors").write_bytes(b"\0" * 10)
    assert "model.safetensors has 10 bytes, 64 were written" in str(ckpt.incomplete_reason(shrunk))
    (shrunk / "model.safetensors").unlink()
    assert ckpt.incomplete_reason(shrunk) == "model.safetensors is missing"
    # A checkpoint saved before the marker existed counts when its trainer_state.json is whole.
    legacy = run / "checkpoint-4"
    legacy.mkdir()
    (legacy / ckpt.TRAINER_STATE).write_text(json.dumps({"global_step": 4}))
    assert ckpt.is_complete(legacy)
    (legacy / ckpt.TRAINER_STATE).write_text('{"global_step": 4, "log_hist')  # cut short
    assert not ckpt.is_complete(legacy)
    assert ckpt.latest_complete_checkpoint(run) == good
    with pytest.raises(ckpt.CheckpointError, match=r"incomplete.*trainer_state\.json"):
        ckpt.resolve_resume_path(empty_state)


def test_a_failure_with_room_left_on_the_disk_is_not_called_disk_full(tmp_path: Path) -> None:
    # torch.save's wording for a full disk, but this disk has room: free space, not text, decides.
    assert ckpt.free_bytes(tmp_path) > ckpt.DISK_FULL_FREE_BYTES  # the premise of this test
    assert not ckpt.is_disk_full(RuntimeError("[enforce fail] unexpected pos 704 vs 598"), tmp_path)
    assert ckpt.is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert not ckpt.is_disk_full(RuntimeError("No space left on device"))  # text alone proves nothing


def test_plan_names_and_guards(tmp_path: Path) -> None:
    cfg = config(model_name="LiquidAI/LFM2-350M", checkpoint_dir=str(tmp_path / "ck"), logging_dir=str(tmp_path / "tb"))
    plan = plan_run(cfg)
    assert re.fullmatch(r"lfm2-350m-click-test-\d{8}-\d{6}", plan.name)
    assert plan.final_dir == tmp_path / "ck" / plan.name
    assert plan.run_dir == tmp_path / "ck" / "runs" / plan.name
    assert plan.tensorboard_dir == tmp_path / "tb" / plan.name
    assert plan_run(config(tasks=["click-test", "enter-text"], model_name="x/Tiny")).name.startswith("tiny-mix-")

    named = cfg.model_copy(update={"run_name": "exp1"})
    _checkpoint(tmp_path / "ck" / "runs" / "exp1", 2)
    with pytest.raises(TrainingSetupError, match="resume_from_checkpoint: true"):
        plan_run(named)
    resumed = plan_run(named.model_copy(update={"resume_from_checkpoint": True}))
    assert resumed.name == "exp1" and resumed.resume_checkpoint == tmp_path / "ck" / "runs" / "exp1" / "checkpoint-2"
    (tmp_path / "ck" / "exp1").mkdir()
    with pytest.raises(TrainingSetupError, match="already exists"):
        plan_run(named.model_copy(update={"resume_from_checkpoint": True}))


def test_the_loss_settings_of_the_learning_recipe_reach_trl(tmp_path: Path) -> None:
    from browser_control.training.grpo import build_grpo_config

    cfg = config(checkpoint_dir=str(tmp_path), beta=0.1, top_entropy_quantile=0.2)
    args = build_grpo_config(cfg, plan_run(cfg), bf16=False)
    assert (args.beta, args.top_entropy_quantile) == (0.1, 0.2)
    assert build_grpo_config(config(), plan_run(config()), bf16=False).top_entropy_quantile == 1.0
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        config(top_entropy_quantile=1.5)


def test_asking_for_vllm_where_it_is_missing_fails_at_start(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    plan = plan_run(config(use_vllm=True, checkpoint_dir=str(tmp_path)))
    with pytest.raises(TrainingSetupError, match="vLLM is not installed"):
        preflight(plan)


def test_preflight_checks_the_service(env_url: str, tmp_path: Path) -> None:
    plan = plan_run(config(browsergym_url=env_url, checkpoint_dir=str(tmp_path)))
    preflight(plan)
    assert plan.service["status"] == "ok"
    with pytest.raises(TrainingSetupError, match=r"does not know 'clik-test' \(did you mean click-test"):
        preflight(plan_run(config(browsergym_url=env_url, tasks=["clik-test"], checkpoint_dir=str(tmp_path))))
    dead = plan_run(config(browsergym_url="http://127.0.0.1:9", env_wait_s=0.5, checkpoint_dir=str(tmp_path)))
    with pytest.raises(EnvServiceUnavailable, match="not healthy"):
        preflight(dead)


# -- the environment factory and the metrics reward, against the real service -------------------------


class _Recorder:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def __call__(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)


def test_factory_binds_the_service_and_metrics_describe_the_episodes(env_url: str, tmp_path: Path) -> None:
    factory = EnvironmentFactory(env_url, max_episode_steps=2)
    envs = [factory() for _ in range(4)]  # TRL calls the factory with no arguments
    assert factory.environments == envs
    rows = [("click-test", 11), ("click-test", 11), ("focus-text", 12), ("focus-text", 12)]
    for env, (task, seed) in zip(envs, rows, strict=True):
        assert "Goal:" in env.reset(task_name=task, seed=seed)
    envs[0].click(bid="13")  # solves click-test
    envs[1].click(bid="no such")  # invalid: a bid is digits
    log_path = tmp_path / "episodes.jsonl"
    monitor = SaturationMonitor(patience=2)
    metrics = EpisodeMetrics(factory, monitor, step_getter=lambda: 3, episode_log=log_path)
    recorder = _Recorder()
    out = metrics(
        prompts=[[]] * 4,
        completions=[[]] * 4,
        environments=envs,
        log_metric=recorder,
        task_name=[t for t, _ in rows],
        seed=[s for _, s in rows],
    )
    assert out == [None] * 4  # scores nothing: the task reward is BrowserEnvironment.get_reward
    v = {k: vals[-1] for k, vals in recorder.values.items()}
    assert v["success/overall"] == 0.25 and v["success/click-test"] == 0.5 and v["success/focus-text"] == 0.0
    assert v["episode/steps"] == 0.5 and v["episode/invalid_action_rate"] == 0.5
    assert v["env/latency_s"] > 0 and v["collapse/saturated_tasks"] == 0.0
    record = json.loads(log_path.read_text().splitlines()[0])
    assert record["step"] == 3 and [e["seed"] for e in record["episodes"]] == [11, 11, 12, 12]
    assert [e["success"] for e in record["episodes"]] == [True, False, False, False]

    # focus-text groups all failed twice running: saturated (no learning signal) -> reported
    metrics(prompts=[[]] * 4, completions=[[]] * 4, environments=envs, log_metric=recorder)
    assert monitor.saturated == {"focus-text"} and recorder.values["collapse/saturated/focus-text"][-1] == 1.0
    assert any("focus-text" in w and "no learning signal" in w for w in monitor.warnings)

    with pytest.raises(RuntimeError, match="misaligned"):
        metrics(
            prompts=[[]] * 4,
            completions=[[]] * 4,
            environments=envs,
            log_metric=recorder,
            task_name=["click-test"] * 4,
            seed=[11, 11, 11, 11],
        )
    factory.close()


def test_a_service_killed_mid_episode_is_fatal_not_a_zero_reward(chromium: str | None, tmp_path: Path) -> None:
    service = ServiceProcess("--workers", "1", log_path=tmp_path / "serve.log", chromium=chromium)
    try:
        service.wait_healthy()
        factory = EnvironmentFactory(service.url, max_episode_steps=3, retries=1, backoff_s=0.05)
        first, second = factory(), factory()
        first.reset(task_name="click-test", seed=1)
        second.reset(task_name="click-test", seed=2)
    finally:
        service.stop()
    # TRL would catch this exception and hand its text to the model...
    with pytest.raises(EnvServiceUnavailable, match=service.url):
        first.click(bid="13")
    # ...so the episode keeps it: its reward and the metrics reward raise instead of returning 0.0,
    with pytest.raises(EnvServiceUnavailable):
        first.get_reward()
    with pytest.raises(EnvServiceUnavailable):
        EpisodeMetrics(factory, SaturationMonitor(3))(
            prompts=[[]] * 2, completions=[[]] * 2, environments=[first, second], log_metric=_Recorder()
        )
    # ...and the shared client stays failed: the next rollout does not wait through its own retries.
    with pytest.raises(EnvServiceUnavailable) as info:
        second.click(bid="13")
    assert info.value.__cause__ is factory.client.dead.error
    factory.close()


def test_a_session_lost_mid_episode_is_no_data_and_the_next_reset_starts_afresh(env_url: str) -> None:
    from browser_control.client import EnvClient, EnvRequestError

    factory = EnvironmentFactory(env_url, max_episode_steps=3, retries=1, backoff_s=0.05)
    env, healthy = factory(), factory()
    env.reset(task_name="click-test", seed=21)
    healthy.reset(task_name="click-test", seed=21)
    with EnvClient(env_url) as other:  # the session disappears under the episode (reaped, service restart)
        other.close_session(env._session_id)
    text = env.click(bid="13")  # TRL hands a tool's text to the model: no exception, no 0 reward
    assert "not scored" in text and env.episode.fault is not None
    assert env.get_reward() is None
    assert "not scored" in env.click(bid="13")  # later tools do not call the service again
    assert factory.client.dead.error is None  # the service is fine: the run goes on
    healthy.click(bid="13")
    recorder = _Recorder()
    EpisodeMetrics(factory, SaturationMonitor(3))(
        prompts=[[]] * 2,
        completions=[[]] * 2,
        environments=[env, healthy],
        log_metric=recorder,
        task_name=["click-test"] * 2,
        seed=[21, 21],
    )
    v = {k: vals[-1] for k, vals in recorder.values.items()}
    assert v["env/fault_rate"] == 0.5 and v["success/overall"] == 1.0  # the fault is not a failure

    # the next reset of the same environment object (TRL reuses it) starts a new session and plays
    assert "Goal:" in env.reset(task_name="click-test", seed=22)
    assert env.episode.fault is None and env.get_reward() == 0.0
    env.click(bid="13")
    assert env.get_reward() == 1.0
    # a request that is wrong (not a fault) still fails loudly
    with pytest.raises(EnvRequestError, match="unknown_task"):
        env.reset(task_name="no-such-task", seed=1)
    factory.close()


def test_a_service_that_answers_503_costs_episodes_not_the_run(chromium: str | None, tmp_path: Path) -> None:
    broken = tmp_path / "not-a-browser"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    service = ServiceProcess("--workers", "1", log_path=tmp_path / "serve.log", chromium=str(broken))
    try:
        deadline = time.monotonic() + 120
        while not _answers(service.url):
            assert service.proc.poll() is None and time.monotonic() < deadline, service.log()
            time.sleep(0.2)
        factory = EnvironmentFactory(service.url, max_episode_steps=3, retries=1, backoff_s=0.05)
        envs = [factory() for _ in range(2)]
        metrics = EpisodeMetrics(factory, SaturationMonitor(3))
        for batch in range(3):
            for i, env in enumerate(envs):
                text = env.reset(task_name="click-test", seed=100 + i)  # 503 browser_unavailable, retried
                assert "not scored" in text and env.get_reward() is None
            assert factory.client.dead.error is None  # it answers: a fault, not a dead service
            call = dict(
                prompts=[[]] * 2,
                completions=[[]] * 2,
                environments=envs,
                log_metric=_Recorder(),
                task_name=["click-test"] * 2,
                seed=[100, 101],
            )
            if batch < 2:
                metrics(**call)
            else:  # nothing but faults, batch after batch: stop rather than train on no data forever
                with pytest.raises(EnvServiceUnavailable, match="every episode of the last 3"):
                    metrics(**call)
        factory.close()
    finally:
        service.stop()


def _answers(url: str) -> bool:
    import httpx

    try:
        httpx.get(url + "/health", timeout=5)
    except httpx.HTTPError:
        return False
    return True


def test_dry_run_prints_the_plan_and_trains_nothing(
    env_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from browser_control.cli import main

    path = tmp_path / "run.yaml"
    # --dry-run checks that the model can be found: a local directory keeps the test off the network.
    model = tmp_path / "LFM2-350M"
    model.mkdir()
    (model / "config.json").write_text("{}")
    path.write_text(
        "tasks: [{name: click-test, weight: 1}, {name: enter-text, weight: 3}]\n"
        f"checkpoint_dir: {tmp_path / 'ck'}\nlogging_dir: {tmp_path / 'tb'}\nmodel_name: {model}\n"
    )
    assert main(["train", "--config", str(path), "--set", f"browsergym_url={env_url}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "click-test (25%), enter-text (75%)" in out and "transformers generate" in out
    assert f"model found      {model} (local directory" in out
    assert f"{env_url} (ok," in out and "dry run" in out
    assert re.search(r"checkpoint\s+.*/ck/lfm2-350m-mix-\d{8}-\d{6}", out)
    assert re.search(r"recordings\s+4 rollouts at step 1 and every 10 steps, step by step in .*/ck/runs/", out)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "tb").exists()


def test_cli_exit_codes_for_a_dead_service_and_missing_vllm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from browser_control.cli import main

    path = tmp_path / "run.yaml"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # found locally: the service is what fails
    path.write_text(
        "tasks: [click-test]\nbrowsergym_url: http://127.0.0.1:9\nenv_wait_s: 0.5\n"
        f"checkpoint_dir: {tmp_path / 'ck'}\nmodel_name: {tmp_path / 'model'}\n"
    )
    assert main(["train", "--config", str(path), "--dry-run"]) == 3
    assert "environment service unavailable" in capsys.readouterr().err
    if importlib.util.find_spec("vllm") is None:
        assert main(["train", "--config", str(path), "--set", "use_vllm=true"]) == 2
        assert "vLLM is not installed" in capsys.readouterr().err


def test_collapse_guard_warns_and_adds_tensorboard_scalars(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from browser_control.training.callbacks import CollapseGuard

    monitor = SaturationMonitor(patience=1)
    monitor.update({"click-test": [[1.0, 1.0]]}, step=1)
    guard = CollapseGuard(entropy_threshold=0.1, monitor=monitor)
    state = SimpleNamespace(global_step=7, max_steps=10)
    healthy = {"entropy": 0.8, "reward": 0.5, "rewards/EpisodeMetrics/mean": None}
    guard.on_log(None, state, None, logs=healthy)  # type: ignore[arg-type]
    assert healthy["collapse/low_entropy"] == 0.0
    assert "rewards/EpisodeMetrics/mean" not in healthy  # None cannot be a TensorBoard scalar
    collapsed = {"entropy": 0.01, "reward": 1.0, "success/overall": 1.0}
    with caplog.at_level("WARNING"):
        guard.on_log(None, state, None, logs=collapsed)  # type: ignore[arg-type]
    assert collapsed["collapse/low_entropy"] == 1.0
    assert "COLLAPSE GUARD" in caplog.text and "entropy 0.0100" in caplog.text
    guard.on_log(None, state, None, logs={"train_runtime": 12.0, "train_loss": 0.1})  # type: ignore[arg-type]
    summary = guard.summary(state)  # type: ignore[arg-type]
    assert summary["global_step"] == 7 and summary["recent"]["reward"] == 0.75
    assert summary["recent"]["success/overall"] == 1.0 and summary["train"]["train_runtime"] == 12.0
    assert summary["saturated_tasks"] == ["click-test"]
    assert any("entropy" in w for w in summary["warnings"]) and any("saturated" in w for w in summary["warnings"])


def test_reward_wiring_check_refuses_an_unwired_reward() -> None:
    from types import SimpleNamespace

    import torch

    from browser_control.training.grpo import check_reward_wiring

    wired = SimpleNamespace(
        reward_func_names=["EpisodeMetrics", "BrowserEnvironment"], reward_weights=torch.tensor([0.0, 1.0])
    )
    check_reward_wiring(wired)  # type: ignore[arg-type]
    for names, weights in (
        (["EpisodeMetrics"], [0.0]),  # the environment's get_reward was not picked up
        (["EpisodeMetrics", "BrowserEnvironment"], [1.0, 1.0]),  # metrics would score
        (["EpisodeMetrics", "BrowserEnvironment"], [0.0, 0.0]),
    ):
        broken = SimpleNamespace(reward_func_names=names, reward_weights=torch.tensor(weights))
        with pytest.raises(TrainingSetupError, match="reward wiring is wrong"):
            check_reward_wiring(broken)  # type: ignore[arg-type]


def test_built_lfm2_configs_carry_every_field_vllm_reads(tmp_path) -> None:
    from transformers import AutoConfig

    from browser_control.models.tiny import VLLM_LFM2_CONFIG_FIELDS, build_tiny_lfm2, lfm2_config

    built = AutoConfig.from_pretrained(str(build_tiny_lfm2(tmp_path / "tiny")))
    shaped = lfm2_config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, full_attn_idxs=[1]
    )
    for config in (built, shaped):
        missing = [
            name
            for name in VLLM_LFM2_CONFIG_FIELDS
            if getattr(config, name, None) is None and name != "block_ffn_dim_multiplier"
        ]
        assert missing == [], f"vLLM's LFM2 would fail at engine start: {missing}"
        assert config.conv_dim == config.block_dim == config.conv_dim_out == config.hidden_size


def test_vllm_environment_picks_the_pytorch_sampler_without_flashinfer_and_keeps_user_values(monkeypatch) -> None:
    import importlib.util
    import os

    from browser_control.models.vllm_setup import prepare_vllm_environment

    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER", raising=False)
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    absent = importlib.util.find_spec("flashinfer") is None
    chosen = prepare_vllm_environment()
    assert chosen == ({"VLLM_USE_FLASHINFER_SAMPLER": "0"} if absent else {})
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"  # the user's choice stands
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD")
    monkeypatch.setenv("VLLM_USE_FLASHINFER_SAMPLER", "1")
    assert prepare_vllm_environment() == {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "1"
