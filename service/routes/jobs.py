"""The jobs resource: submit, list, inspect, follow (SSE), previews, result, cancel, logs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse

from service.deps import Authorized, RepliesDep, SettingsDep, StoreDep
from service.jobspec import spec_for
from service.schemas import CancelReply, JobCreate, JobCreated, JobPublic, JobsPublic, Logs, job_public
from service.settings import Settings
from service.store import TERMINAL, JobState, JobStore
from workers.images import render_result
from workers.io import read_result
from workers.job import FileInput, JobSpec

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="The job's id.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job"}}


def resolve_input(settings: Settings, relative: str, field: str = "input.file") -> FsPath:
    """A file under the data root; refuse anything that escapes it or does not exist, naming ``field``."""
    root = settings.data_root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{field}: path must stay under the data root")
    if not path.is_file():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{field}: no such file: {relative}")
    return path


@router.post("", status_code=201, response_model=JobCreated, dependencies=[Authorized])
def create_job(request: JobCreate, settings: SettingsDep, store: StoreDep, replies: RepliesDep) -> JobCreated:
    """Queue a reconstruction: a file under the data root or a stream endpoint, an engine schedule, a device."""
    job_input = request.input
    if isinstance(job_input, FileInput):
        job_input = job_input.model_copy(update={"file": str(resolve_input(settings, job_input.file))})
    else:
        pre = job_input.preprocess
        files = {
            name: str(resolve_input(settings, value, f"input.preprocess.{name}"))
            for name in ("dark", "bad_pixels")
            if (value := getattr(pre, name)) is not None
        }
        job_input = job_input.model_copy(update={"preprocess": pre.model_copy(update=files)})
    probe = request.probe
    if probe.file is not None:
        probe = probe.model_copy(update={"file": str(resolve_input(settings, probe.file, "probe.file"))})
    job_id = JobStore.new_id()
    spec = spec_for(request.model_copy(update={"input": job_input, "probe": probe}), settings, job_id)
    store.create(spec=spec, job_id=job_id)
    replies.clear()
    return JobCreated(id=job_id)


def json_reply(body: bytes | None) -> Response:
    return Response(body, media_type="application/json")


@router.get("", response_model=JobsPublic)
async def list_jobs(
    store: StoreDep,
    replies: RepliesDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Jobs, newest first (only those in ``state`` if given)."""

    def compute() -> bytes:
        jobs = [job_public(raw) for raw in store.get_many(store.ids(state=state, limit=limit))]
        return JobsPublic(data=jobs, count=len(jobs)).model_dump_json().encode()

    return json_reply(replies.get(("jobs", state, limit), compute))


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def get_job(job_id: JobId, store: StoreDep, replies: RepliesDep) -> Response:
    """State and progress: iteration, loss, frames received/used, rates, ETA (at most ``reply_cache_s`` old)."""
    return json_reply(replies.get(("job", job_id), lambda: job_public(store.get(job_id)).model_dump_json().encode()))


@router.get("/{job_id}/loss", response_model=list[float], responses=NOT_FOUND)
def get_loss(job_id: JobId, store: StoreDep) -> list[float]:
    """The loss curve so far (one value per iteration)."""
    store.get(job_id)
    return store.losses(job_id)


@router.get("/{job_id}/events", responses=NOT_FOUND)
async def job_events(job_id: JobId, request: Request, store: StoreDep) -> EventSourceResponse:
    """Server-Sent Events: ``state``, ``progress`` and ``preview`` as they happen; ends at a final state."""
    first = job_public(await asyncio.to_thread(store.get, job_id))

    async def events() -> AsyncIterator[dict[str, str]]:
        yield {"event": "state", "data": first.model_dump_json()}
        if first.state in TERMINAL:
            return
        pubsub = request.app.state.aredis.pubsub()
        await pubsub.subscribe(store.channel(job_id))
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is None:
                    state = (await asyncio.to_thread(store.get, job_id))["state"]
                    if state in TERMINAL:
                        yield {"event": "state", "data": json.dumps({"state": state})}
                        return
                    continue
                payload = json.loads(message["data"])
                yield {"event": payload["event"], "data": json.dumps(payload)}
                if payload["event"] == "state" and payload["state"] in TERMINAL:
                    return
        finally:
            await pubsub.aclose()

    return EventSourceResponse(events(), ping=15)


@router.get(
    "/{job_id}/preview/{kind}.png",
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "No such job or no preview yet"}},
)
async def get_preview(
    job_id: JobId, kind: Literal["amplitude", "phase", "probe"], store: StoreDep, replies: RepliesDep
) -> Response:
    """The latest preview image of the object amplitude, phase or the probe amplitude."""

    def compute() -> bytes | None:
        store.get(job_id)
        return store.preview(job_id, kind)

    data = replies.get(("preview", job_id, kind), compute)
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no {kind} preview yet")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/{job_id}/result",
    responses={200: {"content": {"application/x-hdf5": {}}}, 404: NOT_FOUND[404], 409: {"description": "Not done"}},
)
def get_result(job_id: JobId, store: StoreDep) -> FileResponse:
    """The result HDF5; a cancelled or failed job's partial result (its ``complete`` attribute is false)."""
    return FileResponse(result_file(store, job_id), media_type="application/x-hdf5", filename=f"{job_id}.h5")


def result_file(store: JobStore, job_id: str) -> FsPath:
    """The result file of a finished job; 409 while it runs or when it left none."""
    raw = store.get(job_id)
    state, path = raw["state"], FsPath(JobSpec.model_validate_json(raw["spec"]).output)
    if state not in TERMINAL or not path.is_file():
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {state}: no result file")
    return path


@router.get(
    "/{job_id}/result/{kind}.png",
    responses={200: {"content": {"image/png": {}}}, 404: NOT_FOUND[404], 409: {"description": "No result file"}},
)
def get_result_image(job_id: JobId, kind: Literal["amplitude", "phase", "probe"], store: StoreDep) -> Response:
    """The result as an annotated PNG: object amplitude or phase, or the probe's (first mode) amplitude.

    Windowed over the scanned region (phase relative to its median there), with a colour bar, and a
    scale bar where the result records its pixel size."""
    result = read_result(result_file(store, job_id))
    return Response(render_result(result, kind), media_type="image/png")


@router.post("/{job_id}/cancel", response_model=CancelReply, dependencies=[Authorized], responses=NOT_FOUND)
def cancel_job(job_id: JobId, store: StoreDep, replies: RepliesDep) -> CancelReply:
    """Cancel a queued job, or ask a running job's worker to stop (it writes a partial result)."""
    previous = store.request_cancel(job_id)
    replies.clear()
    detail = "cancelled" if previous == JobState.QUEUED else "the worker stops after the current iteration"
    return CancelReply(id=job_id, previous_state=previous, detail=detail)


@router.get("/{job_id}/logs", response_model=Logs, responses=NOT_FOUND)
def get_logs(job_id: JobId, store: StoreDep) -> Logs:
    """The job's log lines (state changes, worker messages)."""
    store.get(job_id)
    return Logs(id=job_id, lines=store.logs(job_id))
