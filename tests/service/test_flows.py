"""Jobs end to end: API -> Redis queue -> in-process worker -> Prefect ``reconstruct`` flow run -> result."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import h5py
import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from service.settings import Settings
from service.store import JobStore
from tests.service.conftest import AUTH, wait_for


def flow_run_state(job_id: str) -> str:
    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"recon-{job_id}"])))
    assert len(runs) == 1
    return str(runs[0].state_type.value)


def submit(client: TestClient, scan_file: str, schedule: list[dict[str, object]]) -> str:
    r = client.post(
        "/api/jobs", json={"input": {"file": scan_file}, "schedule": schedule, "device": "cpu"}, headers=AUTH
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def state(client: TestClient, job_id: str) -> str:
    return str(client.get(f"/api/jobs/{job_id}").json()["state"])


def test_submit_runs_to_succeeded_with_a_result(client: TestClient, worker: None, scan_file: str) -> None:
    schedule = [{"engine": "epie", "iterations": 3}, {"engine": "bh-cg", "iterations": 2}]
    job_id = submit(client, scan_file, schedule)
    wait_for(lambda: state(client, job_id) in ("succeeded", "failed"), 90, "the job to finish")
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job["message"]
    assert job["progress"]["iteration"] == 5 and job["progress"]["loss"] > 0
    assert len(client.get(f"/api/jobs/{job_id}/loss").json()) == 5
    r = client.get(f"/api/jobs/{job_id}/result")
    assert r.status_code == 200
    with h5py.File(io.BytesIO(r.content)) as f:
        assert f["object"].dtype.name == "complex64" and len(f["history/loss"]) == 5
    for kind in ("amplitude", "phase", "probe"):
        for url in (f"/api/jobs/{job_id}/result/{kind}.png", f"/api/jobs/{job_id}/preview/{kind}.png"):
            image = client.get(url)
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), url
    lines = client.get(f"/api/jobs/{job_id}/logs").json()["lines"]
    assert any("queued -> running" in x for x in lines) and any("running -> succeeded" in x for x in lines)
    wait_for(lambda: flow_run_state(job_id) == "COMPLETED", 20, "Prefect to record the completion")


def test_cancel_mid_run_keeps_a_partial_result(client: TestClient, worker: None, scan_file: str) -> None:
    job_id = submit(client, scan_file, [{"engine": "epie", "iterations": 100_000}])
    wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["progress"]["iteration"] >= 2, 60, "iterations")
    beats = [t.name for t in threading.enumerate() if t.name.startswith(("heartbeat-", "lease-"))]
    assert beats == [f"heartbeat-{job_id}"]  # one heartbeat per job
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=AUTH).json()["previous_state"] == "running"
    wait_for(lambda: state(client, job_id) != "running", 30, "the job to stop")
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and "partial result" in job["message"]
    r = client.get(f"/api/jobs/{job_id}/result")
    with h5py.File(io.BytesIO(r.content)) as f:
        assert f.attrs["stopped"] and not f.attrs["complete"]


def test_a_worker_shutting_down_stops_its_job_with_a_partial_result(
    client: TestClient, settings: Settings, scan_file: str, prefect: None
) -> None:
    from flows.worker import serve_queue

    stop = threading.Event()
    thread = threading.Thread(target=serve_queue, args=(settings,), kwargs={"stop": stop, "name": "leaving"})
    thread.start()
    job_id = submit(client, scan_file, [{"engine": "epie", "iterations": 100_000}])
    wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["progress"]["iteration"] >= 2, 60, "iterations")
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    wait_for(lambda: state(client, job_id) != "running", 5, "the reply cache to expire")
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and "partial result" in job["message"]
    lines = client.get(f"/api/jobs/{job_id}/logs").json()["lines"]
    assert any("worker leaving shutting down" in line for line in lines)


def test_a_deployment_run_takes_the_job_with_settings_from_the_environment(
    client: TestClient,
    store: JobStore,
    settings: Settings,
    scan_file: str,
    prefect: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.reconstruct import reconstruct

    for name in ("redis_url", "key_prefix", "heartbeat_s", "lease_s"):
        monkeypatch.setenv(f"PTYCHOSTREAM_{name.upper()}", str(getattr(settings, name)))
    job_id = submit(client, scan_file, [{"engine": "epie", "iterations": 2}])
    assert reconstruct(job_id=job_id) == "succeeded"
    job = store.get(job_id)
    assert job["state"] == "succeeded" and job["worker"].startswith("flow-") and store.queue_depth() == 0
    assert not store.r.exists(store.key("job", job_id, "lease"))  # the heartbeat released it


def test_a_failing_job_is_failed_in_redis_and_in_prefect(
    client: TestClient, worker: None, scan_file: str, settings
) -> None:  # noqa: ANN001
    job_id = submit(client, scan_file, [{"engine": "epie", "iterations": 1}])
    Path(settings.data_root / scan_file).write_bytes(b"not an hdf5 file")
    wait_for(lambda: state(client, job_id) in ("succeeded", "failed"), 60, "the job to finish")
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["message"]
    wait_for(lambda: flow_run_state(job_id) == "FAILED", 20, "Prefect to record the failure")


def test_a_failing_beat_does_not_stop_the_heartbeat(settings: Settings, store: JobStore) -> None:
    """A listener that raises (or a Redis blip) is logged; the next beats still renew the lease and see cancel."""
    from flows.heartbeat import Heartbeat

    fast = settings.model_copy(update={"heartbeat_s": 0.05, "lease_s": 0.3})
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("listener failed")

    with Heartbeat(store, "abc123", fast, worker="w") as beat:
        beat.listen(broken)
        wait_for(lambda: len(calls) >= 3, 5, "three beats")
        store.r.delete(store.key("job", "abc123", "lease"))
        wait_for(lambda: bool(store.r.exists(store.key("job", "abc123", "lease"))), 5, "the lease renewed")
    assert not store.r.exists(store.key("job", "abc123", "lease"))


def test_a_stream_job_cancelled_before_any_frame_ends_cancelled(client: TestClient, worker: None) -> None:
    from tests.service.redis_server import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    r = client.post("/api/jobs", json={"input": {"stream": endpoint}, "device": "cpu"}, headers=AUTH)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["listening"] == endpoint, 60, "bind")
    client.post(f"/api/jobs/{job_id}/cancel", headers=AUTH)
    wait_for(lambda: state(client, job_id) != "running", 30, "the job to stop")
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and "before any usable frame" in job["message"], job["message"]
    assert client.get(f"/api/jobs/{job_id}/result").status_code == 409


def test_device_is_checked_against_the_live_workers(client: TestClient, worker: None, store: JobStore) -> None:
    """The worker announces what it offers (cpu here, no CUDA); a job asking for a device no live worker has is
    refused at submission, naming ``device``."""
    wait_for(lambda: store.workers() != [], 30, "the worker to announce itself")
    (health,) = client.get("/api/health").json()["workers"]
    assert health["devices"].split(",")[0] == "cpu"
    job = {"input": {"stream": "tcp://127.0.0.1:5999"}, "device": "cuda:3"}
    r = client.post("/api/jobs", json=job, headers=AUTH)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("device: no live worker offers cuda:3") and "offered: cpu" in detail, detail


def test_the_demo_scan_is_a_file_job_input(client: TestClient, worker: None, settings: Settings) -> None:
    """``serve --demo``'s scan lands in the data root as demo.cxi: the README's REST example runs on it."""
    from service.demo import DEMO_FILE, start_demo

    stop = threading.Event()
    demo, detector = start_demo(settings, positions=24, rate_hz=200.0, iterations_after_scan=2, stop=stop)
    try:
        wait_for(lambda: state(client, demo) not in ("queued", "running"), 120, "the demo job to finish")
    finally:
        stop.set()
        detector.join(30)
    assert state(client, demo) == "succeeded"
    assert (settings.data_root / DEMO_FILE).is_file()
    job_id = submit(client, DEMO_FILE, [{"engine": "epie", "iterations": 2}])
    wait_for(lambda: state(client, job_id) not in ("queued", "running"), 90, "the file job to finish")
    assert state(client, job_id) == "succeeded"


def test_a_flow_run_that_cannot_start_fails_its_job_with_the_cause(
    client: TestClient, settings: Settings, store: JobStore, scan_file: str
) -> None:
    """No Prefect API to talk to (a URL where nothing listens): the job fails with that cause at once, not as
    'worker lost' after its lease expires."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.worker import serve_queue
    from tests.service.redis_server import free_port

    job_id = submit(client, scan_file, [{"engine": "epie", "iterations": 2}])
    stop = threading.Event()

    def work() -> None:  # Prefect's settings are a context variable: set in the worker's thread
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
            serve_queue(settings, stop=stop, name="no-api")

    thread = threading.Thread(target=work)
    thread.start()
    try:
        wait_for(lambda: state(client, job_id) not in ("queued", "running"), 90, "the job to fail")
    finally:
        stop.set()
        thread.join(timeout=60)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["message"].startswith("the flow run failed: "), job["message"]
    assert "Failed to reach API" in job["message"] and "worker lost" not in job["message"], job["message"]
