"""The job a worker runs (strict pydantic, no heavy imports): an input, an engine schedule, a device, an output.

``JobRequest`` is what a user submits (the API, flows and workers share it); ``JobSpec`` adds
where the worker writes. Stage options are validated strictly against the engine's options model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.probe_spec import ProbeStart
from workers.schedule import StageSpec, default_schedule

__all__ = ["FileInput", "JobRequest", "JobSpec", "Preprocessing", "StageSpec", "StreamInput", "StreamLimits"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileInput(_Strict):
    file: str = Field(min_length=1, max_length=1024, description="A scan file (CXI/HDF5 or tike npz).")
    near_field: bool | None = Field(
        default=None, description="Near-field (Fresnel) geometry; None: as the file records it (far field if not)."
    )
    focus_distance: float | None = Field(
        default=None, gt=0, lt=100, description="Focus-to-sample distance (m): the cone-beam (Fresnel-scaling) setup."
    )


class Preprocessing(_Strict):
    """Per-frame corrections between the receiver and the engine (``workers.stream.preprocess``)."""

    size: int | None = Field(
        default=None, ge=8, le=8192, description="Crop frames to size x size around the centre (default: largest)."
    )
    centre: tuple[int, int] | None = Field(
        default=None, description="(row, col) of the zero frequency on the detector (default: the frame centre)."
    )
    binning: int = Field(default=1, ge=1, le=16, description="Sum binning x binning pixels after cropping.")
    hot: float | None = Field(
        default=None, gt=0, description="Counts above which a pixel is implausible in a frame (replaced by neighbours)."
    )
    zinger: float | None = Field(
        default=None, gt=1, description="Replace pixels above this factor x their 3x3 neighbours' median (cosmics)."
    )
    dark: str | None = Field(
        default=None, min_length=1, max_length=1024, description="A .npy file: the dark/background counts (Y, X)."
    )
    bad_pixels: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="A .npy file (Y, X): nonzero marks a bad pixel (the CXI and DECTRIS convention).",
    )


class StreamLimits(_Strict):
    """Bounds on what a stream receiver holds (``workers.stream``), so that no sender, broken or hostile, can make
    it grow: at most ``buffer_frames`` + ``waiting_frames`` frames, ``queue_messages`` messages of at most
    ``max_message_bytes`` queued in ZeroMQ, ``waiting_positions`` positions. A frame refused for a bound is
    counted as rejected with its reason (PROTOCOL.md)."""

    buffer_frames: int = Field(
        default=4096, ge=1, le=100_000, description="Frames buffered for the engine; when full, reading pauses."
    )
    waiting_frames: int = Field(
        default=4096, ge=1, le=100_000, description="Frames held for their positions; more: 'waiting full'."
    )
    waiting_positions: int = Field(
        default=1_000_000, ge=1, le=10_000_000, description="Positions held for their frames; more are ignored."
    )
    max_frames: int = Field(
        default=1_000_000,
        ge=1,
        le=100_000_000,
        description="Frames per scan (and the most a start may declare): higher indices are rejected ('index').",
    )
    max_frame_bytes: int = Field(
        default=256 << 20,
        ge=1024,
        le=1 << 30,
        description="Largest decoded frame: a start declaring larger frames is refused, a frame is rejected unread.",
    )
    max_message_bytes: int = Field(
        default=256 << 20,
        ge=1024,
        le=1 << 30,
        description="Largest message (and message part) on the wire; larger ones are dropped unread.",
    )
    queue_messages: int = Field(
        default=1000, ge=1, le=10_000, description="Messages ZeroMQ may queue ahead of the receiver (RCVHWM)."
    )


class StreamInput(_Strict):
    stream: str = Field(
        pattern=r"^tcp://\S+:(\d+|\*)$",
        max_length=256,
        description="ZeroMQ endpoint the worker listens on for frames, e.g. tcp://0.0.0.0:5555.",
    )
    positions: str | None = Field(
        default=None,
        pattern=r"^tcp://\S+:(\d+|\*)$",
        max_length=256,
        description="Endpoint of a separate position stream.",
    )
    idle_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Close the scan after this long without any message."
    )
    preprocess: Preprocessing = Field(default_factory=Preprocessing, description="Per-frame corrections.")
    limits: StreamLimits = Field(default_factory=StreamLimits, description="Bounds on the receiver's memory.")


class JobRequest(_Strict):
    """What a user asks for: an input, an engine schedule (e.g. epie x50 then bh-cg x100), a device.

    Without a schedule the default one runs (``workers.schedule.DEFAULT_SCHEDULE``).
    """

    input: FileInput | StreamInput
    schedule: list[StageSpec] = Field(
        default_factory=default_schedule,
        min_length=1,
        max_length=32,
        description="Stages run in turn; default: a few rPIE epochs, then BH-CG until the loss stops improving.",
    )
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$", description="auto, cpu, cuda or cuda:N."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    modes: int = Field(default=1, ge=1, le=16, description="Probe modes (mixed-state probe).")
    probe: ProbeStart = Field(
        default_factory=ProbeStart,
        description="How the probe starts: a file or optics parameters; empty: the file's guess or a data search.",
    )

    @model_validator(mode="after")
    def _has_an_engine(self) -> JobRequest:
        if not any(stage.engine for stage in self.schedule):
            raise ValueError("schedule: needs at least one engine stage")
        return self


class JobSpec(JobRequest):
    """A reconstruction job. ``checkpoint``: where to save (and, if it exists, resume from)."""

    output: str
    checkpoint: str | None = None
    preview_interval_s: float = Field(default=0.5, gt=0)
    save_interval_s: float = Field(default=30.0, gt=0, description="Checkpoint and partial result at least this often.")
