"""Browser workers and MiniWoB sessions.

Playwright's sync API is bound to the thread that started it, so every Playwright object here lives on
exactly one :class:`BrowserWorker` thread and is only touched from jobs run on that thread. A worker
owns one Playwright driver and one Chromium; each session is a BrowserContext (own cookies, storage and
renderer) on its worker's browser. /close frees the context only: the browser and Playwright stay up,
so a later /reset never finds a dead event loop.

Compared with BrowserGym's BrowserEnv we skip what costs time but not task semantics: no browser
relaunch per reset (a fresh context instead), no chat window (chat messages are a list), no slow_mo,
no fixed 0.5 s pre-observation sleep (we wait for the DOM to settle instead), and only the
accessibility tree is extracted. Task setup, validation, rewards and action code are BrowserGym's own.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ctypes
import functools
import logging
import queue
import re
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import playwright.sync_api
import psutil
from browsergym.core.action import functions as action_functions
from browsergym.core.action import get_global_demo_mode
from browsergym.core.action.highlevel import HighLevelActionSet
from browsergym.core.constants import BROWSERGYM_ID_ATTRIBUTE
from browsergym.core.observation import (
    MarkingError,
    _post_extract,
    _pre_extract,
    extract_dom_extra_properties,
    extract_dom_snapshot,
    extract_merged_axtree,
)
from browsergym.miniwob.base import AbstractMiniwobTask
from browsergym.utils.obs import IGNORED_AXTREE_PROPERTIES, flatten_axtree_to_str

from browser_control.env_service import page_scripts, playwright_stack
from browser_control.env_service.actions import ACTIONS, ParsedAction
from browser_control.threadsafe_ast import AST_LOCK

log = logging.getLogger("browser_control.env_service")
playwright_stack.install()

T = TypeVar("T")

# Chromium 156 adds InlineTextBox nodes that repeat each text (+30-45% characters); the page URL of the
# RootWebArea is a long file:// path that tells the model nothing.
AXTREE_IGNORED_ROLES = ["LineBreak", "InlineTextBox"]
AXTREE_IGNORED_PROPERTIES = (*IGNORED_AXTREE_PROPERTIES, "url")
# Features switched off in the service's Chromium. The scrollbar ones as in BrowserGym's own launch (the
# page lays out with classic scrollbars). RenderDocument makes every navigation, same page included, build
# a new frame in the renderer and a new frame host in the browser process and swap them in: about a quarter
# of a reset in place's CPU (benchmarks/RESULTS.md). Without it the navigation reuses the frame; the
# document, its scripts and what the page observes are new either way. One switch holds them all: Chromium
# takes the value of the last --disable-features switch, it does not add the lists up.
DISABLED_CHROMIUM_FEATURES = ("OverlayScrollbars", "ExtendedOverlayScrollbars", "RenderDocument")
# Without the first four Chromium tries to reach Google's services at start and on a closed network keeps
# retrying.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    f"--disable-features={','.join(DISABLED_CHROMIUM_FEATURES)}",
]
# The keys of AbstractMiniwobTask._get_info(), in the order of page_scripts.SETTLE_AND_MARK's "info".
_MINIWOB_INFO_KEYS = ("REWARD_GLOBAL", "RAW_REWARD_GLOBAL", "REWARD_REASON", "DONE_GLOBAL", "EPISODE_ID", "TASK_READY")
_TRANSIENT_EXTRACT_ERRORS = (
    "Frame was detached",
    "Frame with the given frameId is not found",
    "Execution context was destroyed",
    "Frame has been detached",
    "Cannot mark a child frame without a bid",
    "Cannot read properties of undefined",
)


def _mark_clickable_generics(axtree: dict[str, Any], clickable: set[str]) -> None:
    """Give clickable generic nodes (e.g. <span> links) a property, so the flattener keeps their bid.

    flatten_axtree_to_str drops generic nodes without properties to save tokens; MiniWoB draws many
    click targets (click-link's links, menus) as plain spans, which would leave the text with no bid.
    """
    for node in axtree["nodes"]:
        if node.get("browsergym_id") in clickable and node.get("role", {}).get("value") == "generic":
            node.setdefault("properties", []).append({"name": "clickable", "value": {"type": "boolean", "value": True}})


_BID_DATA = re.compile(r"^browsergym_id_([a-zA-Z0-9]+)\s?(.*)")


def _attach_bids(axtree: dict[str, Any]) -> None:
    """Move the bids carried in ARIA descriptions into ``browsergym_id`` and restore the descriptions,
    with the same rules as BrowserGym's extraction (roledescription first, description as fallback)."""
    for node in axtree["nodes"]:
        bid = None
        for i, prop in enumerate(node.get("properties", ())):
            if prop["name"] == "roledescription":
                match = _BID_DATA.fullmatch(prop["value"]["value"])
                if match:
                    bid, rest = match.groups()
                    prop["value"]["value"] = rest
                    if rest == "":
                        del node["properties"][i]
                break
        description = node.get("description")
        if description is not None:
            match = _BID_DATA.fullmatch(description["value"])
            if match:
                bid = bid or match.group(1)
                description["value"] = match.group(2)
                if match.group(2) == "":
                    del node["description"]
        if bid is not None:
            node["browsergym_id"] = bid


@functools.cache
def browsergym_action_set() -> HighLevelActionSet:
    """BrowserGym's action set restricted to our whitelist: a second, independent gate."""
    return HighLevelActionSet(
        subsets=["custom"],
        custom_actions=[getattr(action_functions, name) for name in ACTIONS],
        strict=True,
        multiaction=False,
        demo_mode="off",
    )


def browsergym_code(action: ParsedAction) -> str:
    """The Python that BrowserGym will exec() for a whitelisted action."""
    return _browsergym_code_for(action.canonical())


def _browsergym_code_for(canonical: str) -> str:
    # BrowserGym's action parser calls ast.literal_eval: it shares the process-wide lock with ours.
    with AST_LOCK:
        return browsergym_action_set().to_python_code(canonical)


@functools.cache
def _action_definitions() -> tuple[str, types.CodeType]:
    """BrowserGym's action-function definitions (the same ~650 lines before every action), compiled once."""
    source = browsergym_action_set().python_includes
    return source, compile(source, "<browsergym actions>", "exec")


@functools.lru_cache(maxsize=4096)
def _compiled_action(canonical: str) -> types.CodeType:
    """The action part of BrowserGym's code for a canonical action text, compiled.

    BrowserGym's code is a pure function of the text (a fixed action set), and the same few actions come
    back all the time (``click('13')``); its pyparsing-based parser was a fifth of a step's Python CPU.
    Failures are not cached: an action BrowserGym refuses is refused again the next time.
    """
    code = _browsergym_code_for(canonical)
    source, _definitions = _action_definitions()
    if not code.startswith(source):
        raise RuntimeError("BrowserGym's action code no longer starts with its function definitions")
    return compile(code[len(source) :], "<action>", "exec")


def _execute_action(action: types.CodeType, page: playwright.sync_api.Page, **helpers: Callable[[str], None]) -> None:
    """BrowserGym's execute_python_code, minus recompiling the definitions on every step (3 ms of CPU)."""
    _source, definitions = _action_definitions()
    namespace: dict[str, Any] = {"page": page, **helpers, "DEMO_MODE": get_global_demo_mode()}
    exec(definitions, namespace)
    exec(action, namespace)


class _SetupPage:
    """The page as a task's ``setup()`` sees it: the real page, except that ``wait_for_function`` is one
    evaluation (``page_scripts.WAIT_FOR_PREDICATE``) instead of Playwright's wait through its injected script.

    BrowserGym's MiniWoB setup ends with ``wait_for_function("() => WOB_TASK_READY")`` in the main world;
    Playwright injects its 242 KB script into a world the first time it needs it there, and the first
    locator of the episode injects it again, into the utility world. The result of the wait (the predicate
    became truthy, or a TimeoutError at the timeout) is the same.
    """

    # The predicate is polled at about the pace of animation frames, as Playwright's default polling does.
    POLL_MS = 16

    def __init__(self, page: playwright.sync_api.Page, default_timeout_ms: float):
        object.__setattr__(self, "_page", page)
        object.__setattr__(self, "_default_timeout_ms", default_timeout_ms)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._page, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._page, name, value)  # e.g. BrowserGym's _bgym_scale_factor belongs on the real page

    def wait_for_function(
        self, expression: str, *, arg: Any = None, timeout: float | None = None, polling: Any = None
    ) -> bool:
        timeout_ms = self._default_timeout_ms if timeout is None else timeout
        poll_ms = polling if isinstance(polling, (int, float)) and polling > 0 else self.POLL_MS
        if not self._page.evaluate(page_scripts.WAIT_FOR_PREDICATE, [expression, arg, timeout_ms, poll_ms]):
            raise playwright.sync_api.TimeoutError(f"Timeout {timeout_ms:g}ms exceeded while waiting for {expression}")
        return True


class BrowserUnavailableError(RuntimeError):
    """Chromium could not be launched or driven; the message says what to fix."""


@dataclass(frozen=True)
class BrowserOptions:
    chromium_executable: str | None = None
    max_obs_chars: int = 8_000
    screenshots: bool = False
    # The longest the service waits after an action (or a reset) for the page to become quiet before it
    # observes it. BrowserGym always waits 0.5 s plus 0.1 s per Playwright call; jQuery UI widgets (the
    # autocomplete and menus of MiniWoB) show up 300 ms after the event plus their animation.
    settle_timeout_ms: int = 1_000
    # Longest a single job (one reset, step, close or probe) may run on a worker. Past it the browser is
    # taken for hung (stopped, deadlocked, swapping) and killed, so one bad browser cannot hold its worker
    # and every request queued behind it for ever.
    job_deadline_s: float = 60.0
    # A health probe runs one line of JavaScript: anything slower than this is not a working browser.
    probe_timeout_ms: int = 5_000


class WorkerJobAbandoned(BaseException):
    """Raised inside a worker thread whose job outlived its browser and its Playwright driver.

    A BaseException so that no `except Exception` on the way up (ours or Playwright's) swallows it.
    """


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> bool:
    """Ask CPython to raise `exc_type` in `thread` at its next bytecode; False if the thread is gone."""
    if thread.ident is None or not thread.is_alive():
        return False
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type)) == 1


@dataclass
class _RunningJob:
    future: concurrent.futures.Future[Any]
    deadline: float
    expired: bool = False


class BrowserWorker:
    """A thread that owns one Playwright driver and one Chromium, and runs jobs for its sessions."""

    def __init__(self, index: int, options: BrowserOptions):
        self.index = index
        self.options = options
        self.session_count = 0  # maintained by the session manager, read for placement
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future] | None] = queue.SimpleQueue()
        self._playwright: playwright.sync_api.Playwright | None = None
        self._browser: playwright.sync_api.Browser | None = None
        self._probe_page: playwright.sync_api.Page | None = None
        self._probe_crashed = False
        # The worker's Chromium main process; the watchdog kills its tree when a job overruns. A psutil
        # Process, not a pid: it refuses to signal a pid that a new process has taken over since.
        self._browser_process: psutil.Process | None = None
        # The Playwright driver (node) under which the browser runs: killed when a hung job survives the
        # browser's death, after which the worker starts a new Playwright.
        self._driver_process: psutil.Process | None = None
        self._restart_playwright = False
        # Bumped when Playwright is restarted. Objects of an earlier Playwright must not be called again:
        # their calls would wait on that Playwright's dead event loop.
        self.playwright_generation = 0
        self._running: _RunningJob | None = None
        self._stopping = False
        self._watch_cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"browser-worker-{index}", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name=f"browser-watchdog-{index}", daemon=True)
        self._watchdog.start()

    # -- public, thread-safe -------------------------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def stop(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)
        with self._watch_cond:
            self._stopping = True
            self._watch_cond.notify_all()

    # -- worker thread only ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                break
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            job = _RunningJob(future, time.monotonic() + self.options.job_deadline_s)
            with self._watch_cond:
                self._running = job
                self._watch_cond.notify_all()
            outcome: tuple[bool, Any]
            try:
                outcome = (True, fn())
            except BaseException as exc:  # the caller decides; the worker must survive any job
                outcome = (False, exc)
            try:
                with self._watch_cond:
                    self._running = None
                    self._watch_cond.notify_all()
            except WorkerJobAbandoned:
                # The watchdog's interrupt landed just after the job returned (it raises only while the job
                # is running and holds the lock meanwhile, so it can land here and nowhere later).
                with self._watch_cond:
                    self._running = None
                    self._watch_cond.notify_all()
            if job.expired:
                # The watchdog already answered the caller; this is the aftermath of the kill.
                log.info(
                    "overrun job ended after its browser was killed", extra={"worker": self.index, "ok": outcome[0]}
                )
                continue
            if outcome[0]:
                future.set_result(outcome[1])
            else:
                future.set_exception(outcome[1])
        self._shutdown()

    # -- watchdog thread -------------------------------------------------------------------------
    def _watch(self) -> None:
        while True:
            with self._watch_cond:
                while True:
                    if self._stopping:
                        return
                    job = self._running
                    if job is None or job.expired:
                        self._watch_cond.wait()
                        continue
                    remaining = job.deadline - time.monotonic()
                    if remaining > 0:
                        self._watch_cond.wait(remaining)
                        continue
                    job.expired = True
                    browser_process, driver_process = self._browser_process, self._driver_process
                    break
            self._expire(job, browser_process)
            # A hang below Chromium (in the Playwright driver) outlives the browser's death: then the driver
            # goes too, its calls fail at once, and the worker starts a new Playwright for its next job.
            grace_s = min(10.0, self.options.job_deadline_s)
            with self._watch_cond:
                ended = self._watch_cond.wait_for(
                    lambda job=job: self._running is not job or self._stopping, timeout=grace_s
                )
                if not ended and driver_process is not None:
                    self._restart_playwright = True
            if not ended and driver_process is not None:
                log.error(
                    "job still hung after its browser was killed; killing the Playwright driver",
                    extra={"worker": self.index, "driver_pid": driver_process.pid},
                )
                kill_process_tree(driver_process)
                self._interrupt_if_still_running(job, grace_s)

    def _interrupt_if_still_running(self, job: _RunningJob, grace_s: float) -> None:
        """Free a worker thread that its dead Playwright left spinning.

        When the driver dies, Playwright 1.44's sync dispatcher can finish before the pending call sees
        the error; the call then switches into a dead greenlet for ever (a busy loop holding the GIL,
        seen with py-spy under load). Nothing returns from there, so the watchdog raises
        `WorkerJobAbandoned` inside the thread, repeatedly in case a clean-up on the way up calls the
        dead Playwright again. The worker then starts a new Playwright for its next job.
        """
        attempts = 0
        while True:
            with self._watch_cond:
                if self._watch_cond.wait_for(lambda: self._running is not job or self._stopping, timeout=grace_s):
                    return
                if attempts == 0:
                    log.error(
                        "job still running after its Playwright driver died; interrupting the worker thread",
                        extra={"worker": self.index},
                    )
                attempts += 1
                # Raised under the lock the worker takes to end a job, so it cannot land past that point.
                raised = _raise_in_thread(self._thread, WorkerJobAbandoned)
            if not raised or attempts >= 100:
                log.error(
                    "could not free the worker thread; its sessions stay lost",
                    extra={"worker": self.index, "attempts": attempts},
                )
                return
            grace_s = 1.0

    def _expire(self, job: _RunningJob, browser_process: psutil.Process | None) -> None:
        deadline_s = self.options.job_deadline_s
        pid = browser_process.pid if browser_process is not None else None
        log.error(
            "browser job overran its deadline; killing the worker's browser",
            extra={"worker": self.index, "deadline_s": deadline_s, "browser_pid": pid},
        )
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            job.future.set_exception(
                SessionLostError(
                    f"the browser did not finish this request within {deadline_s:g} s (hung or stopped), so it "
                    "was replaced and this session's page is gone; POST /reset with this session_id to start "
                    "a new episode"
                )
            )
        if browser_process is not None:
            kill_process_tree(browser_process)

    def browser(self) -> playwright.sync_api.Browser:
        """The worker's Chromium, (re)launched if it is not running. Worker thread only."""
        with self._watch_cond:
            restart, self._restart_playwright = self._restart_playwright, False
        if restart and self._playwright is not None:
            try:
                self._playwright.stop()
            except Exception:  # its driver was killed: there is nothing left to stop
                log.debug("ignored error while dropping a dead Playwright", exc_info=True)
            self._playwright = None
            self._browser = None
            self.playwright_generation += 1
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        self._browser = None
        self._probe_page = None
        with self._watch_cond:
            self._browser_process = None
        try:
            if self._playwright is None:
                self._playwright = playwright.sync_api.sync_playwright().start()
                driver = self._driver_process_of(self._playwright)
                with self._watch_cond:
                    self._driver_process = driver
                # BrowserGym's action functions locate elements with get_by_test_id(bid).
                self._playwright.selectors.set_test_id_attribute(BROWSERGYM_ID_ATTRIBUTE)
            started = time.perf_counter()
            self._browser = self._playwright.chromium.launch(
                headless=True,
                executable_path=self.options.chromium_executable,
                args=CHROMIUM_ARGS,
                ignore_default_args=["--hide-scrollbars"],
            )
        except Exception as exc:
            hint = (
                f"CHROMIUM_EXECUTABLE={self.options.chromium_executable!r} could not be started"
                if self.options.chromium_executable
                else "Playwright's Chromium is missing: run 'playwright install chromium', "
                "or set CHROMIUM_EXECUTABLE to a Chromium binary"
            )
            raise BrowserUnavailableError(f"{hint} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        pid = self._main_process_pid(self._browser)
        with self._watch_cond:
            try:
                self._browser_process = psutil.Process(pid) if pid is not None else None
            except psutil.Error:
                self._browser_process = None
        log.info(
            "browser launched",
            extra={
                "worker": self.index,
                "version": self._browser.version,
                "browser_pid": pid,
                "launch_ms": round(1000 * (time.perf_counter() - started)),
            },
        )
        return self._browser

    @staticmethod
    def _driver_process_of(pw: playwright.sync_api.Playwright) -> psutil.Process | None:
        """Playwright's driver process; only reachable through its private transport (pinned 1.44)."""
        try:
            return psutil.Process(pw._impl_obj._connection._transport._proc.pid)  # type: ignore[attr-defined]
        except Exception:  # another Playwright layout: a driver hang then stays a hang, as before
            log.warning("could not find the Playwright driver process", exc_info=True)
            return None

    @staticmethod
    def _main_process_pid(browser: playwright.sync_api.Browser) -> int | None:
        """The pid of Chromium's main process, which Playwright does not expose; asked over CDP."""
        try:
            cdp = browser.new_browser_cdp_session()
            try:
                info = cdp.send("SystemInfo.getProcessInfo")
            finally:
                cdp.detach()
            return next(int(p["id"]) for p in info["processInfo"] if p.get("type") == "browser")
        except Exception:  # without the pid an overrun still answers 410, it just cannot free the worker
            log.warning("could not learn the browser's pid; hung jobs cannot be killed", exc_info=True)
            return None

    def owns(self, context: playwright.sync_api.BrowserContext) -> bool:
        """Whether the context belongs to the worker's current, connected browser (not a crashed one)."""
        return (
            not self._restart_playwright  # its driver was killed: everything it made is gone
            and self._browser is not None
            and self._browser.is_connected()
            and context.browser == self._browser
        )

    def probe(self) -> str:
        """Drive the browser for real (run JS in a page); return its version. Worker thread only.

        The probe page is replaced when its renderer crashed (a crashed page is not closed), and the
        script runs under a timeout: ``page.evaluate`` has none, and one racing a crash never returns.
        A failure is retried once on a fresh page, so a dead probe renderer alone never fails /health.
        """
        problem = ""
        for _attempt in range(2):
            browser = self.browser()
            try:
                page = self._live_probe_page(browser)
                page.wait_for_function("() => 6 * 7 === 42", timeout=self.options.probe_timeout_ms)
                return browser.version
            except playwright.sync_api.Error as exc:
                problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning(
                    "browser probe failed; retrying on a fresh page", extra={"worker": self.index, "error": problem}
                )
                self._discard_probe_page()
        raise BrowserUnavailableError(f"the browser of worker {self.index} did not run a probe script: {problem}")

    def _live_probe_page(self, browser: playwright.sync_api.Browser) -> playwright.sync_api.Page:
        page = self._probe_page
        if page is None or page.is_closed() or self._probe_crashed or not self.owns(page.context):
            self._discard_probe_page()
            page = browser.new_context().new_page()
            self._probe_crashed = False
            page.on("crash", self._on_probe_crash)
            self._probe_page = page
        return page

    def _on_probe_crash(self, page: playwright.sync_api.Page) -> None:
        if page is self._probe_page:
            self._probe_crashed = True

    def _discard_probe_page(self) -> None:
        page, self._probe_page = self._probe_page, None
        if page is not None:
            try:
                page.context.close()
            except Exception:  # the renderer, the browser or its driver is already gone
                pass

    def _shutdown(self) -> None:
        for close in (
            lambda: self._browser and self._browser.close(),
            lambda: self._playwright and self._playwright.stop(),
        ):
            try:
                close()
            except Exception:  # already gone; nothing left to free
                log.debug("ignored error during worker shutdown", exc_info=True)
        self._browser = None
        self._playwright = None


def kill_process_tree(root: psutil.Process) -> None:
    """SIGKILL a process and its descendants; works on stopped processes, ignores ones already gone."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass  # exited meanwhile


class EpisodeOverError(RuntimeError):
    """A step was sent after the episode ended."""


class SessionLostError(RuntimeError):
    """The session's browser went away (crash, OOM kill); the session must be reset."""


@dataclass
class StepResult:
    observation: dict[str, Any]
    reward: float
    done: bool
    truncated: bool
    step: int


@dataclass
class BrowserSession:
    """One MiniWoB episode at a time in its own BrowserContext. Every method runs on the worker thread."""

    session_id: str
    worker: BrowserWorker
    task_name: str = ""
    seed: int = 0
    max_episode_steps: int | None = None
    steps: int = 0
    done: bool = False
    truncated: bool = False
    last_reward: float = 0.0
    chat_messages: list[dict[str, Any]] = field(default_factory=list)
    _context: playwright.sync_api.BrowserContext | None = None
    _page: playwright.sync_api.Page | None = None
    _task: AbstractMiniwobTask | None = None
    _goal: str = ""
    _cdp: playwright.sync_api.CDPSession | None = None
    _cdp_page: playwright.sync_api.Page | None = None
    _marked: dict[str, Any] | None = None
    # Set by Playwright's "crash" event: a crashed page is not closed, and calls on it fail or hang.
    _crashed: bool = False
    # The last reset failed with the browser gone: the episode is unusable until a reset succeeds.
    _lost: bool = False
    _generation: int = 0  # the worker's playwright_generation that made _context

    def reset(
        self,
        task_cls: type[AbstractMiniwobTask],
        task_name: str,
        seed: int,
        base_url: str,
        max_episode_steps: int | None,
    ) -> dict[str, Any]:
        task = task_cls(seed=seed, base_url=base_url)
        self.worker.browser()  # relaunch a dead browser first, so the reuse check below sees it is gone
        reuse = self._reusable_for(task)
        try:
            with self._browser_loss_is_session_loss():
                try:
                    return self._reset(task, task_name, seed, max_episode_steps, reuse)
                except playwright.sync_api.Error as exc:
                    if not reuse:
                        raise
                    # The old page may have died between the check and its use, its crash event not yet
                    # arrived: the navigation then fails as lost ("Target crashed") or, when Chromium
                    # tears the dead frame down under it, as aborted ("net::ERR_ABORTED; maybe frame was
                    # detached?"). Whatever the reused page's error, a fresh context is what "reset revives
                    # a lost session" promises; a task that fails there too fails with its own error.
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.info(
                "reset on the reused page failed; retrying on a fresh context",
                extra={"session_id": self.session_id, "error": reason[:200]},
            )
            with self._browser_loss_is_session_loss():
                return self._reset(
                    task_cls(seed=seed, base_url=base_url), task_name, seed, max_episode_steps, reuse=False
                )
        except SessionLostError:
            self._lost = True
            raise

    def _reset(
        self,
        task: AbstractMiniwobTask,
        task_name: str,
        seed: int,
        max_episode_steps: int | None,
        reuse: bool,
    ) -> dict[str, Any]:
        if reuse:
            # Same viewport and a live page: navigating again loads a fresh document, which is all a
            # MiniWoB episode depends on, and saves spawning a renderer process (most of a reset's cost).
            self._teardown_task()
            self._context.clear_cookies()
        else:
            self._close_context()
            self._context = self.worker.browser().new_context(
                viewport=task.viewport, locale=task.locale, timezone_id=task.timezone_id
            )
            self._context.add_init_script(page_scripts.ACTIVITY_TRACKER)
            self._generation = self.worker.playwright_generation
            self._page = self._context.new_page()
            self._crashed = False
            self._page.on("crash", self._on_crash)
        self._lost = False
        self._context.set_default_timeout(task.timeout)
        goal, _info = task.setup(page=_SetupPage(self._page, task.timeout))  # type: ignore[arg-type]
        task.page = self._page  # validate() compares the page it is given with the one setup() kept
        self._task = task
        self._goal = (
            goal if isinstance(goal, str) else " ".join(m.get("text", "") for m in goal if m.get("type") == "text")
        )
        self.task_name, self.seed, self.max_episode_steps = task_name, seed, max_episode_steps
        self.steps, self.done, self.truncated, self.last_reward = 0, False, False, 0.0
        self.chat_messages = [{"role": "user", "message": self._goal}]
        self._settle_and_mark()
        return self._observation(last_action_error="")

    def _on_crash(self, page: playwright.sync_api.Page) -> None:
        if page is self._page:
            self._crashed = True

    def step(self, action: ParsedAction) -> StepResult:
        if self._task is None or self._page is None:
            raise EpisodeOverError("this session has no episode; POST /reset first")
        if self.done or self.truncated:
            raise EpisodeOverError(
                f"the episode is over ({'task done' if self.done else 'step limit reached'}); "
                "POST /reset to start a new one"
            )
        if self._lost or self._context is None or not self.worker.owns(self._context):
            raise SessionLostError(
                "this session's browser stopped (crashed or was killed); POST /reset with this "
                "session_id to start a new episode on a fresh browser"
            )
        if self._crashed:
            raise SessionLostError(
                "this session's page crashed (its renderer process died); POST /reset with this "
                "session_id to start a new episode"
            )
        # Only the canonical re-serialisation of a whitelisted, literal-only call reaches exec().
        code = _compiled_action(action.canonical())
        error = ""
        try:
            _execute_action(
                code,
                self._page,
                send_message_to_user=self._send_message_to_user,
                report_infeasible_instructions=self._report_infeasible,
            )
        except Exception as exc:  # the model's action failed on the page: tell the model why
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            # A killed Playwright driver fails the action with a plain Exception ("Connection closed
            # while reading from the driver"); the worker marked its Playwright dead before the kill.
            # Observing now would wait for ever on that Playwright's stopped event loop.
            gone = not self.worker.owns(self._context)
            if gone or (isinstance(exc, playwright.sync_api.Error) and self._browser_lost(exc)):
                # Not the model's mistake: the page is gone, so there is no next observation to show.
                raise SessionLostError(
                    "this session's page crashed or its browser stopped during the action; POST /reset "
                    "with this session_id to start a new episode"
                ) from exc
        self.steps += 1
        with self._browser_loss_is_session_loss():
            self._settle_and_mark()
            reward, done, _msg, _info = self._validate()
            observation = self._observation(last_action_error=error)
        self.last_reward = float(reward)
        self.done = bool(done)
        if self.max_episode_steps is not None and self.steps >= self.max_episode_steps and not self.done:
            self.truncated = True
        return StepResult(observation, self.last_reward, self.done, self.truncated, self.steps)

    def close(self) -> None:
        self._close_context()
        self._task = None

    # -- internals -------------------------------------------------------------------------------
    def _send_message_to_user(self, text: str) -> None:
        self.chat_messages.append({"role": "assistant", "message": str(text)})

    def _report_infeasible(self, reason: str) -> None:
        self.chat_messages.append({"role": "infeasible", "message": str(reason)})

    def _validate(self) -> tuple[float, bool, str, dict[str, Any]]:
        """BrowserGym's validate(), given the MiniWoB state that the settling script read at its end.

        validate() reads the page's WOB_* globals with an evaluation of its own (``_get_info``); the
        settling script that ran just before returns the same values, so that read is answered from
        them. Without them (a page with iframes, no MiniWoB core) validate() reads the page itself.
        """
        assert self._task is not None and self._page is not None
        task = self._task
        values = self._marked.get("info") if self._marked else None
        if values is None or len(values) != len(_MINIWOB_INFO_KEYS):
            return task.validate(self._page, self.chat_messages)
        task._get_info = lambda: dict(zip(_MINIWOB_INFO_KEYS, values, strict=True))  # type: ignore[method-assign]
        try:
            return task.validate(self._page, self.chat_messages)
        finally:
            del task._get_info

    def _settle_and_mark(self, wait: bool = True) -> None:
        """Wait (bounded) until the page is quiet, then give its elements bids. See docs/http-api.md."""
        assert self._page is not None
        page = self._page
        self._marked = None
        if len(page.frames) > 1:
            return  # iframes: BrowserGym's frame-by-frame marking runs in _observation
        cap = self.worker.options.settle_timeout_ms if wait else 0
        for attempt in range(3):
            try:
                self._marked = page.evaluate(page_scripts.SETTLE_AND_MARK, [BROWSERGYM_ID_ATTRIBUTE, cap])
                return
            except playwright.sync_api.Error as exc:
                # A navigation replaced the document while the script ran: observe the new one.
                if attempt == 2 or not any(s in str(exc) for s in _TRANSIENT_EXTRACT_ERRORS):
                    raise
                page.wait_for_timeout(50)

    def _cdp_session(self) -> playwright.sync_api.CDPSession:
        """One DevTools session per page, kept: opening and detaching one per call costs round trips."""
        assert self._page is not None and self._context is not None
        if self._cdp is None or self._cdp_page is not self._page:
            self._cdp = self._context.new_cdp_session(self._page)
            self._cdp_page = self._page
        return self._cdp

    def _marked_axtree(self) -> tuple[dict[str, Any], set[str]]:
        """The accessibility tree with bids, and the bids of clickable elements (single-frame pages)."""
        assert self._page is not None
        for _attempt in range(3):
            if self._marked is None:
                self._settle_and_mark(wait=False)
            marked = self._marked
            cdp = self._cdp_session()
            axtree = {"nodes": playwright_stack.cdp_send(cdp, "Accessibility.getFullAXTree")["nodes"]}
            _attach_bids(axtree)
            self._marked = None
            if marked is None or self._mutation_count(cdp) == marked["mutations"]:
                break
            # The page changed the DOM after the bids were given (a timer fired in between), so an
            # element could be in the tree without a bid: mark again and take the tree again.
            log.debug("re-marking a page that changed after marking", extra={"session_id": self.session_id})
        clickable = set(marked["clickable"]) if marked else set()
        return axtree, clickable

    @staticmethod
    def _mutation_count(cdp: playwright.sync_api.CDPSession) -> int | None:
        """The page's mutation count, read over the kept DevTools session: a bare expression costs fewer
        round trips and less work in every process than ``page.evaluate``'s wrapped call."""
        answer = playwright_stack.cdp_send(
            cdp, "Runtime.evaluate", {"expression": page_scripts.MUTATION_COUNT_EXPRESSION, "returnByValue": True}
        )
        return None if "exceptionDetails" in answer else answer.get("result", {}).get("value")

    def _frames_axtree(self) -> tuple[dict[str, Any], set[str]]:
        """BrowserGym's own marking and extraction, for pages with iframes (none of MiniWoB's tasks)."""
        assert self._page is not None
        page = self._page
        page.evaluate(page_scripts.UNMARK)  # BrowserGym's marking adds its own carriers
        for attempt in range(3):
            try:
                _pre_extract(page, tags_to_mark="standard_html", lenient=attempt == 2)
                axtree = extract_merged_axtree(page)
                clickable = {
                    bid
                    for bid, props in extract_dom_extra_properties(extract_dom_snapshot(page), 1.0).items()
                    if props.get("clickable")
                }
                break
            except (playwright.sync_api.Error, MarkingError) as exc:
                if attempt == 2 or not any(s in str(exc) for s in _TRANSIENT_EXTRACT_ERRORS):
                    raise
                _post_extract(page)
                page.wait_for_timeout(100)
        _post_extract(page)
        return axtree, clickable

    def _observation(self, last_action_error: str) -> dict[str, Any]:
        assert self._page is not None
        page = self._page
        if len(page.frames) > 1:
            axtree, clickable = self._frames_axtree()
        else:
            axtree, clickable = self._marked_axtree()
        _mark_clickable_generics(axtree, clickable)
        text = flatten_axtree_to_str(
            axtree, ignored_roles=AXTREE_IGNORED_ROLES, ignored_properties=AXTREE_IGNORED_PROPERTIES
        )
        cap = self.worker.options.max_obs_chars
        if len(text) > cap:
            text = text[:cap] + f"\n... [observation truncated at {cap} characters]"
        observation: dict[str, Any] = {
            "goal": self._goal,
            "axtree_txt": text,
            "url": page.url,
            "last_action_error": last_action_error,
        }
        if self.worker.options.screenshots:
            observation["screenshot_png_b64"] = base64.b64encode(page.screenshot(type="png")).decode()
        return observation

    def _browser_lost(self, exc: playwright.sync_api.Error) -> bool:
        """Whether a Playwright error means the page or browser is gone, as opposed to a bad action."""
        message = str(exc)
        return (
            self._crashed
            or self._page is None
            or self._page.is_closed()
            or self._context is None
            or not self.worker.owns(self._context)
            or "has been closed" in message
            or "Target crashed" in message
            or "Page crashed" in message
        )

    @contextlib.contextmanager
    def _browser_loss_is_session_loss(self) -> Iterator[None]:
        try:
            yield
        except playwright.sync_api.Error as exc:
            if self._browser_lost(exc):
                raise SessionLostError(
                    "this session's browser page was closed or crashed (its renderer or the browser died); "
                    "POST /reset with this session_id to start a new episode"
                ) from exc
            raise

    def _reusable_for(self, task: AbstractMiniwobTask) -> bool:
        return (
            self._context is not None
            and self._page is not None
            and not self._crashed
            and not self._page.is_closed()
            and self._page.viewport_size == task.viewport
            and self._context.pages == [self._page]
            and self.worker.owns(self._context)
        )

    def _of_a_dead_playwright(self) -> bool:
        return self._generation != self.worker.playwright_generation

    def _teardown_task(self) -> None:
        if self._task is not None and self._of_a_dead_playwright():
            self._task = None  # its page belongs to a Playwright that is gone: nothing to tear down
        if self._task is not None:
            try:
                self._task.teardown()
            except Exception:
                log.debug("task teardown failed", exc_info=True)
            self._task = None

    def _close_context(self) -> None:
        self._teardown_task()
        if self._context is not None and not self._of_a_dead_playwright():
            try:
                self._context.close()
            except Exception:  # the browser (or its Playwright driver) is already gone; nothing to free
                pass
        self._context = None
        self._page = None
        self._cdp = None
        self._cdp_page = None
