"""Running an engine schedule on a scan file or a live stream: the driver of the CLI, the worker and the flows."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.checkpoint import Autosave, Checkpoint, result_state
from workers.data import ReconState, ScanData, probe_guess
from workers.devices import resolve_device
from workers.engines.base import Engine
from workers.engines.options import OPTIONS, EngineName, EngineOptions
from workers.engines.registry import make_engine
from workers.errors import DataError
from workers.io import load_scan, write_result
from workers.job import FileInput, JobSpec
from workers.previews import Preview, PreviewPublisher
from workers.stream.preprocess import build_preprocessor
from workers.stream.receiver import Receiver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One step of a schedule: ``iterations`` epochs of ``engine`` with validated ``options``."""

    engine: EngineName
    iterations: int
    options: EngineOptions

    @classmethod
    def parse(cls, engine: str, iterations: int, options: dict[str, Any] | None = None) -> Stage:
        name = EngineName(engine)
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        return cls(name, iterations, OPTIONS[name].model_validate(options or {}))


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


def schedule_name(schedule: Sequence[Stage]) -> str:
    return ",".join(f"{s.engine.value}x{s.iterations}" for s in schedule)


class RunRecord:
    """One run's histories across its stages: runs epochs, reports each, saves what a resume needs.

    ``frames`` gives the frames used so far (a stream's, in arrival order, with their frame
    numbers) or None (a file job: the input file holds them, in frame order).
    """

    def __init__(
        self, state: ReconState, hooks: Hooks, frames: Callable[[], tuple[ScanData, np.ndarray]] | None = None
    ) -> None:
        self.state, self.hooks, self.frames = state, hooks, frames
        self.losses: list[float] = []
        self.times: list[float] = []
        self.done = 0
        self.scheduled_done = 0
        self.stopped = False
        self.attrs: dict[str, Any] = {}

    def stop_requested(self) -> bool:
        self.stopped = self.stopped or bool(self.hooks.should_stop and self.hooks.should_stop())
        return self.stopped

    def epoch(self, k: int, engine: Engine, offset: float, total: int, *, scheduled: bool, force: bool) -> None:
        """One epoch of ``engine`` (stage ``k``); ``scheduled``: it counts towards the schedule."""
        loss = engine.iterate(1)[0]
        self.done += 1
        self.scheduled_done += int(scheduled)
        self.losses.append(loss)
        self.times.append(offset + engine.time_history[-1])
        hooks = self.hooks
        if hooks.on_progress is not None:
            p = Progress(k, engine.name.value, self.done, total, loss, self.times[-1], engine.n_frames, not scheduled)
            hooks.on_progress(p)
        if hooks.previews is not None:
            hooks.previews.offer(self.state, self.done, engine.n_frames, loss, force=force)
        if hooks.autosave is not None:
            hooks.autosave.maybe(self.checkpoint)

    def checkpoint(self) -> Checkpoint:
        """What a resume needs now (and the partial result is made of)."""
        state = self.state.to_numpy()
        scan, index = self.frames() if self.frames is not None else (None, np.arange(len(state["positions"])))
        attrs = {**self.attrs, "iterations": self.done, "stopped": self.stopped}
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
        all_attrs = {**self.attrs, **attrs, "iterations": self.done, "stopped": self.stopped, "complete": True}
        return Result(result_state(saved.state, saved.frame_index), saved.loss, saved.time_s, all_attrs)


def run_schedule(
    data: ScanData,
    schedule: Sequence[Stage],
    *,
    device: torch.device,
    n_modes: int = 1,
    seed: int = 0,
    hooks: Hooks | None = None,
    resume: Checkpoint | None = None,
) -> Result:
    """Reconstruct ``data`` by running each stage's engine in turn on one shared state.

    ``resume`` (a checkpoint of this scan) restores the state and histories and skips the
    schedule epochs already done. Histories run across stages (times offset by the previous
    stages' wall time). ``hooks.should_stop`` is polled between epochs; when it returns True the
    run ends early and the partial result is returned with ``attrs["stopped"] = True``.
    """
    torch.manual_seed(seed)
    state = ReconState.initial(probe_guess(data, n_modes), device=device)
    frames = None
    if resume is not None and resume.scan is not None:
        stream = resume.scan, resume.frame_index
        frames = lambda: stream  # noqa: E731  (a stream's frames, in arrival order)
    run = RunRecord(state, hooks or Hooks(), frames)
    run.attrs = _file_attrs(data, schedule, device)
    skip = 0
    if resume is not None:
        run.losses, run.times = list(resume.loss), list(resume.time_s)
        run.done = int(resume.attrs.get("iterations", resume.iterations_done))
        run.scheduled_done = skip = resume.iterations_done
    total = run.done - run.scheduled_done + sum(s.iterations for s in schedule)
    previous: Engine | None = None
    with run.saved_on_failure():
        for k, stage in enumerate(schedule):
            engine = make_engine(stage.engine, state, data.geometry, stage.options, mask=data.mask, seed=seed + k)
            if previous is None:
                engine.add_frames(data.intensities, data.positions)
                if resume is not None:
                    restore(state, resume.state)
            else:
                engine.adopt_frames(previous)
            previous = engine
            offset = run.times[-1] if run.times else 0.0
            iterations = max(stage.iterations - skip, 0)
            skip = max(skip - stage.iterations, 0)
            for _ in range(iterations):
                if run.stop_requested():
                    break
                run.epoch(k, engine, offset, total, scheduled=True, force=run.done + 1 == total)
            if run.stopped:
                break
    return run.result({"frames_used": previous.n_frames if previous else 0})


def _file_attrs(data: ScanData, schedule: Sequence[Stage], device: torch.device) -> dict[str, Any]:
    return {
        "engines": schedule_name(schedule),
        "device": str(device),
        "pixel_size": data.geometry.pixel_size,
        "propagation": data.geometry.kind,
        "frames_received": data.n_frames,
        "version": package_version(),
        "input_file": data.source,
    }


def restore(state: ReconState, saved: Mapping[str, np.ndarray]) -> None:
    """Overwrite ``state`` with a saved host copy of the same scan (shapes must match)."""
    for key in ("object", "probe", "positions"):
        current = getattr(state, key)
        if tuple(saved[key].shape) != tuple(current.shape):
            raise DataError(f"checkpoint: {key} has shape {saved[key].shape}, the run has {tuple(current.shape)}")
        setattr(state, key, torch.as_tensor(saved[key]).to(device=current.device, dtype=current.dtype))
    state.origin = np.asarray(saved["origin"], dtype=np.float64).copy()


def run_stream(
    receiver: Receiver,
    schedule: Sequence[Stage],
    *,
    device: torch.device,
    n_modes: int = 1,
    seed: int = 0,
    hooks: Hooks | None = None,
    warmup_frames: int = 16,
) -> Result:
    """Reconstruct a live scan: the first stage's engine iterates (newest frames first) while
    frames arrive, then the whole ``schedule`` runs on all frames (``iterations`` after scan end).

    Needs a started ``receiver``. The first epoch over the complete scan forces a preview, and
    ``hooks.autosave`` saves when the scan ends as well as periodically.
    """
    hooks = hooks or Hooks()
    torch.manual_seed(seed)
    buffer, asm = receiver.buffer, receiver.assembler
    stop = hooks.should_stop or (lambda: False)
    while len(buffer) < warmup_frames and not receiver.done.is_set() and not stop():
        buffer.wait(0.05) if len(buffer) else receiver.done.wait(0.05)
    index, frames, corners = buffer.drain()
    if not len(index) or asm.geometry is None:
        raise DataError(f"stream {receiver.endpoint}: ended without usable frames ({asm.counters.as_dict()})")
    geometry, mask = asm.geometry, asm.mask
    assert asm.start is not None
    first = ScanData(frames, corners, geometry, mask, asm.start.probe, receiver.endpoint)
    state = ReconState.initial(probe_guess(first, n_modes), device=device)
    seen = [(index, frames, corners)]

    def received() -> tuple[ScanData, np.ndarray]:
        if len(seen) > 1:
            seen[:] = [tuple(np.concatenate(parts) for parts in zip(*seen, strict=True))]  # type: ignore[misc]
        order, intensities, positions = seen[0]
        return ScanData(intensities, positions, geometry, mask), order

    run = RunRecord(state, hooks, received)
    run.attrs = {
        "engines": schedule_name(schedule),
        "device": str(device),
        "pixel_size": geometry.pixel_size,
        "propagation": geometry.kind,
        "version": package_version(),
        "input_stream": receiver.endpoint,
        "counters": json.dumps(asm.counters.as_dict()),
    }
    live = schedule[0].options.model_copy(update={"order": "newest-first"})
    engine = make_engine(schedule[0].engine, state, geometry, live, mask=mask, seed=seed)
    engine.add_frames(frames, corners)
    after_scan = sum(s.iterations for s in schedule)
    with run.saved_on_failure():
        while not (receiver.done.is_set() and len(buffer) == 0):
            if run.stop_requested():
                break
            index, frames, corners = buffer.drain()
            if len(index):
                engine.add_frames(frames, corners)
                seen.append((index, frames, corners))
            run.epoch(0, engine, 0.0, run.done + 1 + after_scan, scheduled=False, force=False)

        run.attrs["counters"] = json.dumps(asm.counters.as_dict())
        if hooks.autosave is not None:
            hooks.autosave.now(run.checkpoint())
        previous, total = engine, run.done + after_scan
        for k, stage in enumerate(schedule):
            if run.stopped:
                break
            offset = run.times[-1] if run.times else 0.0
            engine = make_engine(stage.engine, state, geometry, stage.options, mask=mask, seed=seed + k)
            engine.adopt_frames(previous)
            previous = engine
            for _ in range(stage.iterations):
                if run.stop_requested():
                    break
                run.epoch(k, engine, offset, total, scheduled=True, force=run.scheduled_done == 0)
    attrs = stream_accounting(asm.counters.as_dict()) | {"frames_used": engine.n_frames}
    return run.result(attrs | {"iterations_after_scan": run.scheduled_done, "frame_index": np.sort(received()[1])})


def stream_accounting(counters: Mapping[str, Any]) -> dict[str, Any]:
    """The result attributes of a stream's frame accounting (``Counters.as_dict``)."""
    return {
        "frames_received": counters["received"],
        "frames_rejected": counters["frames_rejected"],
        "frames_rejected_by_reason": json.dumps(counters["rejected"]),
        "frames_missing": counters["missing"],
        "frames_duplicate": counters["duplicates"],
    }


def run_job(
    job: JobSpec,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_preview: Callable[[Preview], None] | None = None,
    cancel: threading.Event | None = None,
    on_listening: Callable[[Receiver], None] | None = None,
) -> Result:
    """Run a job (file or stream input) to its result file; resumes from ``job.checkpoint`` if it exists.

    While it runs, the checkpoint and a partial result (``complete`` False) are saved every
    ``job.save_interval_s``; if the run fails, the partial result is saved before the error
    propagates. ``on_listening`` is called once a stream job's receiver is bound.
    """
    device = resolve_device(job.device)
    schedule = [Stage.parse(s.engine, s.iterations, s.options) for s in job.schedule]
    previews = PreviewPublisher(on_preview, job.preview_interval_s) if on_preview is not None else None
    autosave = Autosave(job.output, job.checkpoint, job.save_interval_s)
    hooks = Hooks(on_progress, previews, cancel.is_set if cancel is not None else None, autosave)
    try:
        if job.checkpoint and Path(job.checkpoint).exists():
            result = _resume(Checkpoint.load(job.checkpoint), schedule, device, job, hooks)
        elif isinstance(job.input, FileInput):
            data = load_scan(job.input.file)
            result = run_schedule(data, schedule, device=device, seed=job.seed, hooks=hooks)
        else:
            receiver = Receiver(
                job.input.stream,
                positions=job.input.positions,
                preprocess=build_preprocessor(job.input.preprocess),
                idle_timeout_s=job.input.idle_timeout_s,
            ).start()
            try:
                if on_listening is not None:
                    on_listening(receiver)
                result = run_stream(receiver, schedule, device=device, seed=job.seed, hooks=hooks)
            finally:
                receiver.close()
    finally:
        if previews is not None:
            previews.close()
    result.write(job.output)
    return result


def _resume(saved: Checkpoint, schedule: Sequence[Stage], device: torch.device, job: JobSpec, hooks: Hooks) -> Result:
    """Continue a checkpointed run: the schedule's remaining epochs on the saved frames (a stream's) or
    the input file (a file job's), from the saved state and histories."""
    if saved.scan is not None:
        scan = saved.scan
    elif isinstance(job.input, FileInput):
        scan = load_scan(job.input.file)
    else:
        raise DataError(f"{job.checkpoint}: a stream checkpoint without its frames cannot be resumed")
    result = run_schedule(scan, schedule, device=device, seed=job.seed, hooks=hooks, resume=saved)
    kept = {k: v for k, v in saved.attrs.items() if k not in ("iterations", "stopped", "counters", "failed")}
    result.attrs.update(kept, resumed_from=str(job.checkpoint), frame_index=np.sort(saved.frame_index))
    if "counters" in saved.attrs:
        result.attrs.update(stream_accounting(json.loads(saved.attrs["counters"])))
        result.attrs["input_stream"] = saved.attrs.get("input_stream", "")
        result.attrs.pop("input_file", None)
    return result
