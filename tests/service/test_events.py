"""Event streams (SSE) against a real uvicorn server: more streams than the old one-connection-per-stream
cap (100) all stay open and get every job's events through the one shared subscription; past
``max_event_streams`` a stream is refused (503); without read access, refused (401)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from service.events import CLIENT_NAME
from service.jobspec import spec_for
from service.settings import Settings
from service.store import JobState, JobStore
from tests.service.conftest import AUTH, wait_for
from workers.job import JobRequest, StreamInput

STREAMS, JOBS = 120, 12


def queued_job(store: JobStore, settings: Settings) -> str:
    job_id = JobStore.new_id()
    request = JobRequest(input=StreamInput(stream="tcp://127.0.0.1:5599"))
    return store.create(spec=spec_for(request, settings, job_id), job_id=job_id)


async def follow(client: httpx.AsyncClient, job_id: str, started: list[str]) -> list[str]:
    """The event names of one stream, to its end (``started`` gets the job id once its first event came)."""
    names = []
    async with client.stream("GET", f"/api/jobs/{job_id}/events", headers=AUTH) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("event:"):
                names.append(line.split(":", 1)[1].strip())
                if len(names) == 1:
                    started.append(job_id)
    return names


def test_many_streams_share_one_subscription(
    settings: Settings, store: JobStore, serve: Callable[[Settings], tuple[str, FastAPI]]
) -> None:
    settings = settings.model_copy(update={"read_access": "token", "max_event_streams": STREAMS})
    url, app = serve(settings)
    jobs = [queued_job(store, settings) for _ in range(JOBS)]

    async def run() -> list[list[str]]:
        limits = httpx.Limits(max_connections=STREAMS + 10)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            started: list[str] = []
            streams = [asyncio.create_task(follow(client, jobs[i % JOBS], started)) for i in range(STREAMS)]

            async def all_started() -> None:
                while len(started) < STREAMS:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(all_started(), 30)
            assert app.state.hub.open == STREAMS and app.state.hub.connected.is_set()
            over = await client.get(f"/api/jobs/{jobs[0]}/events", headers=AUTH)
            assert over.status_code == 503 and "max_event_streams" in over.json()["detail"]
            assert (await client.get(f"/api/jobs/{jobs[0]}/events")).status_code == 401
            for job_id in jobs:
                store.progress(job_id, {"iteration": 1}, loss=0.5)
                store.transition(job_id, to=JobState.CANCELLED, message="test")
            return await asyncio.gather(*streams)

    for names in asyncio.run(run()):
        assert names == ["state", "progress", "state"], names
    wait_for(lambda: app.state.hub.open == 0, 10, "every stream to give its place back")


def test_the_shared_subscription_survives_a_dropped_connection(
    settings: Settings, store: JobStore, serve: Callable[[Settings], tuple[str, FastAPI]]
) -> None:
    url, app = serve(settings)
    job_id = queued_job(store, settings)

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            started: list[str] = []
            stream = asyncio.create_task(follow(client, job_id, started))
            await asyncio.wait_for(_until(lambda: bool(started) and app.state.hub.connected.is_set()), 10)
            for entry in store.r.client_list():  # drop the hub's connection, as a Redis restart would
                if entry["name"] == CLIENT_NAME:
                    store.r.client_kill_filter(_id=entry["id"])
            await asyncio.wait_for(_until(lambda: hub_failures(url) >= 1), 10)  # health saw it
            await asyncio.wait_for(_until(lambda: app.state.hub.connected.is_set()), 10)
            store.progress(job_id, {"iteration": 1}, loss=0.5)
            store.transition(job_id, to=JobState.CANCELLED, message="test")
            return await asyncio.wait_for(stream, 4)  # before the stream's 5 s fallback poll

    assert asyncio.run(run()) == ["state", "progress", "state"]


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.05)


def hub_failures(url: str) -> int:
    """The event hub's failed steps as the health reply shows them."""
    loops = {loop["name"]: loop for loop in httpx.get(url + "/api/health").json()["loops"]}
    return int(loops["event-hub"]["total_failures"])
