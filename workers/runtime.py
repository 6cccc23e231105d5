"""Running an engine schedule on a scan file or a live stream: the driver of the CLI, the worker and the flows."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.checkpoint import Checkpoint
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


def run_schedule(
    data: ScanData,
    schedule: Sequence[Stage],
    *,
    device: torch.device,
    n_modes: int = 1,
    seed: int = 0,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    initial_state: Mapping[str, np.ndarray] | None = None,
) -> Result:
    """Reconstruct ``data`` by running each stage's engine in turn on one shared state.

    ``initial_state`` (object, probe, positions, origin as saved by a checkpoint) replaces
    the fresh state once the frames are in, to resume a run.

    Histories run across stages (times offset by the previous stages' wall time).
    ``should_stop`` is polled between epochs; when it returns True the run ends early and
    the partial result is returned with ``attrs["stopped"] = True``.
    """
    torch.manual_seed(seed)
    state = ReconState.initial(probe_guess(data, n_modes), device=device)
    losses: list[float] = []
    times: list[float] = []
    total = sum(s.iterations for s in schedule)
    done, stopped = 0, False
    engine: Engine | None = None
    previous: Engine | None = None
    for k, stage in enumerate(schedule):
        offset = times[-1] if times else 0.0
        engine = make_engine(stage.engine, state, data.geometry, stage.options, mask=data.mask, seed=seed + k)
        if previous is None:
            engine.add_frames(data.intensities, data.positions)
            if initial_state is not None:
                restore(state, initial_state)
        else:
            engine.adopt_frames(previous)
        for _ in range(stage.iterations):
            if should_stop is not None and should_stop():
                stopped = True
                break
            loss = engine.iterate(1)[0]
            done += 1
            losses.append(loss)
            times.append(offset + engine.time_history[-1])
            if on_progress is not None:
                on_progress(Progress(k, stage.engine.value, done, total, loss, times[-1], engine.n_frames))
        previous = engine
        if stopped:
            break
    attrs = {
        "engines": ",".join(f"{s.engine.value}x{s.iterations}" for s in schedule),
        "iterations": done,
        "device": str(device),
        "pixel_size": data.geometry.pixel_size,
        "propagation": data.geometry.kind,
        "frames_received": data.n_frames,
        "frames_used": engine.n_frames if engine else 0,
        "version": package_version(),
        "input_file": data.source,
        "stopped": stopped,
    }
    return Result(state.to_numpy(), np.asarray(losses), np.asarray(times), attrs)


def restore(state: ReconState, saved: Mapping[str, np.ndarray]) -> None:
    """Overwrite ``state`` with a saved host copy of the same scan (shapes must match)."""
    for key in ("object", "probe", "positions"):
        current = getattr(state, key)
        if tuple(saved[key].shape) != tuple(current.shape):
            raise DataError(f"checkpoint: {key} has shape {saved[key].shape}, the run has {tuple(current.shape)}")
        setattr(state, key, torch.as_tensor(saved[key]).to(device=current.device, dtype=current.dtype))
    state.origin = np.asarray(saved["origin"], dtype=np.float64).copy()


@dataclass
class StreamHooks:
    """Where a streaming run reports: progress per epoch, throttled previews, cancellation."""

    on_progress: Callable[[Progress], None] | None = None
    previews: PreviewPublisher | None = None
    should_stop: Callable[[], bool] | None = None


def run_stream(
    receiver: Receiver,
    schedule: Sequence[Stage],
    *,
    device: torch.device,
    n_modes: int = 1,
    seed: int = 0,
    hooks: StreamHooks | None = None,
    checkpoint: str | Path | None = None,
    warmup_frames: int = 16,
) -> Result:
    """Reconstruct a live scan: the first stage's engine iterates (newest frames first) while
    frames arrive, then the whole ``schedule`` runs on all frames (``iterations`` after scan end).

    Needs a started ``receiver``. The first epoch over the complete scan forces a preview;
    ``checkpoint`` is written when the scan ends and when the run ends or stops.
    """
    hooks = hooks or StreamHooks()
    stop = hooks.should_stop or (lambda: False)
    torch.manual_seed(seed)
    buffer, asm = receiver.buffer, receiver.assembler
    while len(buffer) < warmup_frames and not receiver.done.is_set() and not stop():
        buffer.wait(0.05) if len(buffer) else receiver.done.wait(0.05)
    index, frames, corners = buffer.drain()
    if not len(index) or asm.geometry is None:
        raise DataError(f"stream {receiver.endpoint}: ended without usable frames ({asm.counters.as_dict()})")
    geometry, mask = asm.geometry, asm.mask
    assert asm.start is not None
    first = ScanData(frames, corners, geometry, mask, asm.start.probe, receiver.endpoint)
    state = ReconState.initial(probe_guess(first, n_modes), device=device)
    live = schedule[0].options.model_copy(update={"order": "newest-first"})
    engine = make_engine(schedule[0].engine, state, geometry, live, mask=mask, seed=seed)
    seen = [(index, frames, corners)]
    engine.add_frames(frames, corners)
    losses: list[float] = []
    times: list[float] = []
    done = 0

    def epoch(k: int, eng: Engine, offset: float, streaming: bool, force: bool) -> None:
        nonlocal done
        loss = eng.iterate(1)[0]
        done += 1
        losses.append(loss)
        times.append(offset + eng.time_history[-1])
        if hooks.on_progress is not None:
            remaining = sum(s.iterations for s in schedule[k:]) if streaming else 0
            p = Progress(k, eng.name.value, done, done + remaining, loss, times[-1], eng.n_frames, streaming)
            hooks.on_progress(p)
        if hooks.previews is not None:
            hooks.previews.offer(state, done, eng.n_frames, loss, force=force)

    stopped = False
    while not (receiver.done.is_set() and len(buffer) == 0):
        if stop():
            stopped = True
            break
        index, frames, corners = buffer.drain()
        if len(index):
            engine.add_frames(frames, corners)
            seen.append((index, frames, corners))
        epoch(0, engine, 0.0, True, False)

    order = np.concatenate([s[0] for s in seen])
    scan = ScanData(np.concatenate([s[1] for s in seen]), np.concatenate([s[2] for s in seen]), geometry, mask)

    def save(iterations_done: int) -> None:
        if checkpoint is not None:
            attrs = {"stopped": stopped, "counters": asm.counters.as_dict()}
            Checkpoint(
                scan, order, state.to_numpy(), np.asarray(losses), np.asarray(times), iterations_done, attrs
            ).save(checkpoint)

    save(0)
    previous, after = engine, 0
    for k, stage in enumerate(schedule):
        if stopped:
            break
        offset = times[-1] if times else 0.0
        engine = make_engine(stage.engine, state, geometry, stage.options, mask=mask, seed=seed + k)
        engine.adopt_frames(previous)
        for _ in range(stage.iterations):
            if stop():
                stopped = True
                break
            epoch(k, engine, offset, False, after == 0)
            after += 1
        previous = engine
    save(after)
    counters = asm.counters.as_dict()
    result_state = state.to_numpy()
    result_state["positions"] = result_state["positions"][np.argsort(order, kind="stable")]
    attrs = {
        "engines": ",".join(f"{s.engine.value}x{s.iterations}" for s in schedule),
        "iterations": done,
        "iterations_after_scan": after,
        "device": str(device),
        "pixel_size": geometry.pixel_size,
        "propagation": geometry.kind,
        "frames_received": counters["received"],
        "frames_rejected": counters["frames_rejected"],
        "frames_rejected_by_reason": json.dumps(counters["rejected"]),
        "frames_missing": counters["missing"],
        "frames_duplicate": counters["duplicates"],
        "frames_used": engine.n_frames,
        "frame_index": np.sort(order),
        "version": package_version(),
        "input_stream": receiver.endpoint,
        "stopped": stopped,
    }
    return Result(result_state, np.asarray(losses), np.asarray(times), attrs)


def run_job(
    job: JobSpec,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_preview: Callable[[Preview], None] | None = None,
    cancel: threading.Event | None = None,
    on_listening: Callable[[Receiver], None] | None = None,
) -> Result:
    """Run a job (file or stream input) to its result file; resumes from ``job.checkpoint`` if it exists.

    ``on_listening`` is called once a stream job's receiver is bound (its endpoint is known).
    """
    device = resolve_device(job.device)
    schedule = [Stage.parse(s.engine, s.iterations, s.options) for s in job.schedule]
    should_stop = cancel.is_set if cancel is not None else None
    previews = PreviewPublisher(on_preview, job.preview_interval_s) if on_preview is not None else None
    try:
        if job.checkpoint and Path(job.checkpoint).exists():
            result = _resume(Checkpoint.load(job.checkpoint), schedule, device, job, on_progress, should_stop)
        elif isinstance(job.input, FileInput):
            data = load_scan(job.input.file)
            result = run_schedule(
                data, schedule, device=device, seed=job.seed, on_progress=on_progress, should_stop=should_stop
            )
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
                hooks = StreamHooks(on_progress, previews, should_stop)
                result = run_stream(
                    receiver, schedule, device=device, seed=job.seed, hooks=hooks, checkpoint=job.checkpoint
                )
            finally:
                receiver.close()
    finally:
        if previews is not None:
            previews.close()
    result.write(job.output)
    return result


def _resume(
    saved: Checkpoint,
    schedule: Sequence[Stage],
    device: torch.device,
    job: JobSpec,
    on_progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None,
) -> Result:
    """Continue a checkpointed run: the schedule's remaining epochs on the saved frames and state."""
    skip, remaining = saved.iterations_done, []
    for stage in schedule:
        left = max(stage.iterations - skip, 0)
        skip = max(skip - stage.iterations, 0)
        remaining.append(Stage(stage.engine, left, stage.options))
    result = run_schedule(
        saved.scan,
        remaining,
        device=device,
        seed=job.seed,
        on_progress=on_progress,
        should_stop=should_stop,
        initial_state=saved.state,
    )
    offset = saved.time_s[-1] if len(saved.time_s) else 0.0
    result.loss = np.concatenate([saved.loss, result.loss])
    result.time_s = np.concatenate([saved.time_s, offset + result.time_s])
    result.state["positions"] = result.state["positions"][np.argsort(saved.frame_index, kind="stable")]
    result.attrs.update(resumed_from=str(job.checkpoint), frame_index=np.sort(saved.frame_index))
    return result
