"""`browser-control view` in real Chromium, over recordings made by the real scripted evaluation.

The recordings come from `browser-control evaluate --policy scripted --screenshots` against a real
environment service started with --screenshots; the viewer runs as its own process, as a user starts it,
and a real Chromium (Playwright) loads its pages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from browser_control.cli import main
from browser_control.recording import EPISODES_FILE, EpisodeRecorder, EpisodeTrace, TraceStep
from tests.conftest import ServiceProcess, free_port, subprocess_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TASKS = "click-test,enter-text"


@pytest.fixture(scope="module")
def screenshot_service(chromium: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "--workers",
        "1",
        "--screenshots",
        log_path=tmp_path_factory.mktemp("viewer-env") / "serve-env.log",
        chromium=chromium,
    )
    try:
        service.wait_healthy(timeout_s=120)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def logs(screenshot_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logs directory with two scripted evaluations of the same tasks and seeds (two 'checkpoints')."""
    root = tmp_path_factory.mktemp("logs")
    for name, offset in (("eval-a", "0"), ("eval-b", "0")):
        status = main(
            [
                "evaluate",
                "--policy",
                "scripted",
                "--tasks",
                TASKS,
                "--episodes",
                "2",
                "--seed-offset",
                offset,
                "--browsergym-url",
                screenshot_service.url,
                "--output",
                str(root / name),
                "--quiet",
                "--screenshots",
                "--concurrency",
                "2",
            ]
        )
        assert status == 0
    return root


class Viewer:
    def __init__(self, *args: str, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "browser_control", "view", "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
            # SIGINT inherited as ignored, as a job started in the background (`make test &`, a CI runner's
            # job) gets it: the viewer must still stop on Ctrl-C (else every stop() waits out its deadline).
            preexec_fn=_ignore_sigint,
        )
        self.stopped_by_ctrl_c: bool | None = None

    def wait_up(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the viewer did not answer within {timeout_s} s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.stopped_by_ctrl_c = self.proc.wait(20) == 0
            except subprocess.TimeoutExpired:
                self.stopped_by_ctrl_c = False
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture()
def start_viewer(tmp_path: Path) -> Iterator:
    started: list[Viewer] = []

    def start(*args: str) -> Viewer:
        viewer = Viewer(*args, log_path=tmp_path / f"view-{len(started)}.log")
        started.append(viewer)
        viewer.wait_up()
        return viewer

    yield start
    for viewer in started:
        viewer.stop()


@pytest.fixture(scope="module")
def browser(chromium: str | None) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium) if chromium else pw.chromium.launch()
        yield launched
        launched.close()


@pytest.fixture()
def page(browser) -> Iterator:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    # Offline: any request that leaves the viewer fails the test.
    outside: list[str] = []
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("http://127.0.0.1:")
            else (outside.append(route.request.url), route.abort())
        ),
    )
    page = context.new_page()
    yield page
    context.close()
    assert not outside, f"the page fetched from elsewhere: {outside}"


def _image_loaded(page, selector: str, timeout_ms: float = 60_000) -> bool:  # type: ignore[no-untyped-def]
    """The image decoded (natural width > 0) within the deadline: a loaded machine may still be fetching it
    when the page's other content is there; a broken image never gets a width and fails at the deadline."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        page.wait_for_function(
            "sel => { const img = document.querySelector(sel); return !!img && img.complete && img.naturalWidth > 0; }",
            arg=selector,
            timeout=timeout_ms,
        )
    except PlaywrightTimeoutError:
        return False
    return True


@pytest.mark.timeout(600)
def test_lists_an_evaluation_opens_an_episode_and_shows_its_steps_and_screenshots(
    logs: Path, start_viewer, page, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    viewer = start_viewer("--logs", str(logs))
    response = page.goto(viewer.url + "/")
    assert response.status == 200
    runs = page.locator("#runs")
    assert runs.locator("a", has_text="eval-a").count() == 1
    assert runs.locator("tr", has_text="eval-a").inner_text().count("100% (4/4)") == 1
    page.locator("#runs a", has_text="eval-a").click()

    # the run: a chart with a bar per task, and the four episodes
    assert page.locator("svg#chart text", has_text="click-test").count() == 1
    assert page.locator("svg#chart text", has_text="enter-text").count() == 1
    assert page.locator("svg#chart title", has_text="2/2 = 100% (95% CI").count() >= 2
    assert page.locator("#episodes tr.episode").count() == 4
    assert page.locator("#count").inner_text() == "4 of 4 episodes"
    page.select_option("#filters select[name=task]", "enter-text")
    page.click("#filters button")
    assert page.locator("#count").inner_text() == "2 of 4 episodes"
    page.locator("#episodes tr.episode a").first.click()

    # one episode, step by step: goal, page text with the target marked, the action, reward, screenshots
    assert "enter-text" in page.locator("h1").inner_text()
    assert page.locator("text=Goal:").count() >= 1
    assert "Step 0 of" in page.locator("#step-0 pre.page").inner_text()
    assert _image_loaded(page, "#step-0 img.shot")
    fill = page.locator("#step-1")
    assert fill.locator(".action").inner_text().startswith("fill(")
    assert "textbox" in fill.locator("pre.page mark").inner_text()
    assert _image_loaded(page, "#step-1 img.shot")
    last = page.locator("#step-2")
    assert last.locator(".action").inner_text().startswith("click(")
    assert "reward 1, done yes" in last.inner_text()
    assert _image_loaded(page, "#step-2 img.shot")
    page.screenshot(path=str(tmp_path / "episode.png"), full_page=True)

    # the same instance in the other evaluation, side by side
    page.locator("#elsewhere a", has_text="eval-b").click()
    columns = page.locator("#side-by-side .column")
    assert columns.count() == 2
    for i in range(2):
        assert columns.nth(i).locator(".step .action").first.inner_text().startswith("fill(")
        assert _image_loaded(page, f"#side-by-side .column:nth-child({i + 1}) img.shot")


def test_compare_form_pairs_the_runs_task_instances(logs: Path, start_viewer, page) -> None:  # type: ignore[no-untyped-def]
    viewer = start_viewer("--logs", str(logs))
    page.goto(viewer.url + "/")
    page.click("#compare-form button")
    pairs = page.locator("#pairs tr")
    assert pairs.count() == 1 + 4  # header + 2 tasks x 2 seeds
    legend = page.locator(".legend").inner_text()
    assert "left: eval-a · scripted" in legend and "right: eval-b · scripted" in legend
    assert page.locator("svg#chart title", has_text="all tasks: 4/4").count() == 2
    page.locator("#pairs a").first.click()
    assert page.locator("#side-by-side .column").count() == 2


def _copy_run(logs: Path, tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    shutil.copytree(logs / "eval-a", root / "eval-a")
    return root


def test_a_missing_log_directory_is_explained(start_viewer, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    viewer = start_viewer("--logs", str(tmp_path / "nothing-here"), "--checkpoints", str(tmp_path / "none-either"))
    response = page.goto(viewer.url + "/")
    assert response.status == 200
    assert "does not exist (yet)" in page.locator("#root-problem-0").inner_text()
    assert "does not exist (yet)" in page.locator("#root-problem-1").inner_text()
    assert "No recorded episodes yet" in page.locator("#no-runs").inner_text()
    viewer.stop()  # Ctrl-C, with a browser still connected: the viewer ends, exit status 0
    assert viewer.stopped_by_ctrl_c, viewer.log_path.read_text()


def test_corrupt_and_half_written_files_are_reported_and_the_rest_is_shown(
    logs: Path, start_viewer, page, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    root = _copy_run(logs, tmp_path)
    run = root / "eval-a"
    lines = (run / EPISODES_FILE).read_text().splitlines(keepends=True)
    first_trace = json.loads(lines[0])["trace"]
    # a line of garbage in the middle and a last line cut short, as a crash mid-write leaves it
    (run / EPISODES_FILE).write_text(lines[0] + "{not json\n" + "".join(lines[1:]) + lines[1][: len(lines[1]) // 2])
    (run / first_trace).write_text((run / first_trace).read_text()[:100])  # a damaged trace
    (root / "empty").mkdir()
    (root / "empty" / EPISODES_FILE).write_text("")
    viewer = start_viewer("--logs", str(root))

    page.goto(viewer.url + "/")
    page.locator("#runs a", has_text="eval-a").click()
    problems = page.locator(".problem").all_inner_texts()
    assert any("line 2: not valid JSON" in p for p in problems), problems
    assert any("the last line (6) is cut short" in p for p in problems), problems
    assert page.locator("#episodes tr.episode").count() == 4

    response = page.goto(viewer.url + "/episode?r=0:eval-a&n=0")
    assert response.status == 200
    assert "Trace corrupt" in page.locator("#no-trace").inner_text()
    assert "click(" in page.locator("pre").first.inner_text()  # the summary's actions are still shown

    page.goto(viewer.url + "/run?r=0:empty")
    assert "is empty: no episode has finished yet" in page.locator(".problem").inner_text()


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/run?r=0:../..", 403, "leads outside"),
        ("/run?r=0:/etc", 403, "is not a path relative to"),
        ("/run?r=7:eval-a", 404, "there is no directory number 7"),
        ("/run?r=0:outside-link", 403, "leads outside"),
        ("/shot?r=0:eval-a&n=1&f=../../../secret.png", 403, "leads outside"),
        ("/shot?r=0:eval-a&n=1&f=../episodes.jsonl", 403, "only serves PNG"),
        ("/episode?r=0:eval-a&n=999", 404, "there is no episode 999"),
        ("/episode?r=0:eval-a&n=abc", 400, "is not a number"),
        ("/run?r=0:eval-a&seed=x", 400, "seed must be a whole number"),
        ("/run?r=0:no-such-run", 404, "is not a directory"),
        ("/nowhere", 404, "there is no page"),
    ],
)
def test_bad_addresses_get_a_page_that_says_why(
    logs: Path, start_viewer, page, tmp_path: Path, path: str, status: int, message: str
) -> None:  # type: ignore[no-untyped-def]
    root = _copy_run(logs, tmp_path)
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    (root / "outside-link").symlink_to(tmp_path)
    viewer = start_viewer("--logs", str(root))
    response = page.goto(viewer.url + path)
    assert response.status == status
    assert message in page.locator("#error").inner_text()
    assert "secret" not in page.content().replace("secret.png", "")


def test_a_log_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "browser_control", "view", "--logs", str(tmp_path / "file")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "browser_control", "view"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and "give --logs DIR" in proc.stderr


def test_thousands_of_episodes_are_paged(start_viewer, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recorder = EpisodeRecorder(tmp_path / "logs" / "big", fresh=True)
    for i in range(2400):
        task = ("click-test", "enter-text", "focus-text")[i % 3]
        success = i % 4 != 0
        if i % 500 == 0:
            trace = EpisodeTrace(
                source="evaluation",
                run="big",
                task=task,
                seed=i,
                success=success,
                steps=[TraceStep(index=1, observation="Goal: x", action="click('13')")],
            )
            path = recorder.write_trace(trace, f"big-{i}")
        else:
            path = None
        recorder.append(
            {
                "run": "big",
                "task": task,
                "seed": i,
                "success": success,
                "steps": 1,
                "tool_calls": 1,
                "invalid_actions": int(not success),
                "ended_by": "success" if success else "failed",
                "actions": ["click('13')"],
                **({"trace": path} if path else {}),
            }
        )
    viewer = start_viewer("--logs", str(tmp_path / "logs"))
    page.goto(viewer.url + "/run?r=0:big")
    assert page.locator("#count").first.inner_text() == "2400 of 2400 episodes"
    assert page.locator("#episodes tr.episode").count() == 50
    assert "page 1 of 48" in page.locator("#pager").inner_text()
    page.locator("#pager a", has_text="next").click()
    assert "page 2 of 48" in page.locator("#pager").inner_text()
    assert page.locator("#episodes tr.episode a").first.inner_text() == "50"
    page.select_option("#filters select[name=outcome]", "failure")
    page.select_option("#filters select[name=task]", "click-test")
    page.click("#filters button")
    assert page.locator("#count").first.inner_text() == "200 of 2400 episodes"  # i % 12 == 0


@pytest.mark.timeout(600)
def test_an_evaluation_killed_mid_run_leaves_every_finished_episode_readable(
    screenshot_service: ServiceProcess, start_viewer, page, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "logs" / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "browser_control",
            "evaluate",
            "--policy",
            "scripted",
            "--suite",
            "scripted",
            "--episodes",
            "20",
            "--concurrency",
            "2",
            "--browsergym-url",
            screenshot_service.url,
            "--output",
            str(out),
            "--quiet",
            "--screenshots",
        ],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        log = out / EPISODES_FILE
        while not (log.is_file() and log.read_text().count("\n") >= 3):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no episode finished within 300 s"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert not (out / "report.json").exists()  # it really died before the end
    finished = [line for line in log.read_text().split("\n") if line]
    for line in finished:
        row = json.loads(line)
        EpisodeTrace.model_validate_json((out / row["trace"]).read_text())
    viewer = start_viewer("--logs", str(tmp_path / "logs"))
    page.goto(viewer.url + "/run?r=0:killed")
    assert page.locator("#episodes tr.episode").count() == len(finished)
    page.locator("#episodes tr.episode a").first.click()
    assert page.locator("#step-1 .action").count() == 1


def test_a_training_run_lists_every_rollout_and_opens_the_recorded_ones(
    screenshot_service: ServiceProcess, start_viewer, page, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from browser_control.training.rollouts import EnvironmentFactory, EpisodeMetrics, SaturationMonitor

    run_dir = tmp_path / "checkpoints" / "runs" / "tiny-click-test-20260101-000000"
    factory = EnvironmentFactory(screenshot_service.url, max_episode_steps=2)
    envs = [factory() for _ in range(4)]
    metrics = EpisodeMetrics(
        factory,
        SaturationMonitor(5),
        step_getter=lambda: step,
        episode_log=run_dir / "episodes.jsonl",
        recorder=EpisodeRecorder(run_dir, screenshots=True),
        record_every=2,
        record_episodes=1,
        run_name=run_dir.name,
    )
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "click", "arguments": {"bid": "13"}}}],
    }
    for step in (1, 2):
        for env in envs:
            env.reset(task_name="click-test", seed=step)
            env.click(bid="13")
        metrics(prompts=[[]] * 4, completions=[[call]] * 4, environments=envs, log_metric=lambda k, v: None)
    factory.close()

    viewer = start_viewer("--checkpoints", str(tmp_path / "checkpoints"))
    page.goto(viewer.url + "/")
    page.locator("#runs a", has_text="runs/tiny-click-test").click()
    assert page.locator("#count").inner_text() == "8 of 8 episodes"
    page.fill("#filters input[name=step]", "2")
    page.click("#filters button")
    assert page.locator("#count").inner_text() == "4 of 8 episodes"
    assert page.locator("#episodes tr.episode", has_text="(summary)").count() == 4  # step 2 is not recorded
    page.locator("#episodes tr.episode a").first.click()
    assert "record_every_steps" in page.locator("#no-trace").inner_text()

    page.goto(viewer.url + "/run?r=0:runs/tiny-click-test-20260101-000000&traced=yes")
    assert page.locator("#count").inner_text() == "1 of 8 episodes"
    page.locator("#episodes tr.episode a").first.click()
    assert page.locator("#step-1 .action").inner_text() == "click('13')"
    assert "reward 1, done yes" in page.locator("#step-1").inner_text()
    assert _image_loaded(page, "#step-1 img.shot") and _image_loaded(page, "#step-0 img.shot")
