"""A worker process killed mid-job: the service fails the job (lease expired), the checkpoint stays."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL

from service.demo import free_port
from service.settings import Settings
from tests.service.conftest import AUTH, wait_for


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """``ptychostream worker --queue`` in its own process, on the test's Redis prefix and Prefect."""
    env = {
        **os.environ,
        "PTYCHOSTREAM_REDIS_URL": settings.redis_url,
        "PTYCHOSTREAM_KEY_PREFIX": settings.key_prefix,
        "PTYCHOSTREAM_HEARTBEAT_S": str(settings.heartbeat_s),
        "PTYCHOSTREAM_LEASE_S": str(settings.lease_s),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--queue"], env=env)


def test_killed_worker_leaves_a_file_job_failed_with_its_partial_result(
    client: TestClient, settings: Settings, scan_file: str, prefect: None
) -> None:
    worker = start_worker(settings)
    try:
        body = {"input": {"file": scan_file}, "schedule": [{"engine": "epie", "iterations": 100_000}], "device": "cpu"}
        job_id = client.post("/api/jobs", json=body, headers=AUTH).json()["id"]
        result = Path(settings.results_root.resolve() / job_id / "result.h5")
        wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["progress"]["iteration"] > 3, 60, "iterations")
        wait_for(result.is_file, 10, "the first periodic save")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["state"] != "running", 15, "the lease to expire")
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["state"] == "failed" and "worker lost" in job["message"] and "partial result kept" in job["message"]
        r = client.get(f"/api/jobs/{job_id}/result")
        assert r.status_code == 200
        with h5py.File(io.BytesIO(r.content)) as f:
            assert not f.attrs["complete"] and len(f["history/loss"]) >= 1
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_killed_worker_leaves_the_job_failed_with_its_checkpoint(
    client: TestClient, settings: Settings, prefect: None
) -> None:
    from workers.simulate import simulate
    from workers.stream.detector import replay

    worker = start_worker(settings)
    try:
        body = {
            "input": {"stream": f"tcp://127.0.0.1:{free_port()}", "idle_timeout_s": 10},
            "schedule": [{"engine": "epie", "iterations": 100_000}],
            "device": "cpu",
        }
        job_id = client.post("/api/jobs", json=body, headers=AUTH).json()["id"]
        wait_for(lambda: bool(client.get(f"/api/jobs/{job_id}").json()["listening"]), 60, "the worker to listen")
        data = simulate(probe_size=32, n_positions=36, overlap=0.75, photons=1e6, seed=4)
        endpoint = client.get(f"/api/jobs/{job_id}").json()["listening"]
        sender = threading.Thread(target=replay, args=(data, endpoint))
        sender.start()

        def after_scan() -> bool:
            progress = client.get(f"/api/jobs/{job_id}").json()["progress"]
            return not progress["streaming"] and progress["frames_used"] == 36 and progress["iteration"] > 5

        wait_for(after_scan, 60, "iterations after the scan")
        sender.join()
        assert client.get(f"/api/jobs/{job_id}").json()["state"] == "running"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["state"] != "running", 15, "the lease to expire")
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["state"] == "failed" and "worker lost" in job["message"]
        checkpoint = Path(settings.results_root.resolve() / job_id / "checkpoint.npz")
        assert f"<results>/{job_id}/checkpoint.npz" in job["message"] and checkpoint.is_file()
        assert job["progress"]["preview_iteration"] is not None
        assert client.get(f"/api/jobs/{job_id}/preview/amplitude.png").content.startswith(b"\x89PNG")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
