"""Training with several processes (training/launch.py) against a pool of environment replicas.

The configs that are safe with tool-calling rollouts are accepted, the others refused when the config is
read; and a real 2-process data-parallel run (accelerate launch, gloo on CPU, the tiny model) trains
against 2 service replicas and writes its outputs once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from browser_control.training.config import ConfigError, load_config
from browser_control.training.launch import deepspeed_config, launch_command, needs_launch
from tests.conftest import ServiceProcess, subprocess_env, tiny_training_config


def _write(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tiny_training_config(**overrides)))
    return path


@pytest.mark.parametrize("value", ["ddp", "zero1", "ZeRO-2"])
def test_data_parallel_and_zero_1_2_are_accepted(tmp_path: Path, value: str) -> None:
    config = load_config(_write(tmp_path, distributed=value, num_processes=2), environ={})
    assert config.distributed in ("ddp", "zero1", "zero2")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("zero3", "ZeRO-3 shards the weights"),
        ("fsdp", "FSDP shards"),
        ("tp", "tensor parallelism"),
        ("pipeline", "expected one of"),
    ],
)
def test_sharded_weights_and_tensor_parallel_are_refused_with_the_reason(tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"distributed: .*{why}"):
        load_config(_write(tmp_path), [f"distributed={value}"], environ={})


@pytest.mark.parametrize(
    "environ",
    [
        {"ACCELERATE_USE_FSDP": "true"},
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
        {"ACCELERATE_USE_MEGATRON_LM": "1"},
    ],
)
def test_an_accelerate_config_that_shards_the_weights_is_refused_too(tmp_path: Path, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="hang"):
        load_config(_write(tmp_path), environ=environ)


def test_the_batch_must_hold_whole_groups_across_all_processes(tmp_path: Path) -> None:
    # 3 rollouts per process x 2 processes = 6, a multiple of 2 generations but not of 4
    with pytest.raises(ConfigError, match=r"\* num_processes = 6 must be a multiple of num_generations = 4"):
        load_config(_write(tmp_path, per_device_train_batch_size=3, num_generations=4, num_processes=2), environ={})


def test_num_processes_comes_from_the_environment_and_launches_accelerate(tmp_path: Path) -> None:
    path = _write(tmp_path)
    config = load_config(path, environ={"NUM_PROCESSES": "2", "BROWSERGYM_URL": "http://a:1,http://b:2/"})
    assert config.num_processes == 2 and config.browsergym_url == "http://a:1,http://b:2"
    assert needs_launch(config, environ={})
    assert not needs_launch(config, environ={"WORLD_SIZE": "2", "RANK": "1"})  # a rank trains, never relaunches
    command = launch_command(config, str(path), ["max_steps=1"], "run-x", port=29999)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    tail = command[command.index("-m", 3) :]
    assert tail == [
        "-m",
        "browser_control",
        "train",
        "--config",
        str(path),
        "--set",
        "max_steps=1",
        "--set",
        "run_name=run-x",
        "--log-level",
        "info",
    ]
    assert deepspeed_config(config) is None
    zero2 = deepspeed_config(config.model_copy(update={"distributed": "zero2"}))
    assert zero2 is not None and zero2["zero_optimization"]["stage"] == 2


def test_a_bad_entry_of_a_replica_list_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"BROWSERGYM_URL=.* in the environment: browsergym_url: 'b:2' is not an http"
    ):
        load_config(_write(tmp_path), environ={"BROWSERGYM_URL": "http://a:1,b:2"})


@pytest.mark.browser
def test_dry_run_prints_the_launch_and_checks_the_pool_for_every_rank(
    clicking_model: Path,
    env_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from browser_control.cli import main

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "BROWSERGYM_URL", "NUM_PROCESSES"):
        monkeypatch.delenv(var, raising=False)
    path = _write(
        tmp_path,
        model_name=str(clicking_model),
        checkpoint_dir=str(tmp_path / "c"),
        browsergym_url=f"{env_url},{env_url}/",
        num_processes=2,
    )
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^processes +2 \(ddp\): .*accelerate\.commands\.launch .*--num_processes 2 .*"
        r"--set run_name=clicker\S*-click-test-\d{8}-\d{6}",
        out,
        re.M,
    ), out
    assert "sessions in use; this run needs 4 per process" in out
    assert not (tmp_path / "c").exists()  # nothing was started
    # 2 processes x 4 rollouts do not fit a pool of 4 places
    path = _write(
        tmp_path,
        model_name=str(clicking_model),
        browsergym_url=env_url,
        num_processes=2,
        per_device_train_batch_size=40,
    )
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    assert "keeps 80 episodes open at once" in capsys.readouterr().err


def test_ranks_launched_by_hand_must_share_a_run_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from browser_control.training.plan import TrainingSetupError, plan_run

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(_write(tmp_path, checkpoint_dir=str(tmp_path / "c")))
    with pytest.raises(TrainingSetupError, match="one run_name"):
        plan_run(config)
    assert plan_run(config.model_copy(update={"run_name": "shared"})).name == "shared"


def test_vllm_runs_colocated_with_tensor_parallel_1_on_every_rank(tmp_path: Path) -> None:
    from browser_control.training.grpo import build_grpo_config
    from browser_control.training.plan import plan_run

    config = load_config(_write(tmp_path, checkpoint_dir=str(tmp_path / "c")), environ={})
    args = build_grpo_config(config, plan_run(config), bf16=False)
    assert args.vllm_mode == "colocate" and args.vllm_tensor_parallel_size == 1


# -- why DDP is safe: ranks may play different numbers of generation turns ---------------------------------


def _ragged_rank(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    """One DDP rank: rank 0 plays 1 generation turn, rank 1 plays 3, as TRL's tool loop lets them; then the
    step's collectives (gradient all-reduce, the reward gather)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        ACCELERATE_USE_CPU="true",
    )
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from transformers import AutoModelForCausalLM
    from trl.models import unwrap_model_for_generation

    torch.set_num_threads(1)
    # A hang would show as a timeout error here, not as a test stuck until its own timeout.
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=120))])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.5))
    ids = torch.tensor([[5, 6, 7, 8]])
    for _ in range(1 + 2 * rank):  # the generation path of GRPOTrainer._generate_single_turn (DDP)
        with unwrap_model_for_generation(model, accelerator) as unwrapped, torch.no_grad():
            ids = unwrapped.generate(ids, max_new_tokens=2, do_sample=False)
    loss = model(ids, labels=ids).loss
    accelerator.backward(loss)
    optimizer.step()
    lengths = accelerator.gather(torch.tensor([float(ids.shape[1])]))
    weights = sum(p.detach().double().sum().item() for p in accelerator.unwrap_model(model).parameters())
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"lengths": lengths.tolist(), "weights": weights}))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_ranks_may_play_different_numbers_of_generation_turns(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from browser_control.models.tiny import build_tiny_lfm2
    from tests.conftest import free_port

    model_dir = build_tiny_lfm2(tmp_path / "model")
    mp.spawn(_ragged_rank, args=(free_port(), str(model_dir), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["lengths"] == results[1]["lengths"] == [6.0, 10.0]  # 1 and 3 turns of 2 tokens
    assert results[0]["weights"] == pytest.approx(results[1]["weights"], rel=1e-12)  # gradients were averaged


# -- a real 2-process run -------------------------------------------------------------------------------------


def _requests(log_text: str, path: str) -> int:
    return sum(1 for line in log_text.splitlines() if f'"path": "{path}"' in line)


def _steps_logged(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start_training(config: Path, tmp_path: Path, browsergym_url: str) -> subprocess.Popen[str]:
    """`browser-control train --config CONFIG` as a user starts it, offline, one torch thread per process."""
    env = subprocess_env(
        BROWSERGYM_URL=browsergym_url,
        CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        LOGGING_DIR=str(tmp_path / "logs"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "browser_control", "train", "--config", str(config)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_both_ranks_played_a_step(proc: subprocess.Popen[str], runs: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        logs = [_steps_logged(d / n) for d in runs.glob("*") for n in ("episodes.jsonl", "episodes-rank1.jsonl")]
        if len(logs) == 2 and all(logs):
            return
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(900)
def test_two_processes_train_against_two_replicas_write_once_and_survive_losing_one(
    clicking_model: Path, env_service: ServiceProcess, chromium: str | None, tmp_path: Path
) -> None:
    """2 ranks (accelerate launch, gloo on CPU) against replicas A and B; B is killed after step 1."""
    replica_b = ServiceProcess("--max-sessions", "16", "--workers", "1", log_path=tmp_path / "b.log", chromium=chromium)
    try:
        replica_b.wait_healthy(120)
        a_before = _requests(env_service.log_path.read_text(errors="replace"), "/reset")
        path = _write(
            tmp_path,
            model_name=str(clicking_model),
            num_processes=2,
            max_steps=3,
            save_steps=3,
            record_every_steps=1,
            record_episodes=2,
            eval_steps=3,
            eval_episodes=1,
        )
        proc = _start_training(path, tmp_path, f"{env_service.url},{replica_b.url}")
        # Once both ranks have played step 1, replica B goes away as a crashed container would.
        runs = tmp_path / "checkpoints" / "runs"
        _wait_until_both_ranks_played_a_step(proc, runs)
        assert proc.poll() is None, "the run ended before replica B could be killed"
        b_resets = _requests(replica_b.log(), "/reset")
        os.killpg(replica_b.proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
        replica_b.stop()
    assert proc.returncode == 0, err[-6000:]
    assert "accelerate.commands.launch" in err and "--num_processes 2" in err
    assert len(re.findall(r"^checkpoint: ", out, re.M)) == 1, out

    # Both replicas served sessions; B's loss was seen and said, and the run went on without it.
    assert b_resets > 0
    assert _requests(env_service.log_path.read_text(errors="replace"), "/reset") - a_before > 0
    assert f"environment replica {replica_b.url} fails its health check" in err

    # One finished checkpoint, one run directory, one TensorBoard event file: written once, by rank 0.
    checkpoints = tmp_path / "checkpoints"
    (final,) = [p for p in checkpoints.iterdir() if p.name != "runs"]
    assert (final / "model.safetensors").is_file() and (final / "metrics.json").is_file()
    (run_dir,) = list(runs.iterdir())
    assert run_dir.name == final.name
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-3"]
    assert (run_dir / "checkpoint-3" / "checkpoint-complete.json").is_file()
    (tensorboard,) = list((tmp_path / "logs").iterdir())
    assert tensorboard.name == final.name and len(list(tensorboard.glob("events.out.tfevents.*"))) == 1
    # The held-out evaluation ran once (rank 0 records it); training recordings come from rank 0 only.
    assert [p.name for p in (run_dir / "eval").iterdir()] == ["step-000003"]
    assert all("rank" not in p.name for p in (run_dir / "traces").iterdir())

    # Every rank played its own rollouts: 3 steps x 4 per rank, different task instances; the last step,
    # played after B was gone, lost no episode.
    rows = {}
    for name in ("episodes.jsonl", "episodes-rank1.jsonl"):
        lines = _steps_logged(run_dir / name)
        assert [line["step"] for line in lines] == [1, 2, 3]
        rows[name] = [(e["task_name"], e["seed"]) for line in lines for e in line["episodes"]]
        assert len(rows[name]) == 12
        assert [e["fault"] for e in lines[-1]["episodes"]] == [None] * 4
    assert not set(rows["episodes.jsonl"]) & set(rows["episodes-rank1.jsonl"])


def test_the_run_exits_with_the_first_ranks_own_failure_not_the_launchers(tmp_path: Path) -> None:
    from browser_control.training.launch import RANK_STATUS_ENV, launched_status, record_rank_status

    assert launched_status(tmp_path, 1) == 1  # no rank got as far as recording: the launcher's code
    for rank, code in ((0, 143), (1, 3)):  # rank 1 lost the environment, rank 0 was then stopped
        record_rank_status(code, environ={RANK_STATUS_ENV: str(tmp_path), "RANK": str(rank)})
    assert launched_status(tmp_path, 1) == 3
    record_rank_status(0, environ={"RANK": "0"})  # outside a launch: nothing is written, nothing fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-0", "rank-1"]


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """The launcher and the ranks (in a process group of their own) of a run that did not end by itself."""
    import psutil

    if proc.poll() is not None:
        return
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait(30)


def _rank_process(launcher_pid: int, rank: int) -> Any:
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "browser_control" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no process of rank {rank} under {launcher_pid}")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(900)
def test_a_stop_signal_reaching_one_rank_stops_every_rank_after_the_same_step_with_a_checkpoint(
    clicking_model: Path, env_url: str, tmp_path: Path
) -> None:
    """`docker compose stop` reaches the ranks through the launcher, not necessarily at the same moment. Here
    only rank 1 gets SIGTERM: rank 0 must stop after the same step, or it would wait forever at the next
    gather for a rank that is gone."""
    path = _write(
        tmp_path, model_name=str(clicking_model), num_processes=2, max_steps=50, save_steps=50, record_every_steps=None
    )
    proc = _start_training(path, tmp_path, env_url)
    runs = tmp_path / "checkpoints" / "runs"
    try:
        _wait_until_both_ranks_played_a_step(proc, runs)
        assert proc.poll() is None, "the run ended before it could be stopped"
        _rank_process(proc.pid, 1).send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 143, err[-6000:]
    (run_dir,) = list(runs.iterdir())
    (saved,) = list(run_dir.glob("checkpoint-*"))
    assert (saved / "checkpoint-complete.json").is_file()
    step = int(saved.name.split("-")[1])
    for name in ("episodes.jsonl", "episodes-rank1.jsonl"):
        assert [line["step"] for line in _steps_logged(run_dir / name)] == list(range(1, step + 1))
    assert err.count(f"stopped by signal 15 at step {step} of 50") == 2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name != "runs"]  # no final checkpoint
