"""What a new user types, or leaves in the environment, gets a clear answer at once.

serve-env's port is checked before any browser starts; bad environment values fail only the command
that reads them, in one line naming the variable; --help shows real defaults; training says what it is
waiting for; the helper scripts do what their help says.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from browser_control.cli import COMMAND_MODULES, main
from tests.conftest import REPO, free_port, load_benchmark, subprocess_env


def _one_error_line(capsys: pytest.CaptureFixture[str], code: int | None) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # no usage block: the command line was fine, the environment was not
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PORT", "abc", "PORT='abc' in the environment: expected a whole number"),
        ("PORT", "99999", "PORT='99999' in the environment: must be from 1 to 65535"),
        ("MAX_SESSIONS", "0", "MAX_SESSIONS='0' in the environment: must be >= 1"),
        ("BROWSER_WORKERS", "four", "BROWSER_WORKERS='four' in the environment: expected a whole number"),
        ("SESSION_TTL_S", "-5", "SESSION_TTL_S='-5' in the environment: must be > 0"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL='verbose' in the environment: expected one of debug, info"),
        ("SCREENSHOTS", "maybe", "SCREENSHOTS='maybe' in the environment: expected 1/true/yes/on"),
    ],
)
def test_a_bad_environment_value_fails_serve_env_in_one_line(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    # Should the value be accepted after all, the run stops at this check instead of serving forever.
    monkeypatch.setenv("CHROMIUM_EXECUTABLE", "/nonexistent/chromium")
    try:
        code = main(["serve-env"])
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    line = _one_error_line(capsys, code)
    assert line.startswith("browser-control serve-env: error:") and expected in line


def test_bad_environment_values_leave_the_other_commands_working(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable, value in {"PORT": "abc", "MAX_SESSIONS": "x", "LOG_LEVEL": "loud", "SCREENSHOTS": "2"}.items():
        monkeypatch.setenv(variable, value)
    assert main(["checkpoints", "--checkpoint-dir", str(tmp_path), "list"]) == 0
    assert main(["evaluate", "--list-suites"]) == 0
    capsys.readouterr()
    config = tmp_path / "run.yaml"
    config.write_text("tasks: [click-test]\n")
    assert main(["train", "--config", str(config), "--print-config"]) == 0
    assert "tasks:" in capsys.readouterr().out


def test_bad_environment_values_of_train_and_evaluate_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("tasks: [click-test]\n")
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["train", "--config", str(config), "--print-config"]) == 2
    assert "WORLD_SIZE='two' in the environment: expected a whole number >= 1" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("BROWSERGYM_URL", "localhost:8000")
    assert main(["train", "--config", str(config), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "BROWSERGYM_URL='localhost:8000' in the environment: browsergym_url: expected an http(s) URL" in err
    assert main(["evaluate", "--policy", "scripted", "--suite", "scripted"]) == 2
    assert "BROWSERGYM_URL='localhost:8000': expected an http(s) URL" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--print-config", "--set", "max_steps=0"]) == 2
    assert "--set: max_steps:" in capsys.readouterr().err


def test_an_out_of_range_port_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for port in ("99999", "0", "-1"):
        with pytest.raises(SystemExit) as info:
            main(["serve-env", "--port", port, "--chromium-executable", "/nonexistent/chromium"])
        assert info.value.code == 2
        assert "argument --port: must be from 1 to 65535" in capsys.readouterr().err


def _launch_recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A 'Chromium' that only records that it was launched, then fails."""
    marker = tmp_path / "launched"
    fake = tmp_path / "chromium"
    fake.write_text(f"#!/bin/sh\necho launched >> '{marker}'\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake, marker


@pytest.mark.timeout(300)
def test_serve_env_reports_a_busy_port_before_starting_any_browser(tmp_path: Path) -> None:
    fake_chromium, marker = _launch_recorder(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "browser_control",
                "serve-env",
                "--port",
                str(port),
                "--workers",
                "2",
                "--chromium-executable",
                str(fake_chromium),
            ],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port or PORT" in result.stderr
    assert not marker.exists()  # no browser was launched for a service that could never listen


def test_port_check_accepts_a_free_port_and_names_a_bad_host() -> None:
    from browser_control.env_service.cli import port_problem

    assert port_problem("127.0.0.1", free_port()) is None
    assert "is not an address or name of this machine" in (port_problem("no-such-host.invalid", 8000) or "")


@pytest.mark.parametrize("command", sorted(COMMAND_MODULES))
def test_help_shows_only_real_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text


def test_training_says_what_it_waits_for(caplog: pytest.LogCaptureFixture) -> None:
    from browser_control.client import EnvServiceUnavailable
    from browser_control.training.preflight import wait_for_service

    url = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO), pytest.raises(EnvServiceUnavailable) as info:
        wait_for_service(url, timeout_s=1.5, report_every_s=0.5)
    waiting = [r.getMessage() for r in caplog.records if "waiting for the environment service" in r.getMessage()]
    assert waiting, caplog.text
    assert url in waiting[0] and "s left of env_wait_s=1.5" in waiting[0] and "browser-control serve-env" in waiting[0]
    assert f"the environment service at {url} was not healthy within" in str(info.value)
    assert "(env_wait_s)" in str(info.value)


def test_dev_setup_help_prints_help_and_installs_nothing(tmp_path: Path) -> None:
    # A copy of the script, so that a script that ignores --help could only touch tmp_path.
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "dev_setup.sh"
    script.write_text((REPO / "scripts" / "dev_setup.sh").read_text())
    env = dict(os.environ, PYTHON_BIN="false")
    for flag in ("--help", "-h"):
        result = subprocess.run(["bash", str(script), flag], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Usage: scripts/dev_setup.sh" in result.stdout and "PYTHON_BIN" in result.stdout
    assert not (tmp_path / ".venv").exists()
    result = subprocess.run(["bash", str(script), "--bogus"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument '--bogus'" in result.stderr


def test_documented_outputs_are_ignored_by_git() -> None:
    paths = ["evaluations/20260101-120000/report.md", "data/demos.jsonl", "runs/x/events", "checkpoints/x/a"]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    if result.returncode == 128:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    assert result.stdout.split() == paths


def test_learning_curve_writes_results_under_its_output_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_benchmark("learning_curve")

    def point(step: int, successes: int) -> dict[str, Any]:
        rate = successes / 20
        return {
            "grpo_step": step,
            "success": {"click-test": rate},
            "successes": {"click-test": successes},
            "interval": {"click-test": (rate - 0.2, rate + 0.2)},
            "overall": rate,
            "episodes_per_task": 20,
        }

    result = {
        "tasks": ["click-test"],
        "curve": [point(0, 10), point(4, 15)],
        "timings_s": {"demos_s": 1, "sft_s": 2, "grpo_s": 3, "evaluation_s": 4},
        "total_s": 10,
        "machine": "test",
        "settings": {"demo_answers": "shuffled"},
    }
    row = re.compile(r"\| click-test \| - \| 50% \[30, 70\] \| 75% \[55, 95\] \| \+25 \[")
    out = tmp_path / "out"
    out.mkdir()
    png = out / "learning_curve.png"
    png.write_bytes(b"png")
    shipped = tmp_path / "benchmarks" / "RESULTS.md"
    shipped.parent.mkdir()
    shipped.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    section = module.publish(result, png, "python benchmarks/learning_curve.py")
    assert section == out / "RESULTS-learning.md"
    assert row.search(section.read_text()) and "| overall | | 50% | 75% | +25 | |" in section.read_text()
    assert row.search(capsys.readouterr().out)
    assert shipped.read_text() == "# Benchmark results\n\n## Other\n\nkept\n"  # untouched without --results
    module.publish(result, png, "python benchmarks/learning_curve.py --results RESULTS.md", results=shipped)
    text = shipped.read_text()
    assert "## Other\n\nkept" in text and "## Learning" in text and (shipped.parent / "learning_curve.png").exists()
    # A new run replaces the generated part; the hand-written subsections under it stay.
    shipped.write_text(text.rstrip("\n") + "\n\n### Notes on the runs\n\nhand-written\n\n## Last\n\nkept too\n")
    result["curve"][-1] = point(4, 20)
    module.publish(result, png, "python benchmarks/learning_curve.py --results RESULTS.md", results=shipped)
    text = shipped.read_text()
    assert "| 100% [80, 120] |" in text and "| 75% [55, 95] |" not in text
    assert text.count("## Learning") == 1 and "### Notes on the runs\n\nhand-written" in text
    assert "## Other\n\nkept" in text and text.endswith("## Last\n\nkept too\n")


def test_learning_curve_evaluate_only_names_its_training_or_says_what_is_missing(tmp_path: Path) -> None:
    module = load_benchmark("learning_curve")

    with pytest.raises(SystemExit, match=r"no .*training\.json; train first"):
        module.read_training(tmp_path)
    (tmp_path / "training.json").write_text("{not json")
    with pytest.raises(SystemExit, match="is not JSON"):
        module.read_training(tmp_path)
    (tmp_path / "training.json").write_text("[]")
    with pytest.raises(SystemExit, match="holds no training record"):
        module.read_training(tmp_path)
    record = {
        "sft_checkpoint": "checkpoints/sft-1",
        "grpo_checkpoint": "checkpoints/grpo-1",
        "timings_s": {"grpo_s": 1472.0},
        "command": "python benchmarks/learning_curve.py --device cuda",
        "machine": "x86_64, 16 cores, Linux, NVIDIA H200",
        "device": "cuda",
    }
    (tmp_path / "training.json").write_text(json.dumps(record))
    (tmp_path / "checkpoints" / "sft-1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "sft-1" / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"grpo_checkpoint .checkpoints/grpo-1. .* not a finished checkpoint"):
        module.read_training(tmp_path)
    (tmp_path / "checkpoints" / "grpo-1").mkdir()
    (tmp_path / "checkpoints" / "grpo-1" / "metrics.json").write_text("{}")
    assert module.read_training(tmp_path) == record

    result = {
        "settings": {},
        "machine": record["machine"],
        "device": "cuda",
        "training_command": record["command"],
        "evaluation_machine": "x86_64, 2 cores, Linux",
        "evaluation_device": "cpu",
    }
    lines = module._provenance(result, "python benchmarks/learning_curve.py --evaluate-only")
    assert lines[0].startswith("Training: `python benchmarks/learning_curve.py --device cuda` on x86_64, 16 cores")
    assert lines[1].startswith("Evaluation: `python benchmarks/learning_curve.py --evaluate-only` on x86_64, 2 cores")
    assert module._provenance(result, record["command"])[0] == f"Command: `{record['command']}`  "


@pytest.mark.timeout(300)
def test_learning_curve_starts_replicas_and_trains_on_all_of_them(tmp_path: Path) -> None:
    import httpx

    from browser_control.training.config import TrainConfig

    module = load_benchmark("learning_curve")

    service = module.Service(None, workers=1, log=tmp_path / "serve-env.log", replicas=2)
    try:
        service.wait(timeout_s=240)
        urls = service.training_url.split(",")
        assert len(set(urls)) == 2 and service.url == urls[0]
        assert all(httpx.get(url + "/health", timeout=30).status_code == 200 for url in urls)
        assert sorted(p.name for p in tmp_path.glob("serve-env-*.log")) == ["serve-env-0.log", "serve-env-1.log"]
        # the trainer's config takes the list as a pool of replicas
        config = TrainConfig(browsergym_url=service.training_url, tasks=["focus-text-2"])
        assert config.browsergym_url == service.training_url
    finally:
        service.stop()
    assert all(process.proc.poll() is not None for process in service.processes)


def test_learning_curve_gives_training_the_replicas_and_the_rest_one_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_benchmark("learning_curve")
    calls: list[list[str]] = []

    def fake_cli(args: list[str], log: Path) -> str:
        calls.append(args)
        return f"checkpoint: {tmp_path / 'checkpoints' / args[0]}\n"

    monkeypatch.setattr(module, "_cli", fake_cli)
    (tmp_path / "tiny-lfm2").mkdir()
    (tmp_path / "tiny-lfm2" / "config.json").write_text("{}")  # the model is built already
    args = argparse.Namespace(
        out=tmp_path,
        tasks="focus-text-2",
        demos=2,
        max_episode_steps=1,
        demo_answers="scripted",
        sft_config=REPO / "configs" / "sft_learning.yaml",
        grpo_config=REPO / "configs" / "learning_grpo.yaml",
        sft_set=[],
        grpo_set=[],
    )
    record = module.train(args, "http://127.0.0.1:1", "http://127.0.0.1:1,http://127.0.0.1:2")
    demos, sft, grpo = calls
    assert demos[0] == "demos" and demos[demos.index("--browsergym-url") + 1] == "http://127.0.0.1:1"
    assert sft[0] == "sft" and grpo[0] == "train"
    assert "browsergym_url=http://127.0.0.1:1,http://127.0.0.1:2" in grpo
    assert record["sft_checkpoint"] == "checkpoints/sft" and record["grpo_checkpoint"] == "checkpoints/train"
    assert json.loads((tmp_path / "training.json").read_text()) == record


def test_bid_probe_holds_out_the_later_seeds_of_every_task_and_refuses_a_split_bid(tmp_path: Path) -> None:
    module = load_benchmark("bid_probe")

    class CharTokenizer:  # one token per character: a two-digit bid is two tokens
        def apply_chat_template(self, messages: list[dict], **_: Any) -> str:
            return "".join(m["content"] for m in messages)

        def __call__(self, text: str, add_special_tokens: bool = False) -> argparse.Namespace:
            return argparse.Namespace(input_ids=[ord(c) for c in text])

    def record(task: str, seed: int, bid: str) -> dict[str, Any]:
        call = {"function": {"name": "click", "arguments": {"bid": bid}}}
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": f"goal {seed}"}]
        answer = {"role": "assistant", "content": "", "tool_calls": [call]}
        return {"task_name": task, "seed": seed, "tools": [], "messages": [*messages, answer]}

    demos = tmp_path / "demos.jsonl"
    rows = [record(task, seed, "7") for task in ("a", "b") for seed in (5, 1, 3, 2, 4)]
    demos.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = module.load_prompts(demos, None, CharTokenizer())
    assert len(prompts) == 10 and {p.bid for p in prompts} == {ord("7")}
    assert prompts[0].same_role == (ord("7"),)  # no page in the prompt: the answer is its only candidate
    assert prompts[0].ids[-len("[click(bid='") :] == [ord(c) for c in "[click(bid='"]
    train, held_out = module.split_by_seed(prompts, 0.6)
    assert sorted((p.task, p.seed) for p in held_out) == [("a", 4), ("a", 5), ("b", 4), ("b", 5)]
    assert len(train) == 6
    # The same-role start's candidates: the page's elements of the answer's role, read from the observation.
    page = record("a", 1, "7")
    page["messages"][1]["content"] = (
        "MiniWoB task 'a'.\nGoal: Click on the \"no\" button.\nStep 0 of 1. Last action error: none\nPage:\n"
        "RootWebArea 'Task', focused\n\t[6] textbox ''\n\t[7] button 'no'\n\tStaticText 'x'\n\t[9] button 'yes'\n"
    )
    demos.write_text(json.dumps(page) + "\n")
    assert module.load_prompts(demos, None, CharTokenizer())[0].same_role == (ord("7"), ord("9"))
    demos.write_text(json.dumps(record("a", 1, "12")) + "\n")
    with pytest.raises(SystemExit, match="is 2 tokens"):
        module.load_prompts(demos, None, CharTokenizer())


def test_bid_probe_filtered_mode_learns_from_rewarded_samples_and_stops_at_its_deadline(tmp_path: Path) -> None:
    def record(seed: int) -> dict[str, Any]:
        word, bid = ("no", "7") if seed % 2 else ("yes", "9")
        page = (
            f"MiniWoB task 'click-button'.\nGoal: Click on the \"{word}\" button.\nStep 0 of 1. Last action error: "
            "none\nPage:\nRootWebArea 'Task', focused\n\t[7] button 'no'\n\tStaticText 'x'\n\t[9] button 'yes'\n"
        )
        call = {"function": {"name": "click", "arguments": {"bid": bid}}}
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": page}]
        answer = {"role": "assistant", "content": "", "tool_calls": [call]}
        return {"task_name": "click-button", "seed": seed, "tools": [], "messages": [*messages, answer]}

    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(record(seed)) + "\n" for seed in range(1, 11)))
    probe = [sys.executable, str(REPO / "benchmarks" / "bid_probe.py"), "--demos", str(demos), "--work", str(tmp_path)]
    small = ["--hidden-size", "32", "--layers", "2", "--attention-layers", "1", "--batch", "6", "--generations", "3"]
    result = subprocess.run(
        [*probe, *small, "--mode", "filtered", "--start-steps", "2", "--steps", "1000", "--eval-every", "500",
         "--deadline-s", "0.001"],
        env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["settings"]["mode"] == "filtered" and (lines[0]["train"], lines[0]["held_out"]) == (6, 4)
    # the start's report, then one step: the deadline passed during it, and the probe evaluated and stopped
    assert [line["step"] for line in lines[1:]] == [0, 1] and lines[-1]["samples"] == 6
    assert lines[-1]["random_same_role"] == {"click-button": 0.5} and "click-button" in lines[-1]["held_out"]

    for bad, message in ((["--deadline-s", "0"], "--deadline-s must be positive"),
                         (["--mode", "filtered", "--batch", "6", "--generations", "4"], "multiple of --generations"),
                         ([*small, "--batch", "8"], "--batch 8 is more than the 6 training prompts")):  # fmt: skip
        result = subprocess.run([*probe, *bad], env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 2 and message in result.stderr


def test_bid_probe_chart_draws_runs_of_every_mode_and_refuses_a_run_without_evaluations(tmp_path: Path) -> None:
    def run(mode: str, rates: list[float]) -> str:
        rows = [{"train": 6, "held_out": 4, "settings": {"mode": mode}}] + [
            {"step": 10 * i, "samples": 640 * i, "held_out": {"click-button": rate},
             "best_fixed_answer": {"click-button": 0.16}, "random_same_role": {"click-button": 0.6}}
            for i, rate in enumerate(rates)
        ]  # fmt: skip
        return "".join(json.dumps(row) + "\n" for row in rows)

    (tmp_path / "sup.jsonl").write_text(run("supervised", [0.2, 0.5, 0.6]))
    (tmp_path / "rl.jsonl").write_text(run("reinforce", [0.16, 0.2]))
    chart = [sys.executable, str(REPO / "benchmarks" / "bid_probe_chart.py"), "--out", str(tmp_path / "c.png")]
    result = subprocess.run(
        [*chart, f"labelled=a=b={tmp_path / 'sup.jsonl'}", str(tmp_path / "rl.jsonl")],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "stopped.jsonl").write_text(run("reinforce", []))
    stopped, missing = tmp_path / "stopped.jsonl", tmp_path / "none.jsonl"
    for bad, message in ((stopped, "no evaluation lines"), (missing, "no such file")):
        result = subprocess.run([*chart, str(bad)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and message in result.stderr
