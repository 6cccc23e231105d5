"""A job's live view for the dashboard: its preview channels (images with display range, colour map and pixel
size), its scan positions and its frame accounting; and clearing ended jobs from the list.

The worker's reporter (``flows.reporter``) writes these at a bounded rate: positions with each preview,
the accounting at each heartbeat (only when it changed)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from service.deps import Authorized, Readable, RepliesDep, StoreDep
from service.errors import responses
from service.routes.jobs import preview_reply
from service.store import TERMINAL, JobNotFound, JobState, TransitionError

router = APIRouter(prefix="/api/jobs", tags=["view"])
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="The job's id.")]
ChannelName = Annotated[str, Path(pattern=r"^[a-z0-9_]{1,40}$", description="A channel's name, as the view lists.")]


class Channel(BaseModel):
    """One preview image: its values windowed on [lo, hi] (over the scanned region) through ``colormap``."""

    name: str
    title: str
    lo: float
    hi: float
    colormap: Literal["grey", "cyclic"]
    width: int
    height: int
    pixel_size_m: float = Field(description="Metres per image pixel; 0 where unknown or not a length.")


class Channels(BaseModel):
    iteration: int
    channels: list[Channel]


class Positions(BaseModel):
    """Probe centres of the frames used, in the pixels of the ``amplitude`` channel, the newest last."""

    iteration: int
    frames_used: int
    width: int
    height: int
    pixel_size_m: float = Field(description="Metres per pixel; 0 where unknown.")
    points: list[float] = Field(description="row, col, row, col, ...")


class Frames(BaseModel):
    """A stream's frame accounting (``flows.reporter.frame_accounting``)."""

    received: int
    expected: int | None
    rejected: dict[str, int] = Field(description="Rejected frames by reason.")
    malformed: dict[str, int] = Field(description="Messages that could not be used, by kind.")
    duplicates: int
    missing: int = Field(description="Never arrived: below the newest frame while streaming, all gaps at the end.")
    ended: bool
    newest: int | None = Field(description="The highest frame index seen.")
    per_cell: int = Field(description="Frame indices per character of ``cells``.")
    cells: str = Field(description="The frame map: '.' not yet, 'r' received, 'm' missing, 'x' rejected.")


class View(BaseModel):
    id: str
    state: JobState
    eta_scan_s: float | None = Field(description="Scan time left at the current frame rate (streams); None unknown.")
    channels: Channels | None
    positions: Positions | None
    frames: Frames | None


class Cleared(BaseModel):
    deleted: list[str]
    count: int
    finishing: list[str] = Field(description="Ended jobs left alone: their workers still hold their leases.")


READ = responses(401, 404, 422)
EndedState = Literal["succeeded", "failed", "cancelled"]


@router.get("/{job_id}/view", response_model=View, dependencies=[Readable], responses=READ)
def get_view(job_id: JobId, store: StoreDep, replies: RepliesDep) -> Response:
    """What the dashboard draws of a job besides its progress: channels, scan positions, frame accounting (at most
    ``reply_cache_s`` old: every open dashboard asks each second)."""

    def compute() -> bytes:
        raw = store.get(job_id)
        eta = float(raw.get("eta_scan_s", -1))
        scan_eta = eta if eta >= 0 else None
        view = View(id=job_id, state=JobState(raw["state"]), eta_scan_s=scan_eta, **store.view(job_id))
        return view.model_dump_json().encode()

    return Response(replies.get(("view", job_id), compute), media_type="application/json")


@router.get(
    "/{job_id}/view/{channel}.png",
    dependencies=[Readable],
    responses={200: {"content": {"image/png": {}}, "description": "A PNG image"}, **READ},
)
def get_channel(job_id: JobId, channel: ChannelName, store: StoreDep, replies: RepliesDep) -> Response:
    """The latest preview image of one channel (bare: one pixel per value, no bars)."""
    return preview_reply(store, replies, job_id, channel)


@router.delete("", response_model=Cleared, dependencies=[Authorized], responses=responses(401, 422))
def clear_jobs(store: StoreDep, replies: RepliesDep, state: EndedState | None = None) -> Cleared:
    """Delete ended jobs (all, or those in ``state``) from the store: their records, logs and previews. Their
    result files stay in the results folder."""
    deleted: list[str] = []
    finishing: list[str] = []
    for ended in [JobState(state)] if state else sorted(TERMINAL):
        for job_id in store.ids(state=ended, limit=1_000_000):
            try:
                store.forget(job_id)
            except JobNotFound:  # another client deleted it meanwhile
                continue
            except TransitionError:
                finishing.append(job_id)
                continue
            deleted.append(job_id)
    replies.clear()
    return Cleared(deleted=deleted, count=len(deleted), finishing=finishing)
