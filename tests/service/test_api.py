"""The REST contract against the real Redis: auth, input checks, errors as clear 4xx JSON, health, metrics."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from service.store import JobStore
from tests.service.conftest import AUTH

SCHEDULE = [{"engine": "epie", "iterations": 2}, {"engine": "bh-cg", "iterations": 2}]
EPIE = {"engine": "epie", "iterations": 2}


def test_submit_list_get_cancel_a_queued_job(client: TestClient, scan_file: str) -> None:
    r = client.post("/api/jobs", json={"input": {"file": scan_file}, "schedule": SCHEDULE}, headers=AUTH)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["request"]["schedule"][1]["engine"] == "bh-cg"
    assert job["progress"]["iteration"] == 0
    assert [j["id"] for j in client.get("/api/jobs", params={"state": "queued"}).json()["data"]] == [job_id]
    assert client.get("/api/jobs", params={"state": "running"}).json()["count"] == 0
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=AUTH).json()["previous_state"] == "queued"
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    again = client.post(f"/api/jobs/{job_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert "queued -> cancelled" in client.get(f"/api/jobs/{job_id}/logs").json()["lines"][-1]
    assert client.get(f"/api/jobs/{job_id}/result").status_code == 409
    assert client.get(f"/api/jobs/{job_id}/preview/phase.png").status_code == 404


def test_mutating_calls_need_the_token(client: TestClient, scan_file: str) -> None:
    body = {"input": {"file": scan_file}, "schedule": SCHEDULE}
    for headers in ({}, {"Authorization": "Bearer wrong-token-xxxx"}, {"Authorization": "Basic abc"}):
        r = client.post("/api/jobs", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["detail"] == "missing or wrong bearer token"
    assert client.post("/api/jobs/abc123/cancel").status_code == 401


def test_input_paths_stay_under_the_data_root(client: TestClient, scan_file: str) -> None:
    for path in ("../../etc/passwd", "/etc/passwd", "scans/../../outside.cxi"):
        r = client.post("/api/jobs", json={"input": {"file": path}, "schedule": SCHEDULE}, headers=AUTH)
        assert r.status_code == 400 and "data root" in r.json()["detail"], path
    r = client.post("/api/jobs", json={"input": {"file": "scans/none.cxi"}, "schedule": SCHEDULE}, headers=AUTH)
    detail = r.json()["detail"]
    assert r.status_code == 422 and detail.startswith("input.file: no such file: scans/none.cxi"), detail
    assert "PTYCHOSTREAM_DATA_ROOT" in detail and "demo.cxi" in detail  # where paths resolve, and a file that does


def test_a_cuda_job_needs_a_live_worker_that_offers_it(client: TestClient, store: JobStore, scan_file: str) -> None:
    body = {"input": {"file": scan_file}, "schedule": SCHEDULE}
    for device in ("auto", "cpu"):  # every worker runs these: queued until one is live
        assert client.post("/api/jobs", json={**body, "device": device}, headers=AUTH).status_code == 201
    r = client.post("/api/jobs", json={**body, "device": "cuda"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"] == (
        "device: no live worker offers cuda (offered: no live worker); use auto or cpu"
    )
    store.announce("gpu-node", {"device": "cuda", "devices": "cpu,cuda,cuda:0", "job": ""}, ttl_s=5)
    assert client.post("/api/jobs", json={**body, "device": "cuda:0"}, headers=AUTH).status_code == 201
    r = client.post("/api/jobs", json={**body, "device": "cuda:1"}, headers=AUTH)
    assert r.status_code == 422 and "offered: cpu, cuda, cuda:0" in r.json()["detail"]


def test_stream_preprocessing_files_stay_under_the_data_root(client: TestClient, scan_file: str) -> None:
    stream = {"stream": "tcp://127.0.0.1:5599"}
    for field in ("dark", "bad_pixels"):
        body = {"input": {**stream, "preprocess": {field: "../../etc/passwd"}}, "schedule": SCHEDULE}
        r = client.post("/api/jobs", json=body, headers=AUTH)
        assert r.status_code == 400 and f"input.preprocess.{field}" in r.json()["detail"]
    body = {"input": {**stream, "preprocess": {"size": 4}}, "schedule": SCHEDULE}
    assert client.post("/api/jobs", json=body, headers=AUTH).status_code == 422
    body = {
        "input": {**stream, "preprocess": {"size": 64, "binning": 2, "bad_pixels": scan_file}},
        "schedule": SCHEDULE,
    }
    r = client.post("/api/jobs", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    stored = client.get(f"/api/jobs/{r.json()['id']}").json()["request"]["input"]["preprocess"]
    assert stored["size"] == 64 and stored["bad_pixels"].endswith(scan_file)


def test_malformed_specs_name_the_field(client: TestClient, scan_file: str) -> None:
    cases = {
        "schedule": {"input": {"file": scan_file}, "schedule": []},
        "engine": {"input": {"file": scan_file}, "schedule": [{"engine": "nope", "iterations": 1}]},
        "iterations": {"input": {"file": scan_file}, "schedule": [{"engine": "epie", "iterations": -1}]},
        "alpha": {
            "input": {"file": scan_file},
            "schedule": [{"engine": "rpie", "iterations": 1, "options": {"alpha": 5}}],
        },
        "bogus": {
            "input": {"file": scan_file},
            "schedule": [{"engine": "epie", "iterations": 1, "options": {"bogus": 1}}],
        },
        "device": {"input": {"file": scan_file}, "schedule": SCHEDULE, "device": "tpu"},
        "stream": {"input": {"stream": "udp://x"}, "schedule": SCHEDULE},
    }
    for field, body in cases.items():
        r = client.post("/api/jobs", json=body, headers=AUTH)
        assert r.status_code == 422, (field, r.text)
        assert field in r.text, (field, r.text)


def test_errors_are_json_4xx(client: TestClient, settings) -> None:  # noqa: ANN001
    assert client.get("/api/jobs/0123abcd").json() == {"detail": "no job 0123abcd"}
    assert client.get("/api/jobs/0123abcd/events").status_code == 404
    assert client.get("/api/jobs/NOT-AN-ID").status_code == 422
    assert client.get("/api/jobs/abc/preview/other.png").status_code == 422
    big = {"input": {"file": "x" * (settings.max_body_bytes + 10)}, "schedule": SCHEDULE}
    r = client.post("/api/jobs", json=big, headers=AUTH)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_health_metrics_dashboard_docs(client: TestClient, store: JobStore, settings: Settings) -> None:
    reply = client.get("/api/health")  # no worker yet: jobs would not run
    assert reply.status_code == 503 and reply.json()["problems"] == ["no live worker: queued jobs will not run"]
    store.announce("w1", {"device": "cpu", "job": ""}, ttl_s=5)
    time.sleep(settings.reply_cache_s)
    reply = client.get("/api/health")
    health = reply.json()
    assert reply.status_code == 200 and health["status"] == "ok" and health["redis"] is True
    assert [w["name"] for w in health["workers"]] == ["w1"]
    assert [lp["name"] for lp in health["loops"]] == ["event-hub", "reaper"]
    metrics = client.get("/metrics").text
    for name in (
        'ptychostream_jobs{state="running"}',
        "ptychostream_queue_depth",
        "ptychostream_frames_per_second",
        "ptychostream_iterations_per_second",
    ):
        assert name in metrics
    page = client.get("/")
    assert page.status_code == 200 and "PtychoStream" in page.text
    assert client.get("/dashboard/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/result", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("stage", "option"),
    [({"engine": "pine", "iterations": 2}, "denoiser"), ({"transform": "fast-forward"}, "weights")],
    ids=["pine", "fast-forward"],
)
def test_stage_option_files_stay_under_the_data_root(
    client: TestClient, scan_file: str, stage: dict[str, Any], option: str
) -> None:
    """A stage's weights file (PINE's ``denoiser``, fast-forward's ``weights``) resolves under the data root like
    every input file."""
    for value, status, words in (("/etc/passwd", 400, "data root"), ("nets/none.pt", 422, "no such file")):
        body = {"input": {"file": scan_file}, "schedule": [{**stage, "options": {option: value}}, EPIE]}
        r = client.post("/api/jobs", json=body, headers=AUTH)
        assert r.status_code == status and f"schedule[0].options.{option}" in r.json()["detail"], r.text
        assert words in r.json()["detail"]
    body = {"input": {"file": scan_file}, "schedule": [{**stage, "options": {option: scan_file}}, EPIE]}
    r = client.post("/api/jobs", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
