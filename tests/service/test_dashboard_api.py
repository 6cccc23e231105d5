"""The dashboard's endpoints against the real Redis and a real worker: a job's live view (preview channels with
their display ranges and pixel size, scan positions, frame accounting), the scan files under the data root, and
clearing ended jobs."""

from __future__ import annotations

import io
import os
from typing import get_args

import redis
from fastapi.testclient import TestClient
from PIL import Image

from flows.reporter import frame_accounting
from service.demo import free_port
from service.routes.view import EndedState
from service.settings import Settings
from service.store import TERMINAL, JobState, JobStore
from tests.service.conftest import AUTH, wait_for
from tests.service.test_store import spec


def test_a_finished_file_job_has_channels_and_positions(
    client: TestClient, scan_file: str, worker: None, store: JobStore
) -> None:
    body = {"input": {"file": scan_file}, "schedule": [{"engine": "epie", "iterations": 3}], "modes": 2}
    job_id = client.post("/api/jobs", json=body, headers=AUTH).json()["id"]
    wait_for(lambda: store.get(job_id)["state"] == "succeeded", 120, "the job to succeed")
    view = client.get(f"/api/jobs/{job_id}/view").json()
    assert view["state"] == "succeeded" and view["frames"] is None and view["eta_scan_s"] is None
    channels = {c["name"]: c for c in view["channels"]["channels"]}
    assert list(channels) == ["amplitude", "phase", "probe", "probe_2", "probe_farfield"]
    assert "% power" in channels["probe_2"]["title"]
    amplitude = channels["amplitude"]
    assert amplitude["lo"] < amplitude["hi"] and amplitude["colormap"] == "grey"
    assert 1e-9 < amplitude["pixel_size_m"] < 1e-6 and channels["probe_farfield"]["pixel_size_m"] == 0
    for name, channel in channels.items():
        r = client.get(f"/api/jobs/{job_id}/view/{name}.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (channel["width"], channel["height"])
    positions = view["positions"]
    assert len(positions["points"]) == 2 * 36 and positions["frames_used"] == 36
    rows, cols = positions["points"][0::2], positions["points"][1::2]
    assert 0 < min(rows) and max(rows) < positions["height"] and 0 < min(cols) and max(cols) < positions["width"]
    assert positions["pixel_size_m"] == amplitude["pixel_size_m"]
    assert client.get(f"/api/jobs/{job_id}/view/nothing.png").status_code == 404
    assert client.get(f"/api/jobs/{job_id}/view/Bad-Name.png").status_code == 422


def test_a_faulty_stream_is_accounted_frame_by_frame(
    client: TestClient, settings: Settings, worker: None, store: JobStore
) -> None:
    from workers.simulate import simulate
    from workers.stream.detector import Faults, replay

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    body = {"input": {"stream": endpoint, "idle_timeout_s": 10}, "schedule": [{"engine": "epie", "iterations": 1}]}
    job_id = client.post("/api/jobs", json=body, headers=AUTH).json()["id"]
    wait_for(lambda: bool(store.get(job_id).get("listening")), 60, "the job to listen")
    data = simulate(probe_size=32, n_positions=60, overlap=0.75, photons=1e6, seed=5)
    faults = Faults(drop=0.1, corrupt=0.1, duplicate=0.1, seed=2)
    report = replay(data, endpoint, faults=faults, rate_hz=300, scan_id=job_id)
    assert report.dropped and report.corrupted and report.duplicated
    wait_for(lambda: store.get(job_id)["state"] == "succeeded", 120, "the job to succeed")
    frames = client.get(f"/api/jobs/{job_id}/view").json()["frames"]
    assert frames["ended"] and frames["expected"] == 60 and frames["per_cell"] == 1
    assert frames["received"] == 60 - len(report.dropped) - len(report.corrupted)
    assert frames["missing"] == len(report.dropped) and frames["duplicates"] == len(report.duplicated)
    assert sum(frames["rejected"].values()) == len(report.corrupted)
    assert [i for i, c in enumerate(frames["cells"]) if c == "m"] == sorted(report.dropped)
    assert [i for i, c in enumerate(frames["cells"]) if c == "x"] == sorted(report.corrupted)


def test_frame_accounting_marks_gaps_and_rejects() -> None:
    counters = {"received": 5, "expected": 10, "rejected": {"saturated": 1}, "malformed": {}, "duplicates": 2}
    live = frame_accounting(counters | {"missing": 0}, frozenset({0, 1, 3, 5, 6}), frozenset({2}), ended=False)
    assert live["cells"] == "rrxrmrr..." and live["missing"] == 1 and live["newest"] == 6
    done = frame_accounting(counters | {"missing": 4}, frozenset({0, 1, 3, 5, 6}), frozenset({2}), ended=True)
    assert done["cells"] == "rrxrmrrmmm" and done["missing"] == 4 and done["per_cell"] == 1
    big = {**counters, "expected": 10_000, "missing": 0}
    coarse = frame_accounting(big, frozenset(range(0, 9000)), frozenset({4000}), ended=False)
    assert coarse["per_cell"] == 3 and len(coarse["cells"]) == 3334
    assert coarse["cells"][4000 // 3] == "x" and coarse["cells"][0] == "r" and coarse["cells"][-1] == "."
    empty = frame_accounting({**counters, "expected": None, "missing": 0}, frozenset(), frozenset(), ended=False)
    assert empty["cells"] == "" and empty["newest"] is None


def test_files_lists_scans_under_the_data_root(client: TestClient, settings: Settings, scan_file: str) -> None:
    root = settings.data_root
    (root / "scans" / "notes.txt").write_text("not a scan")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.h5").write_bytes(b"x")
    (root / "b.h5").write_bytes(b"12345")
    outside = root.parent / "outside.cxi"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.cxi")
    files = client.get("/api/files").json()
    assert [f["path"] for f in files["files"]] == ["b.h5", scan_file] and not files["truncated"]
    assert files["files"][0]["size"] == 5


def test_clearing_deletes_ended_jobs_only(client: TestClient, store: JobStore, settings: Settings) -> None:
    ended = {state: store.create(spec=spec()) for state in (JobState.SUCCEEDED, JobState.FAILED)}
    for state, job_id in ended.items():
        store.transition(job_id, to=JobState.RUNNING)
        store.transition(job_id, to=state)
    store.put_preview(ended[JobState.FAILED], {"amplitude": b"png"}, iteration=1, channels=[{"name": "amplitude"}])
    store.put_view(ended[JobState.FAILED], "frames", {"received": 1})
    queued, leased = store.create(spec=spec()), store.create(spec=spec())
    store.transition(leased, to=JobState.RUNNING)
    store.renew(leased, worker="w", lease_s=30)
    store.transition(leased, to=JobState.CANCELLED)
    assert client.delete("/api/jobs").status_code == 401
    r = client.delete("/api/jobs", params={"state": "queued"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"].startswith("state: Input should be 'succeeded'")
    assert set(get_args(EndedState)) == set(TERMINAL)
    r = client.delete("/api/jobs", params={"state": "failed"}, headers=AUTH)
    assert r.json() == {"deleted": [ended[JobState.FAILED]], "count": 1, "finishing": []}
    keys = redis.Redis.from_url(settings.redis_url).keys(settings.key_prefix + "*")
    assert not [k for k in keys if ended[JobState.FAILED].encode() in k]
    assert client.get(f"/api/jobs/{ended[JobState.FAILED]}").status_code == 404
    cleared = client.delete("/api/jobs", headers=AUTH).json()
    assert cleared["deleted"] == [ended[JobState.SUCCEEDED]] and cleared["finishing"] == [leased]
    assert sorted(j["id"] for j in client.get("/api/jobs").json()["data"]) == sorted([queued, leased])


def test_the_dashboard_is_revalidated_and_its_modules_are_javascript(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
    modules = ("plots.js", "images.js", "status.js")
    assert all(f'from "./{module}"' in client.get("/dashboard/app.js").text for module in modules)
    for module in ("app.js", *modules):
        r = client.get(f"/dashboard/{module}")
        assert r.headers["content-type"].startswith("text/javascript") and r.headers["cache-control"] == "no-cache"
        again = client.get(f"/dashboard/{module}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
