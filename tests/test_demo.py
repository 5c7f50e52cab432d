"""`browser-control demo` (make demo): the whole loop on CPU, its output, and that it leaves no process behind.

The end-to-end runs start the real command as a user would (its own process group, like a shell job),
with fewer steps and episodes than the default so the suite stays short: the code path is the same; that
the default settings learn was measured with `make demo` (benchmarks/RESULTS.md, "Demo"). While a demo
runs, the test records every process below it (the environment service, its Playwright driver and
Chromium, each command), and afterwards polls, with a deadline, until none of them is left.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import find_chromium, subprocess_env

REPO = Path(__file__).resolve().parents[1]
# Same code path as the default demo, a fraction of the work: GRPO plays 2 task instances x 2 rollouts a step
# instead of 2 x 8 (the GRPO tests use the same shape).
SMALL = [
    "--demos-per-task", "2", "--eval-episodes", "3", "--sft-set", "max_steps=3",
    "--set", "num_generations=2", "--set", "per_device_train_batch_size=4", "--set", "max_steps=2",
]  # fmt: skip


# -- a demo as a job --------------------------------------------------------------------------------------


class DemoRun:
    """`browser-control demo` in a process group of its own, with every descendant it ever had recorded."""

    def __init__(self, tmp_path: Path, *args: str):
        self.cwd = tmp_path
        self.output = tmp_path / "demo"
        self.stdout = tmp_path / "stdout.txt"
        self.stderr = tmp_path / "stderr.txt"
        chromium = find_chromium()
        extra = ["--chromium-executable", chromium] if chromium else []
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "browser_control", "demo", "--output", str(self.output), *extra, *args],
                stdout=out,
                stderr=err,
                cwd=tmp_path,
                start_new_session=True,
                env=subprocess_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
            )
        self.seen: dict[int, str] = {}

    def record(self) -> None:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    self.seen.setdefault(p.pid, " ".join(p.cmdline())[:200] or p.name())
                except psutil.Error:
                    pass
        except psutil.Error:
            pass  # the demo itself has exited

    def wait(self, until=None, timeout_s: float = 1500.0) -> bool:  # type: ignore[no-untyped-def]
        """Record descendants until the demo exits or ``until()`` holds; True when ``until()`` held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.record()
            if until is not None and until():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.3)
        raise AssertionError(f"demo still running after {timeout_s} s:\n{self.err()[-3000:]}")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def left_behind(self, timeout_s: float = 60.0) -> dict[int, str]:
        """The recorded processes still running after ``timeout_s`` (zombies count as gone)."""
        deadline = time.monotonic() + timeout_s
        while True:
            alive = {}
            for pid, cmd in self.seen.items():
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        alive[pid] = cmd
                except psutil.NoSuchProcess:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.3)

    def kill_leftovers(self) -> None:
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def demo_run(tmp_path: Path, chromium: str | None):  # type: ignore[no-untyped-def]
    runs: list[DemoRun] = []

    def start(*args: str) -> DemoRun:
        run = DemoRun(tmp_path, *args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_leftovers()


def _chromium_seen(run: DemoRun) -> bool:
    return any("chrom" in cmd.lower() or "headless_shell" in cmd for cmd in run.seen.values())


# -- end to end -------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_runs_the_whole_loop_and_stops_everything(demo_run) -> None:  # type: ignore[no-untyped-def]
    run = demo_run(*SMALL)
    run.wait()
    assert run.proc.returncode == 0, run.err()[-4000:]
    out = run.output

    # Every phase ran, in order, through the real commands.
    err = run.err()
    for index, title in enumerate(
        [
            "environment service",
            "tiny model from scratch",
            "scripted demonstrations",
            "SFT warm start",
            "GRPO against the environment service",
            "evaluation before/after GRPO (held-out seeds)",
        ],
        start=1,
    ):
        assert f"[{index}/6] {title}: done" in err, err
    # The bar of each phase moved with the command's own progress, read back from its output.
    assert "[5/6] GRPO against the environment service: 1/2 steps" in err, err
    assert re.search(r"\[4/6\] SFT warm start: [123]/3 steps", err), err
    assert re.search(r"\[6/6\] evaluation before/after GRPO \(held-out seeds\): \d+/12 episodes", err), err
    for log in ("serve-env", "model", "demos", "sft", "train", "evaluate"):
        assert (out / "logs" / f"{log}.log").stat().st_size > 0
    assert "browser_control serve-env" in (out / "logs" / "serve-env.log").read_text().splitlines()[0]

    # The artefacts it points to.
    grpo = out / "checkpoints" / "tiny-lfm2-grpo"
    assert (grpo / "model.safetensors").is_file() and (grpo / "config.json").is_file()
    assert json.loads((grpo / "metrics.json").read_text())["global_step"] == 2
    for run_name in ("tiny-lfm2-sft", "tiny-lfm2-grpo"):
        assert list((out / "tensorboard" / run_name).rglob("events.out.tfevents.*")), run_name
    assert (out / "evaluation" / "success_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["tiny-lfm2-sft", "tiny-lfm2-grpo"]
    assert all(r["overall"]["episodes"] == 2 * 3 for r in report["runs"])
    episodes = [json.loads(line) for line in (out / "evaluation" / "episodes.jsonl").read_text().splitlines()]
    assert episodes and all(1_000_000_000 <= e["seed"] < 2_000_000_000 for e in episodes)  # held-out seeds

    # What it prints: where each thing is, and an honest last line with the measured rates per task.
    stdout = run.out()
    shown = out.relative_to(run.cwd)  # paths below the working directory are shown relative to it
    assert f"tensorboard --logdir {shown / 'tensorboard'}" in stdout, stdout
    assert str(shown / "checkpoints" / "tiny-lfm2-grpo") in stdout, stdout
    assert f"view --logs {shown / 'evaluation'} --checkpoints {shown / 'checkpoints'}" in stdout, stdout
    assert (
        str(shown / "evaluation" / "report.md") in stdout and str(shown / "evaluation" / "success_rates.png") in stdout
    )
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("held-out success before -> after GRPO (3 episodes per task, greedy): "), last
    before, after = report["runs"]
    for task_before, task_after in zip(before["tasks"], after["tasks"], strict=True):
        expected = (
            f"{task_before['task']} {100 * task_before['success_rate']:.0f}% -> {100 * task_after['success_rate']:.0f}%"
        )
        assert expected in last, (expected, last)
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["timings_s"]) >= {"serve-env", "model", "demos", "sft", "train", "evaluate", "total"}

    assert _chromium_seen(run), run.seen
    assert run.left_behind() == {}


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ctrl_c_during_training_stops_every_process(demo_run) -> None:  # type: ignore[no-untyped-def]
    run = demo_run(*SMALL[:-1], "max_steps=50")

    def training() -> bool:
        return "[5/6] GRPO against the environment service: started" in run.err() and any(
            " train " in cmd for cmd in run.seen.values()
        )

    assert run.wait(until=training, timeout_s=900), run.err()[-4000:]
    train_log = run.output / "logs" / "train.log"

    def loading_the_model() -> bool:  # past preflight, into the trainer's start-up, browsers running
        return train_log.is_file() and "loading model" in train_log.read_text(errors="replace")

    assert run.wait(until=loading_the_model, timeout_s=300), run.err()[-4000:]
    assert _chromium_seen(run), run.seen
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal sends to the foreground job on Ctrl-C
    run.wait(timeout_s=300)
    assert run.proc.returncode == 130, run.err()[-4000:]
    assert "[5/6] GRPO against the environment service: stopped after" in run.err()
    assert "interrupted: stopping the processes the demo started" in run.err()
    assert run.left_behind() == {}


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_failing_step_is_reported_with_its_log_and_stops_everything(demo_run) -> None:  # type: ignore[no-untyped-def]
    # Every demonstration is longer than 64 tokens: `browser-control sft` refuses to train.
    run = demo_run(*SMALL, "--sft-set", "max_length=64")
    run.wait()
    err = run.err()
    assert run.proc.returncode == 1, err[-4000:]
    assert "'SFT warm start' failed (exit code 2)" in err
    assert "every demonstration is longer than max_length=64 tokens" in err  # the tail of its log
    assert f"partial output and logs: {run.output.relative_to(run.cwd)}/" in err
    assert "[4/6] SFT warm start: failed after" in err
    assert run.left_behind() == {}


# -- before anything starts ---------------------------------------------------------------------------------


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "browser_control", "demo", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )


def test_bad_settings_are_refused_before_any_process_starts(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--output", str(tmp_path / "a"), "--set", "max_stpes=3")
    assert result.returncode == 2
    assert "unknown key 'max_stpes'" in result.stderr and "max_steps" in result.stderr
    assert not (tmp_path / "a").exists()

    result = _demo(tmp_path, "--output", str(tmp_path / "b"), "--set", "tasks=[click-checkboxes-large]")
    assert result.returncode == 2 and "no scripted policy" in result.stderr

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("keep")
    result = _demo(tmp_path, "--output", str(tmp_path / "c"))
    assert result.returncode == 2 and "not an empty directory" in result.stderr
    assert (tmp_path / "c" / "mine.txt").read_text() == "keep"

    result = _demo(tmp_path, "--eval-episodes", "0")
    assert result.returncode == 2 and "--eval-episodes" in result.stderr


def test_the_default_configs_are_the_measured_learning_settings() -> None:
    from browser_control.sft.config import load_sft_config
    from browser_control.training.config import load_config

    sft = load_sft_config(str(REPO / "configs" / "demo_sft.yaml"), environ={})
    grpo = load_config(REPO / "configs" / "demo_grpo.yaml", environ={})
    # `make demo` measured these on 2 cores (benchmarks/RESULTS.md, "Demo": 50% -> 100% held out).
    assert (sft.max_steps, sft.max_demos_per_task, sft.learning_rate) == (12, 6, 3e-3)
    assert ([t.name for t in grpo.tasks], grpo.max_steps, grpo.learning_rate) == (
        ["focus-text", "click-dialog"],
        12,
        3e-4,
    )
    assert sft.max_episode_steps == grpo.max_episode_steps == 2
    assert not grpo.use_vllm


# -- progress read back from the commands' own bars ------------------------------------------------------------


def test_progress_is_read_from_the_commands_tqdm_bars(tmp_path: Path) -> None:
    from tqdm import tqdm

    from browser_control.demo import OutputReader

    stream = io.StringIO()
    reader = OutputReader(io.BytesIO(), tmp_path / "x.log")
    with tqdm(total=12, desc="demos", file=stream, mininterval=0) as bar:
        bar.update(5)
        bar.set_postfix_str("kept 4")
    with tqdm(total=4, desc="Map", file=stream, mininterval=0) as bar:
        bar.update(4)
    with tqdm(total=3, file=stream, mininterval=0) as bar:  # HF Trainer's bar has no description
        bar.update(2)
    text = stream.getvalue()
    reader.feed(text[: len(text) // 2])
    reader.feed(text[len(text) // 2 :] + "\nsome log line\ncheckpoint: /x/y\n")
    assert reader.progress({"demos"}, 12) == 5
    assert reader.progress({"demos"}, 99) == 0  # a bar of another size is another bar
    assert reader.progress({""}, 3) == 2
    assert reader.progress({"Map", ""}) == 6  # bars of other sizes, as asked
    assert reader.value("checkpoint: ") == "/x/y"
    assert "some log line" in reader.lines
    assert not any(re.search(r"\d+/\d+ \[", line) for line in reader.lines)


def test_make_demo_runs_the_demo_command() -> None:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "-m browser_control demo" in out


def test_children_run_this_source_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from browser_control.demo import child_env

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    env = child_env()
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "src")
    assert env["OMP_NUM_THREADS"] == "3"


@pytest.mark.browser
@pytest.mark.slow
def test_a_port_taken_before_the_service_binds_it_is_replaced(
    tmp_path: Path, chromium: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from browser_control import demo
    from browser_control.cli import build_parser

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        free_port = demo._free_port
        # Another program takes the port between the demo's check and the service's bind.
        monkeypatch.setattr(demo, "_free_port", lambda: next(ports, None) or free_port())
        args = build_parser().parse_args(["demo", "--output", str(tmp_path / "out")])
        plan = demo.make_plan(args)
        processes = demo.Processes(demo.child_env(), plan.output, plan.logs)
        try:
            runner = demo.Demo(plan, processes, io.StringIO())
            runner.start_service()
            assert runner.url and not runner.url.endswith(f":{taken}")
            assert len(processes.children) == 2 and processes.children[0].proc.returncode != 0
            assert "already in use" in (plan.logs / "serve-env.log").read_text()
        finally:
            processes.stop_all(20)


def test_stopping_the_demos_processes_leaves_the_callers_own_alone(tmp_path: Path) -> None:
    from browser_control import demo

    # Started before the demo's processes, as a test suite's shared service is: it is not the demo's to stop.
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        processes = demo.Processes(demo.child_env(), tmp_path, tmp_path)
        ours = processes.start("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
        processes.stop_all(10)
        assert ours.proc.poll() is not None
        assert foreign.poll() is None, "the demo's clean-up killed a process it did not start"
    finally:
        foreign.kill()
        foreign.wait(30)
