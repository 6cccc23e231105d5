"""The job state machine and leases, on the real Redis."""

from __future__ import annotations

import time

import pytest

from service.store import TERMINAL, TRANSITIONS, JobState, JobStore, TransitionError
from workers.job import JobSpec


def spec() -> JobSpec:
    return JobSpec(input={"file": "/x.cxi"}, schedule=[{"engine": "epie", "iterations": 1}], output="/tmp/o.h5")


def test_transitions_follow_the_table(store: JobStore) -> None:
    for source, targets in TRANSITIONS.items():
        for target in JobState:
            job_id = store.create(spec=spec())
            path = {JobState.QUEUED: [], JobState.RUNNING: [JobState.RUNNING]}.get(source, [JobState.RUNNING, source])
            for step in path:
                store.transition(job_id, to=step)
            if target in targets:
                assert store.transition(job_id, to=target) == source
                assert store.get(job_id)["state"] == target.value
            else:
                with pytest.raises(TransitionError):
                    store.transition(job_id, to=target)
    assert TERMINAL == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert sum(store.counts().values()) == len(store.ids(limit=1000))


def test_claim_lease_and_reap(store: JobStore) -> None:
    job_id = store.create(spec=spec())
    assert store.queue_depth() == 1
    assert store.claim(worker="w", lease_s=0.3, timeout_s=1) == job_id
    assert store.get(job_id)["state"] == "running"
    assert store.reap() == []
    time.sleep(0.4)
    assert store.reap() == [job_id]
    job = store.get(job_id)
    assert job["state"] == "failed" and "worker lost" in job["message"]
    assert any("running -> failed" in line for line in store.logs(job_id))


def test_claim_takes_only_jobs_for_the_workers_devices(store: JobStore) -> None:
    """A CUDA job waits for a worker offering CUDA; a CPU worker takes the next job it can run meanwhile."""
    on = {d: store.create(spec=spec().model_copy(update={"device": d})) for d in ("cuda:1", "cuda", "auto", "cpu")}
    assert store.claim(worker="cpu-only", lease_s=5, timeout_s=0.1) == on["auto"]
    assert store.claim(worker="cpu-only", lease_s=5, timeout_s=0.1, devices=["cpu"]) == on["cpu"]
    assert store.claim(worker="cpu-only", lease_s=5, timeout_s=0.1) is None
    assert store.get(on["cuda"])["state"] == "queued" and store.queue_depth() == 2
    assert store.claim(worker="gpu", lease_s=5, timeout_s=0.1, devices=["cpu", "cuda", "cuda:0"]) == on["cuda"]
    assert store.claim(worker="gpu", lease_s=5, timeout_s=0.1, devices=["cpu", "cuda", "cuda:0"]) is None
    assert store.claim(worker="gpu2", lease_s=5, timeout_s=0.1, devices=["cpu", "cuda", "cuda:1"]) == on["cuda:1"]
    assert store.queue_depth() == 0


def test_cancel_queued_and_running(store: JobStore) -> None:
    queued, running = store.create(spec=spec()), store.create(spec=spec())
    assert store.request_cancel(queued) == JobState.QUEUED
    assert store.get(queued)["state"] == "cancelled" and store.queue_depth() == 1
    assert store.claim(worker="w", lease_s=5, timeout_s=1) == running
    assert not store.cancel_requested(running)
    store.request_cancel(running)
    assert store.cancel_requested(running)
    with pytest.raises(TransitionError):
        store.request_cancel(queued)


def test_view_parts_and_forgetting_an_ended_job(store: JobStore) -> None:
    job_id = store.create(spec=spec())
    assert store.view(job_id) == {"channels": None, "positions": None, "frames": None}
    channels = [{"name": "amplitude", "lo": 0.0}, {"name": "probe_2", "lo": 0.0}]
    store.put_preview(job_id, {"amplitude": b"a", "probe_2": b"p"}, iteration=4, channels=channels)
    store.put_view(job_id, "positions", {"iteration": 4, "points": [1.0, 2.0]})
    view = store.view(job_id)
    assert view["channels"] == {"iteration": 4, "channels": channels} and view["positions"]["points"] == [1.0, 2.0]
    assert store.preview(job_id, "probe_2") == b"p"
    with pytest.raises(TransitionError, match="only ended jobs"):
        store.forget(job_id)
    assert store.claim(worker="w", lease_s=5, timeout_s=1) == job_id
    store.transition(job_id, to=JobState.CANCELLED)
    with pytest.raises(TransitionError, match="still finishing"):
        store.forget(job_id)
    store.release(job_id)
    store.forget(job_id)
    assert not store.r.keys(store.key("job", job_id) + "*") and job_id not in store.ids()
    assert sum(store.counts().values()) == 0
