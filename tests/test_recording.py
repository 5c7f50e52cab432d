"""Episode recordings written during training (EpisodeMetrics) against the real service, read back by the viewer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser_control.recording import EpisodeRecorder, EpisodeTrace, trace_from_answers
from browser_control.training.rollouts import EnvironmentFactory, EpisodeMetrics, SaturationMonitor
from browser_control.viewer.store import Store

pytestmark = [pytest.mark.browser]


def _assistant(*calls: tuple[str, dict], content: str = "") -> dict:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls],
    }


def _play(factory: EnvironmentFactory) -> tuple[list, list]:
    """Four rollouts as TRL leaves them: environments after their tool calls, and the completions' messages."""
    envs = [factory() for _ in range(4)]
    rows = [("click-test", 11), ("click-test", 11), ("enter-text", 12), ("enter-text", 12)]
    for env, (task, seed) in zip(envs, rows, strict=True):
        env.reset(task_name=task, seed=seed)
    completions = []
    # solved at once
    completions.append([_assistant(("click", {"bid": "13"})), {"role": "tool", "content": envs[0].click(bid="13")}])
    # a refused action, then a tool call with a missing argument that never reaches the environment
    result = envs[1].click(bid="no such")
    completions.append(
        [
            _assistant(("click", {"bid": "no such"})),
            {"role": "tool", "content": result},
            _assistant(("fill", {"bid": "14"})),
            {"role": "tool", "content": "missing value"},
        ]
    )
    completions.append([{"role": "assistant", "content": "I am not sure."}])
    completions.append([{"role": "assistant", "content": "nothing"}])
    return envs, completions


def test_training_records_a_sample_of_rollouts_next_to_its_episode_log(env_url: str, tmp_path: Path) -> None:
    factory = EnvironmentFactory(env_url, max_episode_steps=3)
    envs, completions = _play(factory)
    run_dir = tmp_path / "checkpoints" / "runs" / "tiny-click-test-20260101-000000"
    step = [1]
    metrics = EpisodeMetrics(
        factory,
        SaturationMonitor(5),
        step_getter=lambda: step[0],
        episode_log=run_dir / "episodes.jsonl",
        recorder=EpisodeRecorder(run_dir),
        record_every=2,
        record_episodes=2,
        run_name=run_dir.name,
    )
    for step[0] in (1, 1, 2, 3):  # two generation batches in step 1; step 2 is not a recording step
        metrics(prompts=[[]] * 4, completions=completions, environments=envs, log_metric=lambda k, v: None)
    factory.close()

    records = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    traced = [[i for i, e in enumerate(r["episodes"]) if "trace" in e] for r in records]
    # step 1 (first batch only) and step 3: rollouts 0 and 2, one per GRPO group
    assert traced == [[0, 2], [], [], [0, 2]]
    first = EpisodeTrace.model_validate_json((run_dir / records[0]["episodes"][0]["trace"]).read_text())
    assert (first.source, first.task, first.seed, first.training_step, first.success) == (
        "training",
        "click-test",
        11,
        1,
        True,
    )
    assert first.goal and first.first_observation.startswith("Goal:")
    (click,) = first.steps
    assert (click.action, click.reward, click.done, click.error) == ("click('13')", 1.0, True, "")
    assert click.output == "[click(bid='13')]" and "Step 0 of 3" in click.observation
    no_call = EpisodeTrace.model_validate_json((run_dir / records[0]["episodes"][2]["trace"]).read_text())
    assert [s.error for s in no_call.steps] == ["no tool call: the episode ends here"]
    assert no_call.steps[0].output == "I am not sure."

    # the viewer lists every rollout of the log, with its training step; the sampled ones open step by step
    store = Store([("checkpoints", tmp_path / "checkpoints")])
    (recording,) = store.recordings()
    assert recording.kind == "training" and recording.rel == f"runs/{run_dir.name}"
    assert len(recording.rows) == 16 and {r.training_step for r in recording.rows} == {1, 2, 3}
    assert store.trace(recording, recording.rows[0]).steps[0].action == "click('13')"


def test_refused_and_broken_calls_are_paired_with_what_the_environment_answered(env_url: str) -> None:
    from browser_control.evaluation.policy import ToolCall

    factory = EnvironmentFactory(env_url, max_episode_steps=3)
    envs, _ = _play(factory)
    factory.close()
    steps, shots = trace_from_answers(
        envs[1]._answers,
        [
            ("<|tool_call_start|>[click(bid='no such')]", [ToolCall("click", {"bid": "no such"})]),
            ("[fill(bid='14')]", [ToolCall("fill", {"bid": "14"})]),
        ],
    )
    refused, broken = steps
    assert refused.action == "click('no such')" and refused.reached_service and refused.reward == 0.0
    assert "bid" in refused.error and refused.result.startswith("Invalid action:")
    assert broken.action is None and not broken.reached_service and "not a valid call" in broken.error
    assert broken.observation == refused.result  # what the model had in front of it
    assert shots == {1: None}  # the service runs without --screenshots


def test_the_disk_budget_stops_recording_but_not_the_log(tmp_path: Path) -> None:
    recorder = EpisodeRecorder(tmp_path, max_bytes=1)
    trace = EpisodeTrace(source="training", run="r", task="click-test", seed=1, success=False)
    assert recorder.write_trace(trace, "a") == "traces/a.json"
    assert recorder.write_trace(trace, "b") is None and recorder.traces_skipped == 1
    # a resumed run counts what is already on disk
    assert EpisodeRecorder(tmp_path, max_bytes=10_000).bytes_written == (tmp_path / "traces" / "a.json").stat().st_size


def test_checkpoints_are_listed_with_their_metrics_evaluation_and_training_episodes(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    good, bad = root / "tiny-click-test-20260101-000000", root / "tiny-mix-20260102-000000"
    for path in (good, bad):
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
    (good / "metrics.json").write_text(json.dumps({"global_step": 7, "recent": {"success/overall": 0.5}}))
    (bad / "metrics.json").write_text("{cut")
    EpisodeRecorder(good / "eval").append({"run": "x", "task": "click-test", "seed": 1, "success": True})
    EpisodeRecorder(root / "runs" / good.name).append({"step": 1, "episodes": []})
    (root / ".tmp-unfinished").mkdir()
    (root / ".tmp-unfinished" / "config.json").write_text("{}")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (root / "link").symlink_to(outside)

    listed = {c.name: c for c in Store([("checkpoints", root)]).checkpoints()}
    assert sorted(listed) == [good.name, bad.name]  # no unfinished checkpoint, no link leading outside
    assert listed[good.name].metrics["global_step"] == 7 and listed[good.name].problem is None
    assert listed[good.name].evaluation_key == f"0:{good.name}/eval"
    assert listed[good.name].training_key == f"0:runs/{good.name}"
    assert "metrics.json cannot be read" in (listed[bad.name].problem or "")
    assert listed[bad.name].evaluation_key is None and listed[bad.name].training_key is None


def test_a_recording_that_cannot_be_written_stops_but_the_evaluation_goes_on(env_url: str, tmp_path: Path) -> None:
    import errno

    from browser_control.evaluation import ScriptedPolicy, evaluate_policy

    class FullDisk(EpisodeRecorder):
        def write_trace(self, *args: object, **kwargs: object) -> str | None:
            raise OSError(errno.ENOSPC, "No space left on device")

    recorder = FullDisk(tmp_path)
    report = evaluate_policy(ScriptedPolicy(), ["click-test"], 2, env_url=env_url, progress=False, recorder=recorder)
    assert report.overall.successes == 2 and all(e.trace is None for e in report.episodes)
    assert recorder.failed is not None and "No space left" in recorder.failed


def test_a_faulted_rollout_is_recorded_as_no_data_not_as_a_failure(env_url: str, tmp_path: Path) -> None:
    from browser_control.client import EnvClient
    from browser_control.viewer.pages import success_chart

    factory = EnvironmentFactory(env_url, max_episode_steps=3, retries=1, backoff_s=0.05)
    lost, solved = factory(), factory()
    lost.reset(task_name="click-test", seed=31)
    solved.reset(task_name="click-test", seed=31)
    with EnvClient(env_url) as other:  # the session disappears under the episode
        other.close_session(lost._session_id)
    first, again = lost.click(bid="13"), lost.click(bid="13")
    solved.click(bid="13")
    run_dir = tmp_path / "checkpoints" / "runs" / "tiny-click-test-20260101-000000"
    metrics = EpisodeMetrics(
        factory,
        SaturationMonitor(5),
        step_getter=lambda: 1,
        episode_log=run_dir / "episodes.jsonl",
        recorder=EpisodeRecorder(run_dir),
        record_every=1,
        record_episodes=2,
        run_name=run_dir.name,
    )
    completions = [
        [
            _assistant(("click", {"bid": "13"})),
            {"role": "tool", "content": first},
            _assistant(("click", {"bid": "13"})),
            {"role": "tool", "content": again},
        ],
        [_assistant(("click", {"bid": "13"}))],
    ]
    metrics(
        prompts=[[]] * 2,
        completions=completions,
        environments=[lost, solved],
        log_metric=lambda k, v: None,
        task_name=["click-test"] * 2,
        seed=[31, 31],
    )
    factory.close()

    (record,) = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    faulted = record["episodes"][0]
    assert faulted["fault"] and "trace" in faulted and record["episodes"][1]["fault"] is None
    trace = EpisodeTrace.model_validate_json((run_dir / faulted["trace"]).read_text())
    assert trace.ended_by == "env_fault" and not trace.success
    failed, skipped = trace.steps
    assert failed.reached_service and failed.error and "not scored" in failed.result
    assert not skipped.reached_service and "already lost" in skipped.result

    store = Store([("checkpoints", tmp_path / "checkpoints")])
    (recording,) = store.recordings()
    assert [r.ended_by for r in recording.rows] == ["env_fault", "success"]
    # the chart scores the episode that ran: 1 of 1, not 1 of 2
    assert "1/1 = 100%" in success_chart(recording.rows, recording.runs, recording.tasks)
