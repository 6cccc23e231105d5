"""What a run reports and keeps: progress per epoch, hooks, histories across stages, checkpoints, the result."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from workers.checkpoint import Autosave, Checkpoint, result_state
from workers.data import ScanData
from workers.engines.base import Engine
from workers.io import write_result
from workers.previews import PreviewPublisher
from workers.state import ReconState

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a running schedule reports after every epoch."""

    stage: int
    engine: str
    iteration: int
    total_iterations: int
    loss: float
    elapsed_s: float
    frames_used: int = 0
    streaming: bool = False


@dataclass
class Hooks:
    """Where a run reports: progress per epoch, throttled previews, cancellation, periodic saving."""

    on_progress: Callable[[Progress], None] | None = None
    previews: PreviewPublisher | None = None
    should_stop: Callable[[], bool] | None = None
    autosave: Autosave | None = None


@dataclass
class Result:
    """A finished (or stopped) schedule: the state's host copy, histories and attributes."""

    state: dict[str, np.ndarray]
    loss: np.ndarray
    time_s: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> None:
        write_result(path, self.state, loss=self.loss, time_s=self.time_s, attrs=self.attrs)


def package_version() -> str:
    try:
        return version("ptychostream")
    except PackageNotFoundError:
        return "unknown"


class RunRecord:
    """One run's histories across its stages: runs epochs, reports each, saves what a resume needs.

    ``frames`` gives the frames used so far (a stream's, in arrival order, with their frame
    numbers) or None (a file job: the input file holds them, in frame order). ``stage_epochs``
    holds the epochs run in each stage started so far (a transform stage counts 0), so that a
    resume continues exactly where the run stopped.
    """

    def __init__(
        self, state: ReconState, hooks: Hooks, frames: Callable[[], tuple[ScanData, np.ndarray]] | None = None
    ) -> None:
        self.state, self.hooks, self.frames = state, hooks, frames
        self.losses: list[float] = []
        self.times: list[float] = []
        self.done = 0
        self.scheduled_done = 0
        self.stage_epochs: list[int] = []
        self.stopped = False
        self.attrs: dict[str, Any] = {}
        self._engine: Engine | None = None
        self._offset = 0.0
        self._pending = 0.0
        self._previewed = -1

    def stop_requested(self) -> bool:
        self.stopped = self.stopped or bool(self.hooks.should_stop and self.hooks.should_stop())
        return self.stopped

    def epoch(self, k: int, engine: Engine, total: int, *, scheduled: bool, force: bool) -> None:
        """One epoch of ``engine`` (stage ``k``); ``scheduled``: it counts towards the schedule.

        Times run on across stages: the engine's own clock plus where the previous stage ended, plus the
        time of transform stages in between (``add_time``).
        """
        if engine is not self._engine:
            self._engine, self._offset = engine, (self.times[-1] if self.times else 0.0)
        self._offset, self._pending = self._offset + self._pending, 0.0
        loss = engine.iterate(1)[0]
        self.done += 1
        if scheduled:
            self.scheduled_done += 1
            self.stage_epochs[-1] += 1
        self.losses.append(loss)
        self.times.append(self._offset + engine.time_history[-1])
        hooks = self.hooks
        if hooks.on_progress is not None:
            p = Progress(k, engine.name.value, self.done, total, loss, self.times[-1], engine.n_frames, not scheduled)
            hooks.on_progress(p)
        previews = hooks.previews
        if previews is not None and previews.offer(self.state, self.done, engine.n_frames, loss, force=force):
            self._previewed = self.done
        if hooks.autosave is not None:
            hooks.autosave.maybe(self.checkpoint)

    def add_time(self, seconds: float) -> None:
        """Count ``seconds`` spent between epochs (a transform stage) in the times of the epochs that follow."""
        self._pending += seconds

    def stage_losses(self) -> list[float]:
        """The losses of the current stage (a resumed stage's from before the resume too)."""
        return self.losses[len(self.losses) - self.stage_epochs[-1] :] if self.stage_epochs else []

    def final_preview(self, engine: Engine | None) -> None:
        """A preview of the final state, never dropped, unless the last epoch's was published."""
        previews = self.hooks.previews
        if previews is not None and engine is not None and self.losses and self._previewed != self.done:
            previews.offer(self.state, self.done, engine.n_frames, self.losses[-1], force=True)

    def checkpoint(self) -> Checkpoint:
        """What a resume needs now (and the partial result is made of)."""
        state = self.state.to_numpy()
        scan, index = self.frames() if self.frames is not None else (None, np.arange(len(state["positions"])))
        attrs = {
            **self.attrs,
            "iterations": self.done,
            "stopped": self.stopped,
            "stage_epochs": json.dumps(self.stage_epochs),
        }
        return Checkpoint(
            scan, index, state, np.asarray(self.losses), np.asarray(self.times), self.scheduled_done, attrs
        )

    @contextlib.contextmanager
    def saved_on_failure(self) -> Iterator[None]:
        """If the block raises, save the partial result and the checkpoint first, then let the error go on."""
        try:
            yield
        except Exception as exc:
            if self.hooks.autosave is not None:
                self.attrs["failed"] = f"{type(exc).__name__}: {exc}"
                try:
                    self.hooks.autosave.now(self.checkpoint())
                except Exception:  # the original error matters more than this one
                    log.exception("could not save the partial result of a failed run")
            raise

    def result(self, attrs: Mapping[str, Any]) -> Result:
        """The run's result; its final checkpoint is saved too, so that a resume of a stopped (or
        finished) run continues from here rather than from the last periodic save."""
        saved = self.checkpoint()
        if self.hooks.autosave is not None and self.hooks.autosave.checkpoint is not None:
            saved.save(self.hooks.autosave.checkpoint)
        all_attrs = {**saved.attrs, **attrs, "complete": not self.stopped}
        all_attrs.pop("stage_epochs")
        return Result(result_state(saved.state, saved.frame_index), saved.loss, saved.time_s, all_attrs)
