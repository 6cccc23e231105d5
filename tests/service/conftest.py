"""Service fixtures: the real Redis on this machine (DB 9, a fresh key prefix per test), a real Prefect harness."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.cli.children import stop
from service.redis_local import ensure_redis
from service.settings import Settings
from service.store import JobStore

REDIS_URL = "redis://127.0.0.1:6379/9"
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    process = ensure_redis(REDIS_URL, start=True)
    yield REDIS_URL
    if process is not None:
        stop(process)


@pytest.fixture
def settings(tmp_path: Path, redis_server: str) -> Iterator[Settings]:
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    (tmp_path / "data").mkdir()
    yield Settings(
        redis_url=redis_server,
        key_prefix=prefix,
        api_token=TOKEN,
        data_root=tmp_path / "data",
        results_root=tmp_path / "results",
        heartbeat_s=0.25,
        lease_s=2.0,
        reaper_interval_s=0.25,
        preview_interval_s=0.2,
        save_interval_s=0.2,
    )
    client = redis.Redis.from_url(redis_server)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.connect(settings.redis_url, settings.key_prefix)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def worker(settings: Settings, prefect: None) -> Iterator[None]:
    """An in-process queue worker (the one ``serve`` runs) for the test's settings."""
    from flows.worker import serve_queue

    stop = threading.Event()
    thread = threading.Thread(target=serve_queue, args=(settings,), kwargs={"stop": stop, "name": "test-worker"})
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


@pytest.fixture
def scan_file(settings: Settings) -> str:
    """A tiny simulated scan under the data root; returns its path relative to the root."""
    from workers.io import write_cxi
    from workers.simulate import simulate

    data = simulate(probe_size=32, n_positions=36, overlap=0.75, photons=1e6, seed=3)
    (settings.data_root / "scans").mkdir()
    write_cxi(settings.data_root / "scans" / "tiny.cxi", data, data.truth)
    return "scans/tiny.cxi"


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], tuple[str, FastAPI]]]:
    """Start the API on a real uvicorn server (a thread of this process) for what needs real sockets:
    ``serve(settings)`` returns its URL and the app; every server stops at teardown."""
    import uvicorn

    from service.demo import free_port

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings) -> tuple[str, FastAPI]:
        app = create_app(settings)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        servers.append((server, thread))
        wait_for(lambda: server.started, 30, "uvicorn to start")
        return f"http://127.0.0.1:{port}", app

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)
