"""Supervised background loops: every loop of the service survives a failed step and says how it is doing.

A loop (the API's lease reaper, a worker's queue loop) is a ``step`` called again and again. A step that raises
is logged (the first failure of a run of failures with its traceback, the rest in one line), the loop waits an
exponentially growing pause (``Backoff``) and tries again; the first step that works again is logged as a
recovery. Each loop's ``LoopHealth`` is kept in this process's ``LOOPS``, which health and metrics report.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis

from service.store import JobStore

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class LoopHealth:
    """How one loop is doing: its last good step, its current run of failures, all failures so far."""

    name: str
    started: float = field(default_factory=time.time)
    last_ok: float | None = None
    failures: int = 0
    total_failures: int = 0
    last_error: str = ""

    @property
    def healthy(self) -> bool:
        return self.failures == 0

    def succeeded(self) -> None:
        if self.failures:
            log.warning("%s: recovered after %d failed steps", self.name, self.failures)
        self.failures, self.last_ok = 0, time.time()

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.total_failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failures == 1:
            log.exception("%s: a step failed; retrying with backoff", self.name)
        else:
            log.warning("%s: still failing (%d in a row): %s", self.name, self.failures, self.last_error)


class Loops:
    """This process's supervised loops, by name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: dict[str, LoopHealth] = {}

    def register(self, name: str) -> LoopHealth:
        with self._lock:
            health = self._loops[name] = LoopHealth(name)
        return health

    def forget(self, health: LoopHealth) -> None:
        with self._lock:
            if self._loops.get(health.name) is health:
                del self._loops[health.name]

    def all(self) -> list[LoopHealth]:
        with self._lock:
            return sorted(self._loops.values(), key=lambda h: h.name)


LOOPS = Loops()


@dataclass
class Backoff:
    """Pauses after consecutive failures: ``base_s``, doubling, at most ``cap_s``."""

    base_s: float = 0.25
    cap_s: float = 5.0

    def pause(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** max(failures - 1, 0))


def supervise(
    name: str,
    step: Callable[[], None],
    *,
    stop: threading.Event,
    interval_s: float = 0.0,
    backoff: Backoff | None = None,
) -> None:
    """Call ``step`` every ``interval_s`` until ``stop`` is set, surviving (and reporting) failed steps."""
    backoff = backoff or Backoff()
    health = LOOPS.register(name)
    try:
        while not stop.is_set():
            try:
                step()
            except Exception as exc:
                health.failed(exc)
                stop.wait(backoff.pause(health.failures))
                continue
            health.succeeded()
            if interval_s > 0:
                stop.wait(interval_s)
    finally:
        LOOPS.forget(health)


async def supervise_async(
    name: str, step: Callable[[], None], *, interval_s: float, backoff: Backoff | None = None
) -> None:
    """``supervise`` for an asyncio task: ``step`` (blocking) runs in a thread; ends when the task is cancelled."""
    backoff = backoff or Backoff()
    health = LOOPS.register(name)
    try:
        while True:
            try:
                await asyncio.to_thread(step)
            except Exception as exc:
                health.failed(exc)
                await asyncio.sleep(backoff.pause(health.failures))
                continue
            health.succeeded()
            await asyncio.sleep(interval_s)
    finally:
        LOOPS.forget(health)


def persist(call: Callable[[], T], *, what: str, patience_s: float, backoff: Backoff | None = None) -> T:
    """``call()``, tried again with backoff while the store is unreachable, for up to ``patience_s``; other
    errors (and a store error that outlasts the patience) propagate."""
    backoff = backoff or Backoff()
    deadline, failures = time.monotonic() + patience_s, 0
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            failures += 1
            pause = backoff.pause(failures)
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: the store failed (%s); trying again in %.2f s", what, exc, pause)
            time.sleep(pause)


class Reaper:
    """The lease reaper's step: fail running jobs whose worker stopped renewing its lease.

    It reaps only after the store has answered without a break for one lease time: after an outage (or at the
    API's start) a live worker gets that long to renew a lease that expired while the store was away."""

    def __init__(self, store: JobStore, lease_s: float) -> None:
        self.store, self.lease_s = store, lease_s
        self._reachable_since: float | None = None

    def __call__(self) -> None:
        try:
            self.store.r.ping()
            now = time.monotonic()
            if self._reachable_since is None:
                self._reachable_since = now
            if now - self._reachable_since >= self.lease_s:
                self.store.reap()
        except Exception:
            self._reachable_since = None
            raise


async def reap_forever(store: JobStore, *, interval_s: float, lease_s: float) -> None:
    """The API's supervised lease reaper (an asyncio task for the app's lifetime)."""
    await supervise_async("reaper", Reaper(store, lease_s), interval_s=interval_s)
