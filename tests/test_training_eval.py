"""Held-out evaluation during training (config eval_steps), against the real service."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import httpx
import pytest

from browser_control.training.config import TrainConfig


def test_eval_keys_are_validated() -> None:
    config = TrainConfig(tasks=["click-test"], eval_steps=5, eval_tasks=["focus-text"])
    assert config.eval_steps == 5 and config.eval_episodes == 10
    with pytest.raises(ValueError, match="eval_steps"):
        TrainConfig(tasks=["click-test"], eval_steps=0)
    with pytest.raises(ValueError, match="eval_episodes"):
        TrainConfig(tasks=["click-test"], eval_episodes=0)


def test_held_out_evaluation_logs_success_to_tensorboard(clicking_model: Path, env_url: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

    from browser_control.training.callbacks import HeldOutEvaluation

    model = AutoModelForCausalLM.from_pretrained(clicking_model)
    tokenizer = AutoTokenizer.from_pretrained(clicking_model)
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    callback = HeldOutEvaluation(
        every=2,
        tasks=["click-test"],
        episodes=3,
        env_url=env_url,
        max_episode_steps=2,
        max_completion_tokens=512,
        writer=writer,
        record_dir=tmp_path / "eval",
    )
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    for step in (1, 2):
        callback.on_step_end(
            args, TrainerState(global_step=step), TrainerControl(), model=model, processing_class=tokenizer
        )
    writer.close()
    assert [h["step"] for h in callback.history] == [2]  # only on multiples of eval_steps
    # The imprinted model clicks bid 13, which solves every click-test instance.
    assert callback.history[0]["eval/success_rate"] == 1.0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    assert [(e.step, e.value) for e in scalars["eval/success_rate"]] == [(2, 1.0)]
    assert "eval/success_rate/click-test" in scalars

    # every episode of that evaluation is recorded step by step, with the model's generated text
    import json

    from browser_control.recording import EpisodeTrace

    recorded = tmp_path / "eval" / "step-000002"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step-000002"]
    lines = [json.loads(line) for line in (recorded / "episodes.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(line["run"] == "step-2" and line["success"] for line in lines)
    trace = EpisodeTrace.model_validate_json((recorded / lines[0]["trace"]).read_text())
    (step,) = trace.steps
    assert step.action == "click('13')" and step.reward == 1.0 and step.done
    assert "<|tool_call_start|>[click(bid='13')]<|tool_call_end|>" in (step.output or "")


def test_an_environment_fault_skips_one_held_out_evaluation_not_the_run(
    clicking_model: Path,
    chromium: str | None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service that answers but whose browser cannot start (503 browser_unavailable, for real)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

    from browser_control.client import EnvClient, EnvServiceUnavailable
    from browser_control.training.callbacks import HeldOutEvaluation
    from tests.conftest import ServiceProcess

    # The same retries as in training, without the 7.5 s of backoff sleep between them: what is tested is that
    # the client gives up and the evaluation is skipped, not how long the client waits first.
    monkeypatch.setattr(EnvClient, "__init__", functools.partialmethod(EnvClient.__init__, backoff_s=0.01))
    broken = tmp_path / "not-a-browser"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    service = ServiceProcess("--workers", "1", log_path=tmp_path / "serve.log", chromium=str(broken))
    model = AutoModelForCausalLM.from_pretrained(clicking_model)
    tokenizer = AutoTokenizer.from_pretrained(clicking_model)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    callback = HeldOutEvaluation(
        every=1,
        tasks=["click-test"],
        episodes=1,
        env_url=service.url,
        max_episode_steps=2,
        max_completion_tokens=256,
        writer=None,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # up and answering (its /health says 503: no browser)
            try:
                httpx.get(service.url + "/health", timeout=5)
                break
            except httpx.HTTPError:
                assert service.proc.poll() is None and time.monotonic() < deadline, service.log()
                time.sleep(0.2)
        callback.on_step_end(
            args, TrainerState(global_step=1), TrainerControl(), model=model, processing_class=tokenizer
        )
        assert callback.skipped == [1] and callback.history == []
        assert "held-out evaluation at step 1 skipped" in caplog.text
    finally:
        service.stop()
    # a service that is gone is still fatal
    with pytest.raises(EnvServiceUnavailable):
        callback.on_step_end(
            args, TrainerState(global_step=2), TrainerControl(), model=model, processing_class=tokenizer
        )
