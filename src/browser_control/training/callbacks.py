"""Trainer callbacks: collapse warnings in TensorBoard and the metrics summary of the final checkpoint."""

from __future__ import annotations

import logging
import math
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from browser_control.client import EnvClient, EnvRequestError, EnvServiceUnavailable
from browser_control.training import checkpoints as ckpt
from browser_control.training.rollouts import SaturationMonitor

log = logging.getLogger(__name__)

# Keys whose recent average summarises how well the run ended (metrics.json "recent").
SUMMARY_PREFIXES = (
    "reward",
    "success/",
    "episode/",
    "env/",
    "entropy",
    "frac_reward_zero_std",
    "tools/",
    "completions/mean_length",
    "collapse/",
)


class CollapseGuard(TrainerCallback):
    """Warns loudly when the policy collapses, and keeps what the summary needs.

    It must run before the TensorBoard callback: the scalars it adds to ``logs`` are then written with
    the step's other metrics.
    """

    def __init__(self, entropy_threshold: float, monitor: SaturationMonitor, recent: int = 10):
        self.entropy_threshold = entropy_threshold
        self.monitor = monitor
        self.recent = recent
        self.history: list[dict[str, float]] = []
        self.final: dict[str, float] = {}
        self.warnings: list[str] = []
        self._low_entropy_streak = 0

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs:
            return
        # A metric with no value in this window (e.g. the zero-weight metrics reward, which scores nothing)
        # cannot be a TensorBoard scalar; drop it instead of letting the writer warn every step.
        for key in [k for k, v in logs.items() if v is None]:
            del logs[key]
        if "train_runtime" in logs:  # the end-of-training summary, not a training step
            self.final = {k: float(v) for k, v in logs.items() if _is_number(v)}
            return
        entropy = logs.get("entropy")
        if _is_number(entropy):
            low = entropy < self.entropy_threshold
            logs["collapse/low_entropy"] = 1.0 if low else 0.0
            if low:
                self._low_entropy_streak += 1
                message = (
                    f"mean token entropy {entropy:.4f} is below entropy_warning_threshold "
                    f"{self.entropy_threshold}: the policy is collapsing onto one answer; lower "
                    "learning_rate or raise temperature"
                )
                if self._low_entropy_streak == 1:
                    self.warnings.append(f"step {state.global_step}: {message}")
                log.warning("COLLAPSE GUARD (step %d): %s", state.global_step, message)
            else:
                self._low_entropy_streak = 0
        self.history.append(
            {"step": float(state.global_step), **{k: float(v) for k, v in logs.items() if _is_number(v)}}
        )

    def summary(self, state: TrainerState | None = None) -> dict[str, Any]:
        """What metrics.json holds: the last point, a recent average, the warnings."""
        last = self.history[-1] if self.history else {}
        window = self.history[-self.recent :]
        recent: dict[str, float] = {}
        for key in sorted({k for point in window for k in point}):
            if key.startswith(SUMMARY_PREFIXES):
                values = [p[key] for p in window if key in p and not math.isnan(p[key])]
                if values:
                    recent[key] = sum(values) / len(values)
        return {
            "global_step": state.global_step if state is not None else int(last.get("step", 0)),
            "max_steps": state.max_steps if state is not None else None,
            "recent_window_logs": len(window),
            "recent": recent,
            "last": last,
            "train": self.final,
            "saturated_tasks": sorted(self.monitor.saturated),
            "warnings": self.warnings + self.monitor.warnings,
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class CompletionMarker(TrainerCallback):
    """Proves each intermediate checkpoint complete once the Trainer has written all of it.

    The Trainer calls ``on_save`` after weights, optimizer, scheduler, RNG and trainer state are written
    (and after an exception in any of them, never); only then is checkpoint-complete.json written, by
    rename. Resume and cleanup trust that file, not the presence of the Trainer's own files.
    """

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not args.should_save:  # only the process that writes the checkpoint marks it
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            ckpt.mark_complete(checkpoint, state.global_step)


class GracefulStop(TrainerCallback):
    """SIGTERM/SIGINT (``docker compose stop``, Ctrl-C): save an intermediate checkpoint, then stop.

    The Trainer checks its control flags after each optimizer step, so the run ends at a step boundary
    with a complete checkpoint to resume from; a second signal interrupts at once. The handlers are only
    installed in the main thread (Python's rule) and are restored by :meth:`uninstall`.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signal_number = signum
        log.warning(
            "signal %d: saving a checkpoint at the end of this step, then stopping (send it again to stop at once)",
            signum,
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        stop = self.signal_number is not None
        if args.world_size > 1:
            # Every rank must stop after the same step: one that went on would wait forever for the others
            # at its next gather. A signal may reach the ranks at different moments, so they agree here.
            stop = _any_rank(stop, args.device)
            if stop and self.signal_number is None:
                self.signal_number = signal.SIGTERM
        if stop:
            control.should_save = True
            control.should_training_stop = True


def _any_rank(flag: bool, device: Any) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class HeldOutEvaluation(TrainerCallback):
    """Every ``eval_steps`` optimizer steps, play greedy episodes on evaluation seeds and log the success.

    Uses the evaluation harness (the same prompt, tools and parser as ``browser-control evaluate``) on the
    model being trained, so the TensorBoard curve ``eval/success_rate`` is comparable with offline reports.
    Evaluation seeds never overlap training seeds (browser_control.seeds).
    """

    def __init__(
        self,
        every: int,
        tasks: list[str],
        episodes: int,
        env_url: str,
        max_episode_steps: int,
        max_completion_tokens: int,
        writer: Any | None,
        record_dir: Any | None = None,
    ):
        self.every, self.tasks, self.episodes = every, tasks, episodes
        self.env_url, self.max_episode_steps = env_url, max_episode_steps
        self.max_completion_tokens = max_completion_tokens
        self.writer = writer  # a SummaryWriter on the main process, None elsewhere
        # Every evaluation's episodes go to record_dir/step-N/ (browser-control view compares two steps on the
        # same held-out task instances); None records nothing.
        self.record_dir = record_dir
        self.history: list[dict[str, float]] = []
        self.skipped: list[int] = []  # steps whose evaluation an environment fault cut short

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if state.global_step % self.every or model is None or processing_class is None:
            return
        from browser_control.evaluation.model_policy import from_model
        from browser_control.evaluation.runner import EvaluationError, evaluate_policy

        policy = from_model(
            model, processing_class, label=f"step-{state.global_step}", max_completion_tokens=self.max_completion_tokens
        )
        recorder = None
        if self.record_dir is not None:
            from pathlib import Path

            from browser_control.recording import EpisodeRecorder

            try:
                recorder = EpisodeRecorder(Path(self.record_dir) / f"step-{state.global_step:06d}", fresh=True)
            except OSError as exc:  # a recording is not worth stopping training for
                log.warning("held-out evaluation at step %d is not recorded: %s", state.global_step, exc)
        from browser_control.env_pool import pick_healthy_url

        env_url = pick_healthy_url(self.env_url)  # a pool: one healthy replica plays the evaluation
        try:
            report = evaluate_policy(
                policy,
                self.tasks,
                self.episodes,
                env_url=env_url,
                max_episode_steps=self.max_episode_steps,
                progress=False,
                recorder=recorder,
            )
        except (EnvRequestError, EnvServiceUnavailable) as exc:
            # An environment fault costs this evaluation, not the run: training episodes hit by the same
            # fault are no data too. A service that no longer answers at all still ends the run.
            if isinstance(exc, EnvServiceUnavailable) and not _answers(env_url):
                raise
            self.skipped.append(state.global_step)
            log.warning("held-out evaluation at step %d skipped: the environment failed (%s)", state.global_step, exc)
            return
        except EvaluationError as exc:
            if not _answers(env_url):  # the service died: the run stops as it does in training (exit 3)
                raise EnvServiceUnavailable(str(exc)) from exc
            raise
        metrics = report.metrics("eval")
        self.history.append({"step": state.global_step, **metrics})
        log.info(
            "held-out evaluation at step %d: %s",
            state.global_step,
            ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()),
        )
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, state.global_step)
            self.writer.flush()


def _answers(url: str) -> bool:
    from browser_control.client import service_answers

    with EnvClient(url) as client:
        return service_answers(client)
