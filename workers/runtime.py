"""Running an engine schedule on a scan: the driver shared by the CLI, the worker and the flows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.data import ReconState, ScanData, probe_guess
from workers.engines.base import Engine
from workers.engines.options import OPTIONS, EngineName, EngineOptions
from workers.engines.registry import make_engine
from workers.io import write_result


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
) -> Result:
    """Reconstruct ``data`` by running each stage's engine in turn on one shared state.

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
                on_progress(Progress(k, stage.engine.value, done, total, loss, times[-1]))
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
