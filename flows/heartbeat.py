"""A job's one heartbeat: the thread that keeps its lease while it runs.

Whoever claims the job beats: a queue worker from its claim until the flow run ends (``beating``, which also lets
the flow run in that thread find it), or a Prefect deployment run for itself (``job_heartbeat``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar

from service.flow_api import TERMINAL, JobState, JobStore, Settings, TransitionError

log = logging.getLogger(__name__)

_BEATING: ContextVar[Heartbeat | None] = ContextVar("ptychostream_heartbeat", default=None)


class Heartbeat:
    """Every ``settings.heartbeat_s``: renew the job's lease (and announce the worker with ``info``, its devices,
    when given), ask the job to stop once ``stop`` is set, set ``cancel`` when the store says cancel, then call
    the listeners. The lease is released when the heartbeat ends."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        settings: Settings,
        *,
        worker: str,
        info: Mapping[str, str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.store, self.job_id, self.settings, self.worker = store, job_id, settings, worker
        self.info, self.stop = info, stop
        self.cancel = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._asked = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def listen(self, beat: Callable[[], None]) -> None:
        """Call ``beat`` on every heartbeat from now on (in the heartbeat's thread)."""
        self._listeners.append(beat)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.store.release(self.job_id)

    def _run(self) -> None:
        """Beat until the job ends; a failed beat (a Redis blip, a listener's error) is logged and the next one
        tried, so that one error never leaves the lease to expire under a running job."""
        while not self._done.wait(self.settings.heartbeat_s):
            for step in (self._renew, self._check_cancel, *self._listeners):
                try:
                    step()
                except Exception:
                    log.exception("heartbeat of job %s: a beat failed; trying again at the next", self.job_id)

    def _check_cancel(self) -> None:
        """Stop the job when cancelling was requested, or when it has ended meanwhile (the lease reaper failed it
        while this worker could not reach the store)."""
        if self.store.cancel_requested(self.job_id) or JobState(self.store.get(self.job_id)["state"]) in TERMINAL:
            self.cancel.set()

    def _renew(self) -> None:
        lease_s = self.settings.lease_s
        self.store.renew(self.job_id, worker=self.worker, lease_s=lease_s)
        if self.info is not None:
            self.store.announce(self.worker, {**self.info, "job": self.job_id}, ttl_s=lease_s)
        if self.stop is not None and self.stop.is_set() and not self._asked:
            self._asked = True
            self.store.log(self.job_id, f"worker {self.worker} shutting down: stopping the job")
            with contextlib.suppress(TransitionError):
                self.store.request_cancel(self.job_id)


@contextlib.contextmanager
def beating(beat: Heartbeat) -> Iterator[Heartbeat]:
    """Run ``beat`` for the block; a flow run started in the block (in this thread) uses it as its heartbeat."""
    token = _BEATING.set(beat)
    try:
        with beat:
            yield beat
    finally:
        _BEATING.reset(token)


@contextlib.contextmanager
def job_heartbeat(job_id: str) -> Iterator[Heartbeat]:
    """Job ``job_id``'s heartbeat: the queue worker's that claimed it, or else (a deployment run) one started here,
    with the settings read once from the environment."""
    beat = _BEATING.get()
    if beat is not None and beat.job_id == job_id:
        yield beat
        return
    settings = Settings()
    store = JobStore.connect(settings.redis_url, settings.key_prefix)
    with beating(Heartbeat(store, job_id, settings, worker=f"flow-{uuid.uuid4().hex[:8]}")) as beat:
        yield beat
