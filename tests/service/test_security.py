"""Access and input policy against the real Redis: who may read, dashboard sessions, the token policy,
the stream endpoint policy, inputs that once gave 500s, server paths hidden from readers, result PNGs
rendered once, and an OpenAPI that documents every error as sent."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import SESSION_COOKIE, new_session
from service.jobspec import spec_for
from service.settings import Settings
from service.store import JobState, JobStore
from service.tokens import token_problem
from tests.service.conftest import AUTH
from workers.io import write_result
from workers.job import FileInput, JobRequest

READ_TOKEN = "read-only-0123456789"
API_TOKEN = AUTH["Authorization"].removeprefix("Bearer ")
SCHEDULE = [{"engine": "epie", "iterations": 2}]


@pytest.fixture
def guarded(settings: Settings) -> Settings:
    return settings.model_copy(update={"read_access": "token", "read_token": READ_TOKEN})


def finished_job(store: JobStore, settings: Settings, scan_file: str, *, elements: tuple[str, ...] = ()) -> str:
    """A cancelled job whose (small) result file exists (with ``elements`` maps, as a joint XRF run writes)."""
    job_id = JobStore.new_id()
    request = JobRequest(input=FileInput(file=str(settings.data_root.resolve() / scan_file)), schedule=SCHEDULE)
    spec = spec_for(request, settings, job_id)
    store.create(spec=spec, job_id=job_id)
    rng = np.random.default_rng(0)
    state = {
        "object": np.exp(1j * rng.random((96, 96))),
        "probe": np.ones((1, 32, 32), complex),
        "positions": rng.uniform(0, 60, (20, 2)),
        "origin": np.zeros(2),
        **{f"elements/{name}": rng.random((96, 96)) * 1e-6 for name in elements},
    }
    Path(spec.output).parent.mkdir(parents=True)
    write_result(spec.output, state, loss=np.ones(3), time_s=np.arange(3.0), attrs={"complete": False})
    store.transition(job_id, to=JobState.CANCELLED, message=f"cancelled; wrote {spec.output}")
    store.log(job_id, f"reading {settings.data_root.resolve() / scan_file}")
    return job_id


def read_paths(client: TestClient) -> list[str]:
    """Every read operation of the jobs resource in the OpenAPI, with a job id filled in."""
    paths = client.get("/openapi.json").json()["paths"]
    return [
        p.replace("{job_id}", "0123abcd").replace("{kind}", "phase").replace("{element}", "Fe")
        for p, ops in paths.items()
        if p.startswith("/api/jobs") and "get" in ops
    ]


def test_reads_need_a_token_when_read_access_is_token(guarded: Settings, store: JobStore, scan_file: str) -> None:
    job_id = finished_job(store, guarded, scan_file)
    with TestClient(create_app(guarded)) as client:
        reads = read_paths(client)
        assert len(reads) >= 8
        for path in reads:
            assert client.get(path).status_code == 401, path
        for token in (READ_TOKEN, API_TOKEN):
            headers = {"Authorization": f"Bearer {token}"}
            assert client.get(f"/api/jobs/{job_id}", headers=headers).status_code == 200
            assert client.get(f"/api/jobs/{job_id}/result", headers=headers).status_code == 200
        body = {"input": {"file": scan_file}, "schedule": SCHEDULE}
        read_only = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert client.post("/api/jobs", json=body, headers=read_only).status_code == 401
        assert client.post(f"/api/jobs/{job_id}/cancel", headers=read_only).status_code == 401
        for open_path in ("/api/health", "/metrics", "/", "/dashboard/app.js", "/openapi.json"):
            assert client.get(open_path).status_code in (200, 503), open_path


def test_reads_are_open_in_development(settings: Settings, store: JobStore, scan_file: str) -> None:
    assert settings.read_access == "open" and Settings(environment="development").read_access == "open"
    job_id = finished_job(store, settings, scan_file)
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/api/jobs/{job_id}").status_code == 200
        assert client.post("/api/jobs", json={"input": {"file": scan_file}}).status_code == 401


def test_a_dashboard_session_grants_reads_only(guarded: Settings, store: JobStore, scan_file: str) -> None:
    job_id = finished_job(store, guarded, scan_file)
    with TestClient(create_app(guarded)) as client:
        assert client.post("/api/session", headers={"Authorization": "Bearer wrong-token-xxxx"}).status_code == 401
        assert client.post("/api/session").status_code == 401
        r = client.post("/api/session", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert r.status_code == 204
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/api" in cookie
        assert READ_TOKEN not in cookie
        assert client.get(f"/api/jobs/{job_id}/events").status_code == 200  # the cookie rides along
        assert client.get(f"/api/jobs/{job_id}/result/phase.png").status_code == 200
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 401  # a session never writes
        value = client.cookies[SESSION_COOKIE]
        client.cookies.clear()
        expired = new_session(guarded, now=0)
        for forged in (value[:-1] + ("0" if value[-1] != "0" else "1"), "9999999999.abc", expired):
            client.cookies.set(SESSION_COOKIE, forged)
            assert client.get(f"/api/jobs/{job_id}").status_code == 401, forged
            client.cookies.clear()
    other = guarded.model_copy(update={"read_token": "another-read-token-99"})  # a changed token ends sessions
    with TestClient(create_app(other)) as client:
        client.cookies.set(SESSION_COOKIE, value)
        assert client.get(f"/api/jobs/{job_id}").status_code == 401


def test_the_production_token_policy() -> None:
    for weak in (
        "dev-token",
        "change-me-please",
        "replace-me-before-deploying",
        "REPLACE-ME-with-a-generated-token",
        "a" * 40,
        "0123456789abcdef" * 3,
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "my-super-secret-password-for-ptycho",
        "Ab1Ab2Ab1Ab2Ab1Ab2Ab1Ab2Ab1Ab2Ab1Ab2",
    ):
        assert token_problem(weak), weak
        with pytest.raises(ValueError, match="not fit for production"):
            Settings(environment="production", api_token=weak)
    strong = secrets.token_urlsafe(32)
    assert token_problem(strong) is None and token_problem(secrets.token_hex(16)) is None
    Settings(environment="production", api_token=strong)
    with pytest.raises(ValueError, match="PTYCHOSTREAM_READ_TOKEN"):
        Settings(environment="production", api_token=strong, read_token="read-only-0123456789")
    assert Settings(environment="production", api_token=strong).read_access == "token"


def test_stream_endpoints_follow_the_policy(client: TestClient, settings: Settings) -> None:
    def submit(stream: str, positions: str | None = None) -> tuple[int, str]:
        body = {"input": {"stream": stream, "positions": positions}, "schedule": SCHEDULE}
        r = client.post("/api/jobs", json=body, headers=AUTH)
        return r.status_code, r.json().get("detail", "")

    hosts = "(stream_hosts: 127.0.0.1, localhost)"
    for endpoint, problem in (
        ("tcp://0.0.0.0:5555", f"host 0.0.0.0 is not allowed {hosts}"),
        ("tcp://*:5555", f"host * is not allowed {hosts}"),
        ("tcp://example.org:5555", f"host example.org is not allowed {hosts}"),
        ("tcp://10.0.0.1:5555", f"host 10.0.0.1 is not allowed {hosts}"),
        ("tcp://127.0.0.1:80", "port 80 is outside the allowed range 1024-65535"),
        ("tcp://127.0.0.1:70000", "port 70000 is outside the allowed range 1024-65535"),
        ("tcp://127.0.0.1:*", "port * is outside the allowed range 1024-65535"),
    ):
        assert submit(endpoint) == (422, f"input.stream: {problem}"), endpoint
    status, detail = submit("tcp://127.0.0.1:5599", "tcp://127.0.0.1:22")
    assert status == 422 and detail.startswith("input.positions: port 22"), detail
    assert submit("tcp://localhost:5599")[0] == 201
    assert submit("tcp://127.0.0.1:5599", "tcp://127.0.0.1:5600")[0] == 201


def test_a_container_policy_allows_every_interface_on_its_ports(settings: Settings) -> None:
    policy = settings.model_copy(update={"stream_hosts": ["0.0.0.0"], "stream_port_min": 5555, "stream_port_max": 5599})
    with TestClient(create_app(policy)) as client:
        body = {"input": {"stream": "tcp://0.0.0.0:5560"}, "schedule": SCHEDULE}
        assert client.post("/api/jobs", json=body, headers=AUTH).status_code == 201
        body = {"input": {"stream": "tcp://0.0.0.0:5600"}, "schedule": SCHEDULE}
        r = client.post("/api/jobs", json=body, headers=AUTH)
        assert (
            r.status_code == 422
            and r.json()["detail"] == "input.stream: port 5600 is outside the allowed range 5555-5599"
        )


def test_hostile_inputs_are_4xx_naming_the_field(client: TestClient, settings: Settings, scan_file: str) -> None:
    def post(raw: str) -> tuple[int, str]:
        r = client.post("/api/jobs", content=raw, headers={**AUTH, "Content-Type": "application/json"})
        assert r.headers["content-type"] == "application/json", r.headers
        detail = r.json()["detail"]
        assert isinstance(detail, str)
        return r.status_code, detail

    (settings.data_root / "scans" / "loop").symlink_to(settings.data_root / "scans" / "loop")

    def job(file: str, extra: str = "") -> str:
        return json.dumps({"input": {"file": file}})[:-1] + extra + "}"

    cases = {
        job("scans/a\0b.cxi"): "input.file: contains a control character",
        job("x" * 300 + ".cxi"): "input.file: a path component is longer than 255 bytes",
        job("/".join(["y" * 200] * 30)): "input.FileInput.file: String should have at most 1024 characters",
        job("scans/loop/x.cxi"): "input.file: a symbolic link loop",
        '{"input": {"file": "scans/\\ud800.cxi"}}': "input.FileInput.file: Input should be a valid string",
        job(scan_file, ', "seed": NaN'): "body: invalid JSON: NaN is not valid JSON",
        job(scan_file, ', "seed": Infinity'): "body: invalid JSON: Infinity is not valid JSON",
        '{"input": {"stream": "tcp://127.0.0.1:5599", "preprocess": {"hot": -Infinity}}}': "-Infinity is not valid",
        job(scan_file)[:-1]: "body: invalid JSON",
        job(scan_file, ', "bogus": 1'): "bogus: Extra inputs are not permitted",
    }
    for raw, expected in cases.items():
        status, detail = post(raw)
        assert status == 422 and expected in detail, (raw[:80], status, detail)
    r = client.post(
        "/api/jobs", content=b'{"input": {"file": "\xff"}}', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "not UTF-8" in r.json()["detail"]
    assert client.get("/api/jobs?limit=0").json() == {"detail": "limit: Input should be greater than or equal to 1"}


def test_readers_see_no_server_paths(client: TestClient, settings: Settings, store: JobStore, scan_file: str) -> None:
    job_id = finished_job(store, settings, scan_file)
    roots = (str(settings.data_root.resolve()), str(settings.results_root.resolve()))
    replies = [
        client.get(f"/api/jobs/{job_id}").text,
        client.get("/api/jobs").text,
        client.get(f"/api/jobs/{job_id}/logs").text,
        client.get(f"/api/jobs/{job_id}/events").text,
    ]
    for text in replies:
        assert not any(root in text for root in roots), text
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["request"]["input"]["file"] == scan_file
    assert job["message"] == f"cancelled; wrote <results>{os.sep}{job_id}{os.sep}result.h5"
    assert client.get(f"/api/jobs/{job_id}/logs").json()["lines"][-1].endswith(f" reading {scan_file}")


def test_result_images_are_rendered_once_per_file_version(
    client: TestClient, settings: Settings, store: JobStore, scan_file: str
) -> None:
    job_id = finished_job(store, settings, scan_file)
    images = client.app.state.images  # type: ignore[attr-defined]
    first = client.get(f"/api/jobs/{job_id}/result/phase.png")
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    cached = images.size
    assert cached == len(first.content)
    assert client.get(f"/api/jobs/{job_id}/result/phase.png").content == first.content
    assert images.size == cached  # served from the cache, not rendered again
    result = Path(settings.results_root) / job_id / "result.h5"
    os.utime(result, ns=(result.stat().st_atime_ns, result.stat().st_mtime_ns + 10**9))
    assert client.get(f"/api/jobs/{job_id}/result/phase.png").status_code == 200
    assert images.size == 2 * cached  # a new version of the file is rendered anew


def test_the_openapi_documents_every_error_as_sent(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    error = schema["components"]["schemas"]["ErrorReply"]
    assert error["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    expected = {
        ("/api/jobs", "post"): {"201", "400", "401", "413", "422"},
        ("/api/jobs", "get"): {"200", "401", "422"},
        ("/api/jobs/{job_id}", "get"): {"200", "401", "404", "422"},
        ("/api/jobs/{job_id}/events", "get"): {"200", "401", "404", "422", "503"},
        ("/api/jobs/{job_id}/result", "get"): {"200", "401", "404", "409", "422"},
        ("/api/jobs/{job_id}/result/{kind}.png", "get"): {"200", "401", "404", "409", "422"},
        ("/api/jobs/{job_id}/cancel", "post"): {"200", "401", "404", "409", "422"},
        ("/api/session", "post"): {"204", "401"},
    }
    for (path, method), codes in expected.items():
        responses = schema["paths"][path][method]["responses"]
        assert set(responses) == codes, (path, method, set(responses))
        for code in codes - {"200", "201", "204"}:
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorReply"), (path, code)


def test_element_maps_of_a_result_as_images(
    client: TestClient, settings: Settings, store: JobStore, scan_file: str
) -> None:
    job_id = finished_job(store, settings, scan_file, elements=("Fe", "Zn"))
    for name in ("Fe", "Zn"):
        r = client.get(f"/api/jobs/{job_id}/result/elements/{name}.png")
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text
    r = client.get(f"/api/jobs/{job_id}/result/elements/Cu.png")
    assert r.status_code == 404 and r.json()["detail"] == "element: no map 'Cu' in the result (maps: Fe, Zn)"
    assert client.get(f"/api/jobs/{job_id}/result/elements/..%2Fx.png").status_code in (404, 422)
