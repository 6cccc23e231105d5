"""Faults of the machinery, reproduced for real: a Redis killed (-9) and restarted under an idle worker, under a
running job and under the API; cancels racing claims on the real store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.store import JobState, JobStore, TransitionError
from tests.service.conftest import AUTH, wait_for
from tests.service.redis_server import RedisServer
from workers.atomic import temporary
from workers.job import JobSpec


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_settings(settings: Settings, server: RedisServer) -> Settings:
    return settings.model_copy(update={"redis_url": server.url})


@pytest.fixture
def own_worker(own_settings: Settings, prefect: None) -> Iterator[None]:
    from flows.worker import serve_queue

    stop = threading.Event()
    thread = threading.Thread(target=serve_queue, args=(own_settings,), kwargs={"stop": stop, "name": "faulty"})
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()


def health(client: TestClient) -> tuple[int, dict[str, object]]:
    reply = client.get("/api/health")
    return reply.status_code, reply.json()


def job(client: TestClient, job_id: str) -> dict[str, object]:
    reply: dict[str, object] = client.get(f"/api/jobs/{job_id}").json()
    return reply


def iteration(client: TestClient, job_id: str) -> int:
    progress = job(client, job_id)["progress"]
    assert isinstance(progress, dict)
    return int(progress["iteration"])


def test_an_outage_while_idle_pauses_the_worker_and_health_reports_it(
    own_settings: Settings, server: RedisServer, own_worker: None, scan_file: str
) -> None:
    with TestClient(create_app(own_settings)) as client:
        wait_for(lambda: health(client)[0] == 200, 10, "health to see the worker")
        server.kill()
        wait_for(lambda: health(client)[0] == 503, 5, "health to report the outage")
        body = health(client)[1]
        assert not body["redis"] and "job store unreachable" in str(body["problems"])
        assert client.get("/api/health/ready").status_code == 503
        assert client.get("/api/health/live").status_code == 200
        wait_for(lambda: "failing" in str(health(client)[1]["problems"]), 10, "the loops to report failing")
        server.start()
        wait_for(lambda: health(client)[0] == 200, 30, "health to recover")
        loops = {str(loop["name"]): loop for loop in health(client)[1]["loops"]}  # type: ignore[union-attr]
        assert loops["worker faulty"]["total_failures"] > 0 and loops["worker faulty"]["healthy"]
        assert 'ptychostream_loop_failures_total{loop="worker faulty"}' in client.get("/metrics").text
        reply = client.post(
            "/api/jobs",
            json={"input": {"file": scan_file}, "schedule": [{"engine": "epie", "iterations": 2}]},
            headers=AUTH,
        )
        job_id = reply.json()["id"]
        wait_for(lambda: job(client, job_id)["state"] == "succeeded", 60, "the job queued after the outage to run")


def test_a_running_job_survives_an_outage_shorter_than_its_patience(
    own_settings: Settings, server: RedisServer, own_worker: None, scan_file: str
) -> None:
    schedule = [{"engine": "epie", "iterations": 100_000}]
    with TestClient(create_app(own_settings)) as client:
        reply = client.post("/api/jobs", json={"input": {"file": scan_file}, "schedule": schedule}, headers=AUTH)
        job_id = reply.json()["id"]
        wait_for(lambda: iteration(client, job_id) >= 2, 60, "iterations")
        server.outage(2 * own_settings.lease_s)  # the lease expires in the store while it is away
        before = iteration(client, job_id)
        wait_for(lambda: iteration(client, job_id) > before + 2, 30, "progress reports to resume")
        assert job(client, job_id)["state"] == "running"  # the reaper gave the live worker time to renew
        client.post(f"/api/jobs/{job_id}/cancel", headers=AUTH)
        wait_for(lambda: job(client, job_id)["state"] == "cancelled", 30, "the job to stop on request")


def test_cancels_racing_claims_agree_with_what_the_worker_did(store: JobStore) -> None:
    """A cancel either removes a queued job before any worker has it, or asks the worker that has it to stop; the
    job's final state is always the one its worker (or the cancel, for a job no worker took) recorded."""
    spec = JobSpec(input={"file": "/x.cxi"}, schedule=[{"engine": "epie", "iterations": 1}], output="/tmp/o.h5")
    n, ran, refused = 300, {}, []
    submitted: list[str] = []
    done = threading.Event()

    def worker() -> None:
        while not (done.is_set() and store.queue_depth() == 0):
            job_id = store.claim(worker="w", lease_s=5, timeout_s=0.05)
            if job_id is None:
                continue
            outcome = JobState.CANCELLED if store.cancel_requested(job_id) else JobState.SUCCEEDED
            ran[job_id] = outcome
            try:
                store.transition(job_id, to=outcome)
            except TransitionError as exc:
                refused.append(str(exc))

    thread = threading.Thread(target=worker)
    thread.start()
    for _ in range(n):
        job_id = store.create(spec=spec)
        submitted.append(job_id)
        if len(submitted) % 2:
            try:
                store.request_cancel(job_id)
            except TransitionError:  # the worker had already finished it: the cancel is refused (409)
                assert job_id in ran
    done.set()
    thread.join(timeout=60)
    assert refused == []
    for i, job_id in enumerate(submitted):
        final = JobState(store.get(job_id)["state"])
        if job_id in ran:
            assert final == ran[job_id]
        else:
            assert final == JobState.CANCELLED and i % 2 == 0  # only cancelled jobs were never run


def test_the_reaper_removes_a_dead_writers_temporaries(store: JobStore, tmp_path: Path) -> None:
    output, checkpoint = tmp_path / "result.h5", tmp_path / "checkpoint.npz"
    spec = JobSpec(
        input={"file": "/x.cxi"},
        schedule=[{"engine": "epie", "iterations": 1}],
        output=str(output),
        checkpoint=str(checkpoint),
    )
    job_id = store.create(spec=spec)
    assert store.claim(worker="w", lease_s=0.1, timeout_s=1) == job_id
    for path in (output, checkpoint):
        temporary(path).write_bytes(b"half a file")
    wait_for(lambda: store.reap() == [job_id], 5, "the lease to expire")
    assert not temporary(output).exists() and not temporary(checkpoint).exists()


def test_take_refuses_a_job_another_worker_runs(store: JobStore) -> None:
    spec = JobSpec(input={"file": "/x.cxi"}, schedule=[{"engine": "epie", "iterations": 1}], output="/tmp/o.h5")
    job_id = store.create(spec=spec)
    store.take(job_id, worker="a", lease_s=5)
    assert store.get(job_id)["worker"] == "a" and store.queue_depth() == 0
    store.take(job_id, worker="a", lease_s=5)  # the queue worker's own flow run
    with pytest.raises(TransitionError, match="running under worker a"):
        store.take(job_id, worker="b", lease_s=5)
    store.transition(job_id, to=JobState.SUCCEEDED)
    with pytest.raises(TransitionError, match="already succeeded"):
        store.take(job_id, worker="a", lease_s=5)
