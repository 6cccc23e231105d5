"""A queue worker: claims queued jobs from the store and runs each as a ``reconstruct`` flow run."""

from __future__ import annotations

import logging
import socket
import threading

from flows.heartbeat import Heartbeat, beating
from flows.reconstruct import reconstruct
from service.flow_api import JobStore, Settings, supervise

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}-{threading.get_native_id()}"


def serve_queue(settings: Settings, *, stop: threading.Event, name: str | None = None) -> None:
    """Run queued jobs one after another until ``stop`` is set (checked at least every second).

    The loop is supervised (``service.supervise``): a store outage pauses it with backoff, never ends it. A job's
    heartbeat beats from its claim to the end of its flow run; when ``stop`` is set (the worker shuts down) it
    asks the job to stop: it ends cancelled, its partial result kept."""
    from workers.devices import resolve_device

    store = JobStore.connect(settings.redis_url, settings.key_prefix)
    name = name or worker_name()
    device = str(resolve_device("auto"))

    def step() -> None:
        store.announce(name, {"device": device, "job": ""}, ttl_s=settings.lease_s)
        job_id = store.claim(worker=name, lease_s=settings.lease_s, timeout_s=1)
        if job_id is None:
            return
        store.announce(name, {"device": device, "job": job_id}, ttl_s=settings.lease_s)
        beat = Heartbeat(store, job_id, settings, worker=name, device=device, stop=stop)
        try:
            with beating(beat):
                reconstruct(job_id=job_id)
        except Exception:  # recorded as failed by the flow and by Prefect; the worker goes on
            log.exception("job %s failed", job_id)

    supervise(f"worker {name}", step, stop=stop)
