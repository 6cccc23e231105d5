"""One Redis subscription per API process, fanned out to its event streams (SSE) through per-stream queues.

A stream costs a queue, not a Redis connection: the number of open streams is bounded by the
``max_event_streams`` setting only. The hub's reader is a supervised loop (``service.supervise``): it
reconnects after a Redis error with backoff and shows in health and metrics; while it is down, streams
fall back to polling the job's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import redis.asyncio

from service.supervise import LOOPS, Backoff

CLIENT_NAME = "ptychostream-events"
QUEUE_EVENTS = 256
"""Events a slow stream may fall behind by; past that its oldest are dropped (a newer progress supersedes them)."""


class StreamsFull(RuntimeError):
    """The process has ``max_event_streams`` streams open."""


class Subscription:
    """The events of one job for one stream; ``close`` (idempotent) gives its place back."""

    def __init__(self, hub: EventHub, job_id: str) -> None:
        self.hub, self.job_id = hub, job_id
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_EVENTS)

    def put(self, data: bytes) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(data)

    def close(self) -> None:
        self.hub.remove(self)


class EventHub:
    """Subscribes to every job's events channel (``{prefix}job:*:events``) and hands each to its job's streams."""

    def __init__(self, url: str, prefix: str, max_streams: int) -> None:
        self.url, self.prefix, self.max_streams = url, prefix, max_streams
        self.pattern = re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "job:*:events"
        self.connected = asyncio.Event()
        self._streams: dict[str, set[Subscription]] = {}
        self._open = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def open(self) -> int:
        return self._open

    def subscribe(self, job_id: str) -> Subscription:
        """A new stream's queue for ``job_id``; ``StreamsFull`` past ``max_streams``."""
        if self._open >= self.max_streams:
            raise StreamsFull(f"{self._open} event streams open (max_event_streams)")
        sub = Subscription(self, job_id)
        self._streams.setdefault(job_id, set()).add(sub)
        self._open += 1
        return sub

    def remove(self, sub: Subscription) -> None:
        subs = self._streams.get(sub.job_id)
        if subs is not None and sub in subs:
            subs.remove(sub)
            self._open -= 1
            if not subs:
                del self._streams[sub.job_id]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        """Listen until cancelled; a failure (Redis away, a dropped connection) is reported as the supervised
        loop ``event-hub`` (health, metrics) and retried with backoff."""
        health, backoff = LOOPS.register("event-hub"), Backoff()
        try:
            while True:
                client = redis.asyncio.Redis.from_url(self.url, client_name=CLIENT_NAME)
                try:
                    pubsub = client.pubsub()
                    await pubsub.psubscribe(self.pattern)
                    self.connected.set()
                    health.succeeded()
                    async for message in pubsub.listen():
                        if message["type"] == "pmessage":
                            self._dispatch(message["channel"].decode(), message["data"])
                except Exception as exc:
                    health.failed(exc)
                finally:
                    self.connected.clear()
                    await client.aclose()
                await asyncio.sleep(backoff.pause(health.failures))
        finally:
            LOOPS.forget(health)

    def _dispatch(self, channel: str, data: bytes) -> None:
        job_id = channel[len(self.prefix) + len("job:") : -len(":events")]
        for sub in self._streams.get(job_id, ()):
            sub.put(data)
