"""The ``serve --demo`` scan: a virtual detector streams a simulated scan into a live job.

Torch (through the simulation and the detector) is imported inside ``run_detector`` only.
"""

from __future__ import annotations

import socket
import threading
import time

from service.jobspec import spec_for
from service.settings import Settings
from service.store import TERMINAL, JobStore
from workers.engines.options import EngineName
from workers.job import JobRequest, StageSpec, StreamInput


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit_demo_job(settings: Settings, store: JobStore, *, iterations_after_scan: int) -> str:
    """Queue a stream job listening on a free local port; returns its id."""
    job_id = JobStore.new_id()
    request = JobRequest(
        input=StreamInput(stream=f"tcp://127.0.0.1:{free_port()}", idle_timeout_s=30),
        schedule=[StageSpec(engine=EngineName.RPIE, iterations=iterations_after_scan)],
    )
    return store.create(spec=spec_for(request, settings, job_id), job_id=job_id)


def run_detector(store: JobStore, job_id: str, *, positions: int, rate_hz: float, stop: threading.Event) -> None:
    """Simulate a scan (probe 64 px), wait until the job listens, then replay it at ``rate_hz`` frames/s."""
    from workers.simulate import simulate
    from workers.stream.detector import replay

    data = simulate(probe_size=64, n_positions=positions, overlap=0.7, photons=1e6, seed=7)
    while not stop.is_set():
        job = store.get(job_id)
        if job["state"] in TERMINAL:
            return
        if job.get("listening"):
            break
        time.sleep(0.1)
    endpoint = store.spec(job_id).input
    assert isinstance(endpoint, StreamInput)
    store.log(job_id, f"virtual detector: {positions} frames at {rate_hz:g} Hz")
    replay(data, endpoint.stream, rate_hz=rate_hz, stop=stop, scan_id=job_id)


def start_demo(
    settings: Settings, *, positions: int, rate_hz: float, iterations_after_scan: int, stop: threading.Event
) -> str:
    """Submit the demo job and start its detector thread; returns the job id."""
    store = JobStore.connect(settings.redis_url, settings.key_prefix)
    job_id = submit_demo_job(settings, store, iterations_after_scan=iterations_after_scan)
    thread = threading.Thread(
        target=run_detector,
        args=(store, job_id),
        kwargs={"positions": positions, "rate_hz": rate_hz, "stop": stop},
        name="virtual-detector",
        daemon=True,
    )
    thread.start()
    return job_id
