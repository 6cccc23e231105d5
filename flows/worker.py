"""A queue worker: claims queued jobs from the store and runs each as a ``reconstruct`` flow run."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator

from flows.reconstruct import reconstruct
from service.settings import Settings
from service.store import JobStore, TransitionError

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}-{threading.get_native_id()}"


@contextlib.contextmanager
def keep_lease(
    store: JobStore, job_id: str, *, worker: str, device: str, settings: Settings, stop: threading.Event
) -> Iterator[None]:
    """Renew the job's lease (and the worker's presence) every heartbeat while the block runs; when
    ``stop`` is set (the worker shuts down), ask the job to stop: it ends cancelled, its partial result kept."""
    done = threading.Event()

    def beat() -> None:
        asked = False
        while not done.wait(settings.heartbeat_s):
            store.renew(job_id, worker=worker, lease_s=settings.lease_s)
            store.announce(worker, {"device": device, "job": job_id}, ttl_s=settings.lease_s)
            if stop.is_set() and not asked:
                asked = True
                store.log(job_id, f"worker {worker} shutting down: stopping the job")
                with contextlib.suppress(TransitionError):
                    store.request_cancel(job_id)

    thread = threading.Thread(target=beat, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def serve_queue(settings: Settings, *, stop: threading.Event, name: str | None = None) -> None:
    """Run queued jobs one after another until ``stop`` is set (checked at least every second)."""
    from workers.devices import resolve_device

    store = JobStore.connect(settings.redis_url, settings.key_prefix)
    name = name or worker_name()
    device = str(resolve_device("auto"))
    while not stop.is_set():
        store.announce(name, {"device": device, "job": ""}, ttl_s=settings.lease_s)
        job_id = store.claim(worker=name, lease_s=settings.lease_s, timeout_s=1)
        if job_id is None:
            continue
        store.announce(name, {"device": device, "job": job_id}, ttl_s=settings.lease_s)
        try:
            with keep_lease(store, job_id, worker=name, device=device, settings=settings, stop=stop):
                reconstruct(
                    job_id=job_id,
                    redis_url=settings.redis_url,
                    key_prefix=settings.key_prefix,
                    worker=name,
                    heartbeat_s=settings.heartbeat_s,
                    lease_s=settings.lease_s,
                )
        except Exception:  # recorded as failed by the flow and by Prefect; the worker goes on
            log.exception("job %s failed", job_id)
