"""Running a schedule on a frame source: the one driver of the CLI, the worker and the flows.

A frame source is a scan file (every frame at once) or a live stream (chunks while the scan
runs, then its end). ``run`` builds the start state, iterates the first engine while a stream
delivers frames (newest first), then runs the schedule's stages in turn on all frames: engine
stages (epochs of an engine) and transform stages (a function of the state, applied once).
Files and streams share progress, previews, autosave, resume and the result's attributes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.checkpoint import CHECKPOINT_ONLY, Autosave, Checkpoint
from workers.data import Geometry, ScanData
from workers.devices import resolve_device
from workers.engines.base import Engine
from workers.engines.options import OPTIONS, BatchedOptions, EngineName, EngineOptions
from workers.engines.registry import make_engine
from workers.errors import DataError
from workers.geometry_check import far_field_warning
from workers.io import load_scan
from workers.job import FileInput, JobSpec
from workers.previews import Preview, PreviewPublisher
from workers.probe_spec import ProbeStart
from workers.probe_start import initial_probe
from workers.record import Hooks, Progress, Result, RunRecord, package_version
from workers.schedule import TRANSFORM_OPTIONS, StageSpec, TransformName, TransformOptions, converged, schedule_text
from workers.sources import FileSource, FrameSource, StreamSource, stream_accounting, stream_receiver
from workers.state import ReconState
from workers.stream.receiver import Receiver
from workers.transforms import TRANSFORMS

__all__ = ["Hooks", "Progress", "Result", "Stage", "run", "run_job", "run_schedule", "run_stream"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One step of a schedule: up to ``iterations`` epochs of ``engine`` with validated ``options``,
    ended early once the loss stops improving by ``tolerance`` (``workers.schedule.converged``);
    or a ``transform`` of the state with its validated ``options``."""

    engine: EngineName | None
    iterations: int
    options: EngineOptions | TransformOptions | None
    tolerance: float | None = None
    transform: TransformName | None = None

    @property
    def name(self) -> str:
        return (self.engine or self.transform).value  # type: ignore[union-attr]

    @classmethod
    def parse(
        cls, engine: str, iterations: int, options: dict[str, Any] | None = None, tolerance: float | None = None
    ) -> Stage:
        name = EngineName(engine)
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        return cls(name, iterations, OPTIONS[name].model_validate(options or {}), tolerance)

    @classmethod
    def of_transform(cls, transform: str, options: dict[str, Any] | None = None) -> Stage:
        name = TransformName(transform)
        return cls(None, 0, TRANSFORM_OPTIONS[name].model_validate(options or {}), None, name)

    @classmethod
    def from_spec(cls, spec: StageSpec) -> Stage:
        if spec.transform is not None:
            return cls.of_transform(spec.transform, spec.options)
        assert spec.engine is not None
        return cls.parse(spec.engine, spec.iterations, spec.options, spec.tolerance)


def run(
    source: FrameSource,
    schedule: Sequence[Stage],
    *,
    device: torch.device,
    n_modes: int = 1,
    seed: int = 0,
    hooks: Hooks | None = None,
    resume: Checkpoint | None = None,
    probe_start: ProbeStart | None = None,
) -> Result:
    """Reconstruct the frames of ``source`` with ``schedule`` on one shared state.

    A live source is iterated (first engine stage, newest frames first) until it ends; then the
    stages run in turn over all frames (their ``iterations`` count after a stream's end).
    ``resume`` (a checkpoint of this scan) restores the state and histories and continues the
    schedule where it stopped. ``hooks.should_stop`` is polled between epochs; when it returns
    True the run ends early and the partial result has ``attrs["stopped"] = True``.
    """
    hooks = hooks or Hooks()
    torch.manual_seed(seed)
    engine_stages = [k for k, s in enumerate(schedule) if s.engine is not None]
    if not engine_stages:
        raise DataError("schedule: needs at least one engine stage")
    first = source.first(hooks.should_stop or (lambda: False))
    geometry, mask = first.geometry, first.mask
    if hooks.previews is not None:
        hooks.previews.pixel_size = geometry.pixel_size
    if resume is None:
        probe, probe_record = initial_probe(first, n_modes, probe_start, device=device, seed=seed)
    else:  # the checkpoint's probe replaces the start at once: no search
        probe, probe_record = resume.state["probe"], str(resume.attrs.get("probe_start", "checkpoint"))
    state = ReconState.initial(probe, device=device)
    run = RunRecord(state, hooks, source.frames)
    run.attrs = {
        "engines": schedule_text(schedule),
        "device": str(device),
        **geometry_attrs(geometry),
        "version": package_version(),
        "probe_start": probe_record,
    } | source.attrs()
    progress = _progress(resume, schedule, run)

    def engine_for(k: int, live: bool = False) -> Engine:
        stage = schedule[k]
        assert stage.engine is not None and isinstance(stage.options, EngineOptions)
        live_order = live and isinstance(stage.options, BatchedOptions)
        options = stage.options.model_copy(update={"order": "newest-first"}) if live_order else stage.options
        return make_engine(stage.engine, state, geometry, options, mask=mask, seed=seed + k)

    engine = engine_for(engine_stages[0], live=source.live)
    engine.add_frames(first.intensities, first.positions, first.fluorescence)
    if resume is not None:
        restore(state, resume.state)
    reuse_first = not source.live
    with run.saved_on_failure():
        if source.live:
            after_scan = sum(s.iterations for s in schedule)
            while not source.ended() and not run.stop_requested():
                chunk = source.more()
                if chunk is not None:
                    engine.add_frames(*chunk)
                run.epoch(engine_stages[0], engine, run.done + 1 + after_scan, scheduled=False, force=False)
            run.attrs.update(source.attrs())
            if hooks.autosave is not None:
                hooks.autosave.now(run.checkpoint())
        force = source.live
        for k, stage in enumerate(schedule):
            if run.stopped:
                break
            if k < len(progress) - 1 or (k == len(progress) - 1 and stage.transform is not None):
                continue
            done_before = progress[k] if k < len(progress) else 0
            if stage.transform is not None:
                assert isinstance(stage.options, TransformOptions)
                started = time.perf_counter()
                run.attrs.update(TRANSFORMS[stage.transform](state, engine, stage.options))
                run.add_time(time.perf_counter() - started)
                run.stage_epochs.append(0)
                continue
            if not (reuse_first and k == engine_stages[0]):
                previous, engine = engine, engine_for(k)
                engine.adopt_frames(previous)
            reuse_first = False
            if k >= len(progress):
                run.stage_epochs.append(0)
            later = sum(s.iterations for s in schedule[k + 1 :])
            for i in range(done_before, stage.iterations):
                if run.stop_requested() or converged(run.stage_losses(), stage.tolerance):
                    break
                run.epoch(k, engine, run.done + stage.iterations - i + later, scheduled=True, force=force)
                force = False
    run.final_preview(engine)
    return run.result({"frames_used": engine.n_frames} | engine.report() | source.final_attrs(run))


def _progress(resume: Checkpoint | None, schedule: Sequence[Stage], run: RunRecord) -> list[int]:
    """Epochs done per stage started (``RunRecord.stage_epochs``) in ``resume``; restores its histories."""
    if resume is None:
        return []
    run.losses, run.times = list(resume.loss), list(resume.time_s)
    run.done = int(resume.attrs.get("iterations", resume.iterations_done))
    run.scheduled_done = resume.iterations_done
    if "stage_epochs" in resume.attrs:
        progress = [int(n) for n in json.loads(resume.attrs["stage_epochs"])]
    else:  # a checkpoint of an older version: its epochs filled the stages in order
        progress, left = [], resume.iterations_done
        for stage in schedule:
            progress.append(min(left, stage.iterations))
            left -= progress[-1]
            if progress[-1] < stage.iterations:
                break
    run.stage_epochs = list(progress)
    return progress


def run_schedule(data: ScanData, schedule: Sequence[Stage], *, device: torch.device, **kwargs: Any) -> Result:
    """``run`` on a scan in memory (keyword arguments as for ``run``)."""
    resume: Checkpoint | None = kwargs.get("resume")
    frame_index = resume.frame_index if resume is not None and resume.scan is not None else None
    return run(FileSource(data, frame_index), schedule, device=device, **kwargs)


def run_stream(
    receiver: Receiver, schedule: Sequence[Stage], *, device: torch.device, warmup_frames: int = 16, **kwargs: Any
) -> Result:
    """``run`` on a live scan from a started ``receiver`` (keyword arguments as for ``run``)."""
    return run(StreamSource(receiver, warmup_frames), schedule, device=device, **kwargs)


def geometry_attrs(geometry: Geometry) -> dict[str, Any]:
    """The result attributes that record the propagation geometry (``evaluate`` rebuilds it from them)."""
    return {
        "propagation": geometry.kind,
        "pixel_size": geometry.pixel_size,
        "wavelength": geometry.wavelength,
        "distance": geometry.distance,
        "focus_distance": geometry.focus_distance,
    }


def restore(state: ReconState, saved: Mapping[str, np.ndarray]) -> None:
    """Overwrite ``state`` with a saved host copy of the same scan (shapes must match)."""
    for key in ("object", "probe", "positions"):
        current = getattr(state, key)
        if tuple(saved[key].shape) != tuple(current.shape):
            raise DataError(f"checkpoint: {key} has shape {saved[key].shape}, the run has {tuple(current.shape)}")
        setattr(state, key, torch.as_tensor(saved[key]).to(device=current.device, dtype=current.dtype))
    state.origin = np.asarray(saved["origin"], dtype=np.float64).copy()


def run_job(
    job: JobSpec,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_preview: Callable[[Preview], None] | None = None,
    cancel: threading.Event | None = None,
    on_listening: Callable[[Receiver], None] | None = None,
) -> Result:
    """Run a job (file or stream input) to its result file; resumes from ``job.checkpoint`` if it exists.

    The output folder is checked before anything runs. While the job runs, the checkpoint and
    a partial result (``complete`` False) are saved every ``job.save_interval_s``; if the run
    fails, the partial result is saved before the error propagates. ``on_listening`` is called
    once a stream job's receiver is bound.
    """
    check_output(job.output)
    device = resolve_device(job.device)
    schedule = [Stage.from_spec(s) for s in job.schedule]
    previews = PreviewPublisher(on_preview, job.preview_interval_s) if on_preview is not None else None
    autosave = Autosave(job.output, job.checkpoint, job.save_interval_s)
    hooks = Hooks(on_progress, previews, cancel.is_set if cancel is not None else None, autosave)
    run = {"device": device, "n_modes": job.modes, "seed": job.seed, "hooks": hooks, "probe_start": job.probe}
    try:
        if job.checkpoint and Path(job.checkpoint).exists():
            result = _resume(Checkpoint.load(job.checkpoint), schedule, job, run)
        elif isinstance(job.input, FileInput):
            data = load_job_scan(job.input)
            result = run_schedule(data, schedule, **run)
        else:
            receiver = stream_receiver(job.input).start()
            try:
                if on_listening is not None:
                    on_listening(receiver)
                result = run_stream(receiver, schedule, **run)
            finally:
                receiver.close()
    finally:
        if previews is not None:
            previews.close()
    result.write(job.output)
    return result


def check_output(path: str | Path) -> None:
    """Refuse an output whose folder is missing or not writable, before any work is done."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise DataError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise DataError(f"{path}: output folder {folder} is not writable")


def load_job_scan(spec: FileInput) -> ScanData:
    """The scan of a file input, in the geometry it asks for; warns when the data contradict a far-field run."""
    data = load_scan(spec.file, near_field=spec.near_field, focus_distance=spec.focus_distance)
    hint = far_field_warning(data)
    if hint is not None:
        log.warning(hint)
    return data


def _resume(saved: Checkpoint, schedule: Sequence[Stage], job: JobSpec, run: dict[str, Any]) -> Result:
    """Continue a checkpointed run: the schedule's remaining epochs on the saved frames (a stream's) or
    the input file (a file job's), from the saved state and histories."""
    if saved.scan is not None:
        scan = saved.scan
    elif isinstance(job.input, FileInput):
        scan = load_job_scan(job.input)
    else:
        raise DataError(f"{job.checkpoint}: a stream checkpoint without its frames cannot be resumed")
    result = run_schedule(scan, schedule, resume=saved, **run)
    dropped = ("iterations", "stopped", "failed", *CHECKPOINT_ONLY)
    kept = {k: v for k, v in saved.attrs.items() if k not in dropped}
    result.attrs.update(kept, resumed_from=str(job.checkpoint), frame_index=np.sort(saved.frame_index))
    if "counters" in saved.attrs:
        result.attrs.update(stream_accounting(json.loads(saved.attrs["counters"])))
        result.attrs["input_stream"] = saved.attrs.get("input_stream", "")
        result.attrs.pop("input_file", None)
    return result
