"""A queue worker: claims queued jobs from the store and runs each as a ``reconstruct`` flow run."""

from __future__ import annotations

import logging
import socket
import threading

from flows.heartbeat import Heartbeat, beating
from flows.reconstruct import reconstruct
from service.flow_api import TERMINAL, JobState, JobStore, Settings, TransitionError, supervise

log = logging.getLogger(__name__)

MESSAGE_CHARS = 600  # a job's failure message is one line of at most this many characters


def worker_name() -> str:
    return f"{socket.gethostname()}-{threading.get_native_id()}"


def offered_devices() -> str:
    """The devices this worker runs jobs on, comma-separated: ``cpu`` and, with CUDA, ``cuda,cuda:0,...``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ",".join(["cpu", *(["cuda"] if count else []), *(f"cuda:{i}" for i in range(count))])


def serve_queue(settings: Settings, *, stop: threading.Event, name: str | None = None) -> None:
    """Run queued jobs one after another until ``stop`` is set (checked at least every second).

    The loop is supervised (``service.supervise``): a store outage pauses it with backoff, never ends it. A job's
    heartbeat beats from its claim to the end of its flow run; when ``stop`` is set (the worker shuts down) it
    asks the job to stop: it ends cancelled, its partial result kept. A flow run that fails before its own error
    handling records anything (Prefect's API unreachable, say) fails the job with that cause."""
    from workers.devices import resolve_device

    store = JobStore.connect(settings.redis_url, settings.key_prefix)
    name = name or worker_name()
    info = {"device": str(resolve_device("auto")), "devices": offered_devices()}

    def step() -> None:
        store.announce(name, {**info, "job": ""}, ttl_s=settings.lease_s)
        job_id = store.claim(worker=name, lease_s=settings.lease_s, timeout_s=1, devices=info["devices"].split(","))
        if job_id is None:
            return
        store.announce(name, {**info, "job": job_id}, ttl_s=settings.lease_s)
        beat = Heartbeat(store, job_id, settings, worker=name, info=info, stop=stop)
        with beating(beat):
            try:
                reconstruct(job_id=job_id)
            except Exception as exc:  # the worker goes on
                if fail_unfinished(store, job_id, exc):
                    log.exception("job %s: its flow run failed before recording the job's end", job_id)
                else:  # the flow recorded it, and Prefect logged the traceback
                    log.error("job %s failed: %s: %s", job_id, type(exc).__name__, exc)

    supervise(f"worker {name}", step, stop=stop)


def fail_unfinished(store: JobStore, job_id: str, exc: Exception) -> bool:
    """Fail job ``job_id`` with ``exc`` as its message unless it has already ended (the flow records its own
    failures), so the job says why instead of waiting for its lease to expire as 'worker lost'. Returns whether
    it did."""
    if JobState(store.get(job_id)["state"]) in TERMINAL:
        return False
    message = " ".join(f"the flow run failed: {type(exc).__name__}: {exc}".split())
    try:
        store.transition(job_id, to=JobState.FAILED, message=message[:MESSAGE_CHARS])
    except TransitionError:
        return False
    return True


def flush_prefect(timeout_s: float = 10.0) -> None:
    """Send Prefect's queued events and logs now (before its server stops): at exit it would try a stopped
    server again and again."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout_s)
