"""The job a worker runs (strict pydantic, no heavy imports): an input, an engine schedule, a device, an output."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.engines.options import EngineName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileInput(_Strict):
    file: str = Field(description="A scan file (CXI/HDF5 or tike npz).")


class StreamInput(_Strict):
    stream: str = Field(description="ZeroMQ endpoint the worker listens on for frames, e.g. tcp://0.0.0.0:5555.")
    positions: str | None = Field(None, description="Endpoint of a separate position stream, if any.")
    idle_timeout_s: float = Field(60.0, gt=0, description="Close the scan after this long without any message.")


class StageSpec(_Strict):
    engine: EngineName
    iterations: int = Field(ge=0, description="Epochs; for a stream, epochs after the scan has ended.")
    options: dict[str, Any] = Field(default_factory=dict, description="Engine options (validated by the engine).")


class JobSpec(_Strict):
    """A reconstruction job. ``checkpoint``: where to save (and, if it exists, resume from)."""

    input: FileInput | StreamInput
    schedule: list[StageSpec] = Field(min_length=1)
    device: str = "auto"
    output: str
    checkpoint: str | None = None
    preview_interval_s: float = Field(0.5, gt=0)
    seed: int = 0
