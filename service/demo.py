"""The ``serve --demo`` scan: a virtual detector streams a simulated scan into a live job.

The same scan is written to ``demo.cxi`` under the data root (unless a file of that name is there), so the
README's REST example (``{"input": {"file": "demo.cxi"}}``) works as soon as the demo runs.

Torch (through the simulation and the detector) is imported inside ``run_detector`` only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import NamedTuple

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


DEMO_FILE = "demo.cxi"


def run_detector(
    store: JobStore, job_id: str, *, positions: int, rate_hz: float, stop: threading.Event, data_root: Path
) -> None:
    """Simulate a scan (probe 64 px), write it under ``data_root`` (``DEMO_FILE``), wait until the job listens,
    then replay it at ``rate_hz`` frames/s."""
    from workers.io import write_cxi
    from workers.simulate import simulate
    from workers.stream.detector import replay

    data = simulate(probe_size=64, n_positions=positions, overlap=0.7, photons=1e6, seed=7)
    if stop.is_set():
        return
    target = data_root / DEMO_FILE
    if not target.exists():
        data_root.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{DEMO_FILE}.{os.getpid()}.part")
        write_cxi(partial, data, data.truth)
        partial.replace(target)
        store.log(job_id, f"the demo scan is also in the data root as {DEMO_FILE} (for file jobs)")
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


class Demo(NamedTuple):
    """The demo's job and the thread of its virtual detector (stopped by the event given to ``start_demo``)."""

    job_id: str
    detector: threading.Thread


def start_demo(
    settings: Settings, *, positions: int, rate_hz: float, iterations_after_scan: int, stop: threading.Event
) -> Demo:
    """Submit the demo job and start its detector thread. Join the thread after setting ``stop`` before the
    process exits: it may be inside torch (the simulation), which aborts the process if finalised under it."""
    store = JobStore.connect(settings.redis_url, settings.key_prefix)
    job_id = submit_demo_job(settings, store, iterations_after_scan=iterations_after_scan)
    thread = threading.Thread(
        target=run_detector,
        args=(store, job_id),
        kwargs={"positions": positions, "rate_hz": rate_hz, "stop": stop, "data_root": settings.data_root},
        name="virtual-detector",
        daemon=True,
    )
    thread.start()
    return Demo(job_id, thread)
