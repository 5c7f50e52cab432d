"""Environment faults during real GRPO training: an episode whose browser fails is no data, never a 0.

The fault is real: the Chromium renderer processes of the service's own process tree are killed in the
middle of a training step, so every open page crashes while the service and its browser stay up.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from browser_control.client import EnvClient, EnvRequestError
from browser_control.rollout.environment import BrowserEnvironment
from browser_control.training.config import TrainConfig
from tests.conftest import ServiceProcess, tiny_training_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _kill_renderers(service_pid: int) -> int:
    killed = 0
    for proc in psutil.Process(service_pid).children(recursive=True):
        try:
            if "--type=renderer" in " ".join(proc.cmdline()):
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return killed


@pytest.mark.timeout(900)
def test_crashed_pages_mid_step_are_no_data_and_the_run_goes_on(
    clicking_model: Path, chromium: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from browser_control.training.trainer import train

    service = ServiceProcess("--workers", "1", log_path=tmp_path / "serve.log", chromium=chromium)
    try:
        service.wait_healthy()
        config = TrainConfig.model_validate(
            tiny_training_config(
                model_name=str(clicking_model),
                browsergym_url=service.url,
                max_steps=3,
                save_steps=50,
                seed=5,
                checkpoint_dir=str(tmp_path / "ck"),
                logging_dir=str(tmp_path / "tb"),
            )
        )
        for name in ("BROWSERGYM_URL", "CHECKPOINT_DIR", "LOGGING_DIR"):
            monkeypatch.delenv(name, raising=False)

        # Spies on the real calls: which sessions the service failed (not a refused action), and what
        # reward each episode was given.
        failed_sessions: set[str] = set()
        rewards: list[tuple[str | None, Any]] = []
        killed: list[int] = []
        original_step, original_reset, original_reward = (
            EnvClient.step,
            BrowserEnvironment.reset,
            BrowserEnvironment.get_reward,
        )

        def recording_step(self: EnvClient, session_id: str, action: str) -> Any:
            try:
                return original_step(self, session_id, action)
            except EnvRequestError as exc:
                if exc.status != 422:
                    failed_sessions.add(session_id)
                raise

        resets: list[int] = []

        def reset_then_crash_the_pages_of_step_2(self: BrowserEnvironment, *args: Any, **kwargs: Any) -> str:
            observation = original_reset(self, *args, **kwargs)
            resets.append(1)
            if len(resets) == 8:  # every rollout of step 2 has its first page: crash them before any action
                killed.append(_kill_renderers(service.proc.pid))
            return observation

        def recording_reward(self: BrowserEnvironment) -> Any:
            reward = original_reward(self)
            rewards.append((self._session_id, reward))
            return reward

        from browser_control.rollout.concurrency import ConcurrentRolloutsMixin

        advantages: list[list[float]] = []
        original_generate = ConcurrentRolloutsMixin._generate_and_score_completions

        def recording_generate(self: Any, inputs: Any) -> Any:
            output = original_generate(self, inputs)
            advantages.append(output["advantages"].tolist())
            return output

        monkeypatch.setattr(ConcurrentRolloutsMixin, "_generate_and_score_completions", recording_generate)
        monkeypatch.setattr(EnvClient, "step", recording_step)
        monkeypatch.setattr(BrowserEnvironment, "reset", reset_then_crash_the_pages_of_step_2)
        monkeypatch.setattr(BrowserEnvironment, "get_reward", recording_reward)

        final = train(config)  # the next resets after the crash must not raise: the run goes on
    finally:
        service.stop()

    assert killed and killed[0] >= 1
    assert failed_sessions, "no tool call met the crashed pages"
    assert len(rewards) == 12
    step2 = rewards[4:8]
    for session_id, reward in step2:
        if session_id in failed_sessions:
            assert reward is None, f"an environment fault was scored {reward}"
    assert any(reward is None for _, reward in step2)
    # TRL 1.16 drops a completion whose rewards are all None from its group: zero advantage, and the
    # other rollout of the group is not measured against a 0 (a lone scored rollout has no spread either)
    assert len(advantages) == 3
    for i in range(len(step2)):
        group = step2[i - i % 2 : i - i % 2 + 2]
        if any(r is None for _, r in group):
            assert advantages[1][i] == 0.0, (advantages[1], step2)
    # after the crash, the next batch played normally: reset revived or replaced the sessions
    assert all(isinstance(reward, float) for _, reward in rewards[8:])

    assert json.loads((final / "metrics.json").read_text())["global_step"] == 3
    records = [
        json.loads(line) for line in (tmp_path / "ck" / "runs" / final.name / "episodes.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2, 3]
    faults = [[e["fault"] for e in r["episodes"]] for r in records]
    assert faults[0] == [None] * 4 and faults[2] == [None] * 4
    assert sum(f is not None for f in faults[1]) == sum(r is None for _, r in step2) >= 1
    summary = json.loads((final / "metrics.json").read_text())
    assert 0 < summary["recent"]["env/fault_rate"] <= 1
    success = summary["recent"].get("success/overall")
    assert success is not None and not math.isnan(success)
