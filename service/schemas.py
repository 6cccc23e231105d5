"""API schemas: the job-request model is shared with flows and workers (``workers.job``); these are the replies."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.redact import Redactor
from service.store import JobState
from workers.job import JobRequest

JobCreate = JobRequest


class ErrorReply(BaseModel):
    """Every error reply: one line naming the field (where there is one) and the problem."""

    detail: str


class JobCreated(BaseModel):
    id: str


class Progress(BaseModel):
    """Live progress of a job (zeros before it starts)."""

    iteration: int = 0
    total_iterations: int = 0
    stage: int = 0
    engine: str = ""
    loss: float | None = None
    elapsed_s: float = 0.0
    frames_received: int = 0
    frames_expected: int | None = None
    frames_used: int = 0
    frames_rate: float = 0.0
    iteration_rate: float = 0.0
    eta_s: float | None = Field(default=None, description="Seconds to the end of the schedule at the current rate.")
    streaming: bool = False
    preview_iteration: int | None = None


class JobPublic(BaseModel):
    id: str
    state: JobState
    message: str
    created: float
    updated: float
    worker: str | None = None
    listening: str | None = None
    request: dict[str, Any]
    progress: Progress


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class CancelReply(BaseModel):
    id: str
    previous_state: JobState
    detail: str


class Logs(BaseModel):
    id: str
    lines: list[str]


class WorkerPublic(BaseModel):
    name: str
    device: str = Field(description="The device its ``auto`` jobs run on.")
    devices: str = Field(default="", description="Every device it runs jobs on, comma-separated (cpu,cuda,cuda:0).")
    job: str


class LoopPublic(BaseModel):
    """A supervised background loop of the answering process (``service.supervise``)."""

    name: str
    healthy: bool
    failures: int = Field(description="Failed steps in a row (0: healthy).")
    total_failures: int
    last_ok: float | None = Field(description="Unix time of its last good step.")
    last_error: str


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="'degraded' (HTTP 503) when any problem is listed.")
    redis: bool
    queue_depth: int
    workers: list[WorkerPublic]
    loops: list[LoopPublic]
    problems: list[str] = Field(description="Why the service cannot run jobs now: store, workers, loops.")


def job_public(raw: dict[str, str], redactor: Redactor) -> JobPublic:
    """A stored job hash as the API shows it (server paths redacted)."""
    stored = json.loads(raw["spec"])
    spec = {k: redactor.value(stored[k]) for k in JobRequest.model_fields if k in stored}
    return JobPublic(
        id=raw["id"],
        state=JobState(raw["state"]),
        message=redactor.text(raw.get("message", "")),
        created=float(raw["created"]),
        updated=float(raw["updated"]),
        worker=raw.get("worker"),
        listening=raw.get("listening"),
        request=spec,
        progress=Progress.model_validate(
            {k: v for k, v in raw.items() if k in Progress.model_fields and v not in ("", "-1")}
        ),
    )
