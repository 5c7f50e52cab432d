"""The browser as a TRL ``environment_factory`` class: one episode per instance, one tool per action.

TRL turns every public method except ``reset`` and ``get_reward`` into a tool, using the type hints and
the Google-style docstring for the schema, so helpers here start with ``_``. Each tool maps to exactly
one whitelisted action of the environment service; the service validates it again.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from browser_control.client import EnvClient, EnvRequestError, EnvServiceUnavailable, ServiceDeathLatch, service_answers
from browser_control.protocol import DEFAULT_MAX_EPISODE_STEPS, service_url
from browser_control.rollout.concurrency import ConcurrentRollouts
from browser_control.rollout.episode import EpisodeStats, StepAnswer, action_text, format_fault
from browser_control.rollout.prompts import format_episode_end, format_observation, format_step_limit

_CALLER_ERRORS = {"invalid_request", "unknown_task"}
log = logging.getLogger(__name__)


class BrowserEnvironment:
    """A MiniWoB++ episode served by the environment service.

    ``reset(task_name, seed)`` starts the episode and returns the first observation; each tool performs
    one action and returns the next observation; ``get_reward()`` is 1.0 when the task was solved.

    Faults: an unreachable service raises EnvServiceUnavailable (the run stops). With
    ``faults_are_no_data`` (training), a service that answers but cannot play the episode (410
    session_lost after a browser crash, 5xx, a session reaped mid-episode) costs only this episode: it is
    marked faulted, later tools return a short notice without calling the service, and ``get_reward()``
    returns None, which TRL 1.16 leaves out of the group baseline and gives zero advantage. Without it the
    service's error is raised. Either way the next ``reset`` starts a fresh session when the old one
    cannot be reset in place.
    """

    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    base_url: str | None = None
    # Set by a trainer with concurrent environment calls (rollout/concurrency.py); None = call at once.
    _rollouts: ConcurrentRollouts | None = None

    def __init__(
        self,
        base_url: str | None = None,
        max_episode_steps: int | None = None,
        client: EnvClient | None = None,
        faults_are_no_data: bool = False,
    ):
        self._client = client or EnvClient(service_url(base_url or self.base_url))
        self._max_steps = max_episode_steps or self.max_episode_steps
        # Training (EnvironmentFactory) turns environment faults into no-data episodes; elsewhere they raise.
        self._faults_are_no_data = faults_are_no_data
        self._session_id: str | None = None
        self._stats = EpisodeStats()
        # TRL turns a tool's exception into text for the model; a dead service must still stop training, so
        # the error is kept here and raised again by get_reward(), which TRL does not guard.
        self._dead = ServiceDeathLatch()
        self._clear_trace()

    def _clear_trace(self, goal: str = "", observation: str = "", screenshot: str | None = None) -> None:
        self._goal = goal
        self._first_observation = observation
        self._first_screenshot = screenshot
        self._last_text = observation
        self._answers: list[StepAnswer] = []

    # -- TRL protocol ----------------------------------------------------------------------------
    def reset(self, task_name: str, seed: int, **_row: Any) -> str:
        """Start a new episode of ``task_name`` with ``seed``; the other dataset columns are ignored."""
        if self._rollouts is not None:
            prefetched = self._rollouts.take_reset(self, task_name, seed)
            if prefetched is not None:
                return prefetched
        return self._reset_now(task_name, seed)

    def _reset_now(self, task_name: str, seed: int) -> str:
        started = time.perf_counter()
        self._dead.clear()  # the error belonged to the previous episode
        # The row's task and seed from the start: a faulted episode must still say which row it played.
        self._stats = EpisodeStats(task_name=str(task_name), seed=int(seed))
        try:
            response = self._start_episode(task_name, int(seed))
        except EnvServiceUnavailable as exc:
            if not (self._faults_are_no_data and self._service_answers()):
                self._dead.trip(exc)
                raise
            return self._faulted_reset(exc)
        except EnvRequestError as exc:
            if exc.error in _CALLER_ERRORS:
                raise
            return self._faulted_reset(exc)
        self._session_id = response.session_id
        self._stats.task_name, self._stats.seed = response.task_name, response.seed
        self._stats.env_latency_s.append(time.perf_counter() - started)
        text = format_observation(response.observation, 0, self._max_steps)
        self._clear_trace(response.observation.goal, text, response.observation.screenshot_png_b64)
        return text

    def _faulted_reset(self, exc: Exception) -> str:
        text = self._fault(f"the service could not start the episode: {exc}", exc)
        # The recording of a faulted episode shows what the model was given, not the previous episode.
        self._clear_trace("", text)
        return text

    def _start_episode(self, task_name: str, seed: int) -> Any:
        """Reset our session in place, or, when that session cannot be reset, a fresh one."""
        if self._session_id is not None:
            try:
                return self._client.reset(
                    task_name, seed=seed, session_id=self._session_id, max_episode_steps=self._max_steps
                )
            except EnvRequestError as exc:
                if exc.error in _CALLER_ERRORS:
                    raise
                # Reaped while idle (404), its browser lost (410) or the reset failed (5xx): let it go.
                log.info("session %s cannot be reset (%s); starting a new one", self._session_id, exc)
                self._forget_session()
        return self._client.reset(task_name, seed=seed, max_episode_steps=self._max_steps)

    def _service_answers(self) -> bool:
        """Alive unless the shared client already declared the service dead, or it does not answer now."""
        latch = getattr(self._client, "dead", None)
        return not (isinstance(latch, ServiceDeathLatch) and latch.error) and service_answers(self._client)

    def _forget_session(self) -> None:
        session_id, self._session_id = self._session_id, None
        if session_id is None:
            return
        try:  # frees the slot if the service still holds it; a lost session is already gone
            self._client.close_session(session_id)
        except (EnvRequestError, EnvServiceUnavailable):
            pass

    def _fault(self, reason: str, exc: Exception) -> str:
        """Mark the episode as an environment fault: no data. Returns the text the model sees.

        Without ``faults_are_no_data`` (evaluation), ``exc`` is raised instead: a report must not count an
        episode the environment lost as a failure, nor silently leave it out.
        """
        if not self._faults_are_no_data:
            raise exc
        if self._stats.fault is None:
            self._stats.fault = reason
            log.warning(
                "environment fault in %s#%d, the episode is not scored: %s",
                self._stats.task_name,
                self._stats.seed,
                reason,
            )
        return format_fault(reason.split(":", 1)[0])

    def get_reward(self) -> float | None:
        """Task success: 1.0 if the MiniWoB task reported a positive reward, else 0.0; None (no data) when
        the environment failed during the episode.

        Raises the EnvServiceUnavailable a tool met during the episode: a 0.0 would silently train on an
        episode that never ran.
        """
        if self._rollouts is not None:
            self._rollouts.drain(self)
        self._dead.raise_if_tripped()
        if self._stats.fault is not None:
            return None
        return 1.0 if self._stats.success else 0.0

    # -- tools (one per whitelisted action) ------------------------------------------------------
    def click(self, bid: str) -> str:
        """Click an element of the page.

        Args:
            bid: The element's bid, the id in brackets in the page tree, e.g. '13'.

        Returns:
            The page after the action.
        """
        return self._act(action_text("click", bid))

    def dblclick(self, bid: str) -> str:
        """Double-click an element of the page.

        Args:
            bid: The element's bid, e.g. '13'.

        Returns:
            The page after the action.
        """
        return self._act(action_text("dblclick", bid))

    def hover(self, bid: str) -> str:
        """Move the mouse over an element.

        Args:
            bid: The element's bid, e.g. '13'.

        Returns:
            The page after the action.
        """
        return self._act(action_text("hover", bid))

    def fill(self, bid: str, value: str) -> str:
        """Replace the text of an input field.

        Args:
            bid: The input field's bid, e.g. '14'.
            value: The text to enter.

        Returns:
            The page after the action.
        """
        return self._act(action_text("fill", bid, value))

    def select_option(self, bid: str, option: str) -> str:
        """Choose an option of a drop-down list (select element) by its label.

        Args:
            bid: The select element's bid, e.g. '15'.
            option: The label of the option to choose.

        Returns:
            The page after the action.
        """
        return self._act(action_text("select_option", bid, option))

    def press(self, bid: str, key: str) -> str:
        """Focus an element and press a key or key combination on it.

        Args:
            bid: The element's bid, e.g. '14'.
            key: A key name such as 'Enter', 'Tab', 'ArrowDown' or 'Control+a'.

        Returns:
            The page after the action.
        """
        return self._act(action_text("press", bid, key))

    def focus(self, bid: str) -> str:
        """Give keyboard focus to an element.

        Args:
            bid: The element's bid, e.g. '14'.

        Returns:
            The page after the action.
        """
        return self._act(action_text("focus", bid))

    def clear(self, bid: str) -> str:
        """Clear the text of an input field.

        Args:
            bid: The input field's bid, e.g. '14'.

        Returns:
            The page after the action.
        """
        return self._act(action_text("clear", bid))

    def drag_and_drop(self, from_bid: str, to_bid: str) -> str:
        """Drag one element and drop it onto another.

        Args:
            from_bid: The bid of the element to drag.
            to_bid: The bid of the element to drop onto.

        Returns:
            The page after the action.
        """
        return self._act(action_text("drag_and_drop", from_bid, to_bid))

    def scroll(self, delta_x: float, delta_y: float) -> str:
        """Scroll the page.

        Args:
            delta_x: Horizontal pixels (positive scrolls right).
            delta_y: Vertical pixels (positive scrolls down).

        Returns:
            The page after the action.
        """
        return self._act(action_text("scroll", delta_x, delta_y))

    def keyboard_type(self, text: str) -> str:
        """Type text into the element that has focus.

        Args:
            text: The text to type.

        Returns:
            The page after the action.
        """
        return self._act(action_text("keyboard_type", text))

    def keyboard_press(self, key: str) -> str:
        """Press a key or key combination on the element that has focus.

        Args:
            key: A key name such as 'Enter', 'Tab' or 'Control+a'.

        Returns:
            The page after the action.
        """
        return self._act(action_text("keyboard_press", key))

    # -- read-only view for trainers, evaluators and recorders --------------------------------------
    # Properties, not methods: TRL turns every public method into a tool the model could call.
    @property
    def episode(self) -> EpisodeStats:
        """The current episode's statistics so far: a copy, so only the environment itself updates them."""
        return replace(self._stats, env_latency_s=list(self._stats.env_latency_s))

    @property
    def goal(self) -> str:
        return self._goal

    @property
    def first_observation(self) -> str:
        """The text ``reset`` returned: what the model saw before its first action."""
        return self._first_observation

    @property
    def first_screenshot(self) -> str | None:
        """The first page as a base64 PNG; None unless the service runs with --screenshots."""
        return self._first_screenshot

    @property
    def answers(self) -> tuple[StepAnswer, ...]:
        """Every tool call of the episode as the environment saw it, in order (for recordings)."""
        return tuple(self._answers)

    @property
    def service_error(self) -> EnvServiceUnavailable | None:
        """The error that declared the service dead during this episode; ``get_reward`` raises it again."""
        return self._dead.error

    # -- helpers ---------------------------------------------------------------------------------

    def _act(self, action: str) -> str:
        """Run one action now, or on this environment's lane when the trainer runs rollouts concurrently."""
        if self._rollouts is not None:
            return self._rollouts.defer(self, lambda: self._act_now(action))
        return self._act_now(action)

    def _act_now(self, action: str) -> str:
        """Run one action; the service's refusal or failure goes back to the model as text."""
        self._dead.raise_if_tripped()
        stats = self._stats
        if stats.fault is not None:
            return self._answered(action, format_fault("the episode was already lost"), reached_service=False)
        if self._session_id is None:
            raise RuntimeError("reset() must be called before any tool")
        if stats.done or stats.truncated:
            text = format_episode_end(stats.success, stats.steps) if stats.done else format_step_limit(self._max_steps)
            return self._answered(action, text, reached_service=False, done=stats.done, truncated=stats.truncated)
        started = time.perf_counter()
        try:
            response = self._client.step(self._session_id, action)
        except EnvRequestError as exc:
            stats.env_latency_s.append(time.perf_counter() - started)
            if exc.status == 422:  # invalid action: counts as a step so a model cannot loop forever
                stats.invalid_actions += 1
                stats.steps += 1
                if stats.steps >= self._max_steps:
                    stats.truncated = True
                return self._answered(
                    action, f"Invalid action: {exc.message}", error=exc.message, reward=0.0, truncated=stats.truncated
                )
            # 410 session_lost, 5xx, a session reaped mid-episode: the browser failed, not the model. The
            # session id is kept: the next reset revives it in place or, failing that, starts a new one.
            return self._answered(action, self._fault(f"{action} failed: {exc}", exc), error=str(exc))
        except EnvServiceUnavailable as exc:
            stats.env_latency_s.append(time.perf_counter() - started)
            if self._faults_are_no_data and self._service_answers():
                return self._answered(action, self._fault(f"{action} failed: {exc}", exc), error=str(exc))
            self._dead.trip(exc)
            raise
        stats.env_latency_s.append(time.perf_counter() - started)
        stats.steps = response.step
        stats.success = response.reward > 0
        stats.done = response.done
        stats.truncated = response.truncated
        if response.observation.last_action_error:
            stats.invalid_actions += 1
        if stats.done:
            text = format_episode_end(stats.success, stats.steps)
        else:
            text = format_observation(response.observation, stats.steps, self._max_steps)
            if stats.truncated:
                text += "\n" + format_step_limit(self._max_steps)
        return self._answered(
            action,
            text,
            error=response.observation.last_action_error,
            reward=response.reward,
            done=response.done,
            truncated=response.truncated,
            screenshot=response.observation.screenshot_png_b64,
        )

    def _answered(
        self,
        action: str,
        text: str,
        *,
        error: str = "",
        reward: float | None = None,
        done: bool = False,
        truncated: bool = False,
        reached_service: bool = True,
        screenshot: str | None = None,
    ) -> str:
        self._answers.append(
            StepAnswer(action, self._last_text, text, error, reward, done, truncated, reached_service, screenshot)
        )
        self._last_text = text
        return text

    def _close(self) -> None:
        """Free the browser session (TRL never closes environments; the trainer calls this at the end)."""
        if self._session_id is not None:
            try:
                self._client.close_session(self._session_id)
            except Exception:  # the service may already be gone at shutdown; nothing to keep
                pass
            self._session_id = None


# TRL exposes every public method except these two as a tool (GRPOTrainer, environment_factory).
NOT_TOOLS = ("reset", "get_reward")


def tool_names(env_class: type = BrowserEnvironment) -> list[str]:
    """Tool names in TRL's order (inspect.getmembers sorts by name), so prompts render identically."""
    return [
        name
        for name, _ in inspect.getmembers(env_class, predicate=inspect.isfunction)
        if not name.startswith("_") and name not in NOT_TOOLS
    ]


def bound_tools(env: BrowserEnvironment | None = None) -> list[Callable[..., str]]:
    """The bound tool methods, as TRL passes them to ``apply_chat_template(tools=...)``.

    Without ``env``, the methods of an unconnected instance: enough to render the tool schemas.
    """
    env = env if env is not None else BrowserEnvironment.__new__(BrowserEnvironment)
    return [getattr(env, name) for name in tool_names(type(env))]
