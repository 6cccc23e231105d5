"""The jobs resource: submit, list, inspect, follow (SSE), previews, result, cancel, logs.

Writes need the API token; reads need read access (``service.auth``, the ``read_access`` setting)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from service.cache import BytesCache, TTLCache
from service.deps import (
    Authorized,
    HubDep,
    ImagesDep,
    Readable,
    RedactorDep,
    RepliesDep,
    SettingsDep,
    StoreDep,
)
from service.endpoints import endpoint_problem
from service.errors import responses
from service.events import StreamsFull
from service.jobspec import spec_for
from service.schemas import CancelReply, JobCreate, JobCreated, JobPublic, JobsPublic, Logs, job_public
from service.settings import Settings
from service.store import TERMINAL, JobState, JobStore
from service.strict_json import StrictJSONRoute
from workers.engines.options import file_options
from workers.images import element_maps, render_result, result_kinds
from workers.io import read_result
from workers.job import FileInput, JobSpec
from workers.schedule import StageSpec

router = APIRouter(prefix="/api/jobs", tags=["jobs"], route_class=StrictJSONRoute)
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="The job's id.")]
READ = responses(401, 404, 422)
PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "A PNG image"}}
MAX_NAME_BYTES = 255


def unprocessable(field: str, problem: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{field}: {problem}")


def path_problem(relative: str) -> str | None:
    """Why ``relative`` cannot name a file on this system (before the file system is asked), or None."""
    encoded = relative.encode()  # a str from JSON: pydantic has refused lone surrogates
    if any(c < 32 or c == 127 for c in encoded):
        return "contains a control character"
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        return f"a path component is longer than {MAX_NAME_BYTES} bytes"
    return None


def resolve_input(settings: Settings, relative: str, field: str = "input.file") -> FsPath:
    """A file under the data root; refuse anything that escapes it or does not exist, naming ``field``."""
    if problem := path_problem(relative):
        raise unprocessable(field, problem)
    root = settings.data_root.resolve()
    try:
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{field}: path must stay under the data root")
        if not path.is_file():
            raise unprocessable(
                field,
                f"no such file: {relative} (paths resolve under the server's data root, PTYCHOSTREAM_DATA_ROOT, "
                "default ./data where the server started; `serve --demo` writes demo.cxi there)",
            )
    except RuntimeError:  # what resolve() raises on a symbolic link loop
        raise unprocessable(field, "a symbolic link loop") from None
    except OSError as exc:
        raise unprocessable(field, f"cannot be opened ({exc.strerror})") from None
    return path


@router.post(
    "",
    status_code=201,
    response_model=JobCreated,
    dependencies=[Authorized],
    responses=responses(400, 401, 413, 422),
)
def create_job(request: JobCreate, settings: SettingsDep, store: StoreDep, replies: RepliesDep) -> JobCreated:
    """Queue a reconstruction: a file under the data root or a stream endpoint, an engine schedule, a device.

    A stream job's endpoints must satisfy the endpoint policy (``stream_hosts``, ``stream_port_min``..``max``); a
    CUDA ``device`` must be offered by a live worker (``auto`` and ``cpu`` run on any worker)."""
    if problem := device_problem(request.device, store.workers()):
        raise unprocessable("device", problem)
    job_input = request.input
    if isinstance(job_input, FileInput):
        job_input = job_input.model_copy(update={"file": str(resolve_input(settings, job_input.file))})
    else:
        for name in ("stream", "positions"):
            if (endpoint := getattr(job_input, name)) is not None and (problem := endpoint_problem(endpoint, settings)):
                raise unprocessable(f"input.{name}", problem)
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
    schedule = [resolve_stage_files(settings, stage, f"schedule[{i}]") for i, stage in enumerate(request.schedule)]
    job_id = JobStore.new_id()
    update = {"input": job_input, "probe": probe, "schedule": schedule}
    spec = spec_for(request.model_copy(update=update), settings, job_id)
    store.create(spec=spec, job_id=job_id)
    replies.clear()
    return JobCreated(id=job_id)


def device_problem(device: str, workers: list[dict[str, str]]) -> str | None:
    """Why no live worker can run a job on ``device``, or None. Workers announce theirs as ``devices``
    (``cpu,cuda,cuda:0``); every worker runs ``auto`` and ``cpu``, so those wait in the queue for one."""
    if device in ("auto", "cpu"):
        return None
    offered = {d for worker in workers for d in worker.get("devices", worker.get("device", "")).split(",") if d}
    if device in offered:
        return None
    have = ", ".join(sorted(offered)) if offered else "no live worker"
    return f"no live worker offers {device} (offered: {have}); use auto or cpu"


def resolve_stage_files(settings: Settings, stage: StageSpec, field: str) -> StageSpec:
    """``stage`` with its file options (strings: the stage's options are validated) resolved under the data root:
    a job may not name other server files."""
    files = {
        name: str(resolve_input(settings, value, f"{field}.options.{name}"))
        for name in file_options(stage.options_model)
        if (value := stage.options.get(name)) is not None
    }
    return stage.model_copy(update={"options": {**stage.options, **files}}) if files else stage


def json_reply(body: bytes | None) -> Response:
    return Response(body, media_type="application/json")


@router.get("", response_model=JobsPublic, dependencies=[Readable], responses=responses(401, 422))
async def list_jobs(
    store: StoreDep,
    replies: RepliesDep,
    redactor: RedactorDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Jobs, newest first (only those in ``state`` if given)."""

    def compute() -> bytes:
        jobs = [job_public(raw, redactor) for raw in store.get_many(store.ids(state=state, limit=limit))]
        return JobsPublic(data=jobs, count=len(jobs)).model_dump_json().encode()

    return json_reply(replies.get(("jobs", state, limit), compute))


@router.get("/{job_id}", response_model=JobPublic, dependencies=[Readable], responses=READ)
async def get_job(job_id: JobId, store: StoreDep, replies: RepliesDep, redactor: RedactorDep) -> Response:
    """State and progress: iteration, loss, frames received/used, rates, ETA (at most ``reply_cache_s`` old)."""

    def compute() -> bytes:
        return job_public(store.get(job_id), redactor).model_dump_json().encode()

    return json_reply(replies.get(("job", job_id), compute))


@router.get("/{job_id}/loss", response_model=list[float], dependencies=[Readable], responses=READ)
def get_loss(job_id: JobId, store: StoreDep) -> list[float]:
    """The loss curve so far (one value per iteration)."""
    store.get(job_id)
    return store.losses(job_id)


@router.get(
    "/{job_id}/events",
    dependencies=[Readable],
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "state, progress and preview events"},
        **responses(401, 404, 422, 503),
    },
)
async def job_events(job_id: JobId, store: StoreDep, hub: HubDep, redactor: RedactorDep) -> EventSourceResponse:
    """Server-Sent Events: ``state``, ``progress`` and ``preview`` as they happen; ends at a final state.

    At most ``max_event_streams`` streams per API process (503 past that); they share one Redis subscription."""
    try:
        sub = hub.subscribe(job_id)  # before reading the state: no event between the two is lost
    except StreamsFull as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}) from None
    try:
        first = job_public(await asyncio.to_thread(store.get, job_id), redactor)
    except BaseException:
        sub.close()
        raise

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"event": "state", "data": first.model_dump_json()}
            if first.state in TERMINAL:
                return
            while True:
                try:
                    data = await asyncio.wait_for(sub.queue.get(), timeout=5.0)
                except TimeoutError:
                    state = (await asyncio.to_thread(store.get, job_id))["state"]
                    if state in TERMINAL:
                        yield {"event": "state", "data": json.dumps({"state": state})}
                        return
                    continue
                payload = json.loads(data)
                if "message" in payload:
                    payload["message"] = redactor.text(payload["message"])
                yield {"event": payload["event"], "data": json.dumps(payload)}
                if payload["event"] == "state" and payload["state"] in TERMINAL:
                    return
        finally:
            sub.close()

    return EventSourceResponse(events(), ping=15, background=BackgroundTask(sub.close))


@router.get("/{job_id}/preview/{kind}.png", dependencies=[Readable], responses={**PNG, **READ})
async def get_preview(
    job_id: JobId, kind: Literal["amplitude", "phase", "probe"], store: StoreDep, replies: RepliesDep
) -> Response:
    """The latest preview image of the object amplitude, phase or the probe amplitude."""
    return preview_reply(store, replies, job_id, kind)


def preview_reply(store: JobStore, replies: TTLCache[bytes | None], job_id: str, channel: str) -> Response:
    """The latest preview PNG of one channel of a job (shared by its pollers for the reply cache's time);
    404 if the job has none yet."""

    def compute() -> bytes | None:
        store.get(job_id)
        return store.preview(job_id, channel)

    data = replies.get(("preview", job_id, channel), compute)
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no {channel} preview yet")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/{job_id}/result",
    dependencies=[Readable],
    response_class=FileResponse,
    responses={200: {"content": {"application/x-hdf5": {}}, "description": "HDF5"}, **READ, **responses(409)},
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


@router.get("/{job_id}/result/{kind}.png", dependencies=[Readable], responses={**PNG, **READ, **responses(409)})
def get_result_image(
    job_id: JobId, kind: Literal["amplitude", "phase", "probe"], store: StoreDep, images: ImagesDep
) -> Response:
    """The result as an annotated PNG: object amplitude or phase, or the probe's (first mode) amplitude.

    Windowed over the scanned region (phase relative to its median there), with a colour bar, and a
    scale bar where the result records its pixel size. Rendered once per result file version and kept
    (``result_image_cache_bytes``)."""
    return result_image(store, images, job_id, kind)


@router.get(
    "/{job_id}/result/elements/{element}.png", dependencies=[Readable], responses={**PNG, **READ, **responses(409)}
)
def get_result_element_image(
    job_id: JobId,
    element: Annotated[str, Path(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,15}$", description="The element map's name.")],
    store: StoreDep,
    images: ImagesDep,
) -> Response:
    """One element map of a joint fluorescence result (``elements/<name>``) as an annotated PNG (colour bar in
    g/cm^2, scale bar), cached like the other result images; 404 if the result has no such map."""
    return result_image(store, images, job_id, f"elements/{element}")


def result_image(store: JobStore, images: BytesCache, job_id: str, kind: str) -> Response:
    """One view of a job's result as an annotated PNG, rendered once per result file version; 404 naming the
    element maps there if ``kind`` is a map the result lacks."""
    path = result_file(store, job_id)
    stat = path.stat()

    def render() -> bytes:
        result = read_result(path)
        if kind not in result_kinds(result):
            names = ", ".join(element_maps(result)) or "none"
            element = kind.partition("/")[2]
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"element: no map {element!r} in the result (maps: {names})")
        return render_result(result, kind)

    key = (str(path), stat.st_mtime_ns, stat.st_size, kind)
    return Response(images.get(key, render), media_type="image/png")


@router.post(
    "/{job_id}/cancel", response_model=CancelReply, dependencies=[Authorized], responses=responses(401, 404, 409, 422)
)
def cancel_job(job_id: JobId, store: StoreDep, replies: RepliesDep) -> CancelReply:
    """Cancel a queued job, or ask a running job's worker to stop (it writes a partial result)."""
    previous = store.request_cancel(job_id)
    replies.clear()
    detail = (
        "cancelled"
        if previous == JobState.QUEUED
        else ("its worker is asked to stop: it ends cancelled with a partial result, or succeeded if it finishes first")
    )
    return CancelReply(id=job_id, previous_state=previous, detail=detail)


@router.get("/{job_id}/logs", response_model=Logs, dependencies=[Readable], responses=READ)
def get_logs(job_id: JobId, store: StoreDep, redactor: RedactorDep) -> Logs:
    """The job's log lines (state changes, worker messages)."""
    store.get(job_id)
    return Logs(id=job_id, lines=[redactor.text(line) for line in store.logs(job_id)])
