"""Health and Prometheus metrics (jobs by state, queue depth, frames/s, iteration rate, live workers)."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.deps import RepliesDep, StoreDep
from service.schemas import Health, WorkerPublic
from service.store import JobState, JobStore

router = APIRouter(tags=["health"])


class StoreCollector(Collector):
    """Reads the store at every scrape, so any API process reports the same numbers."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("ptychostream_jobs", "Jobs by state", labels=["state"])
        for state, n in self.store.counts().items():
            jobs.add_metric([state.value], n)
        yield jobs
        yield GaugeMetricFamily("ptychostream_queue_depth", "Queued jobs", value=self.store.queue_depth())
        yield GaugeMetricFamily("ptychostream_workers", "Live workers", value=len(self.store.workers()))
        frames, iterations = 0.0, 0.0
        for raw in self.store.get_many(self.store.ids(state=JobState.RUNNING)):
            frames += float(raw.get("frames_rate", 0) or 0)
            iterations += float(raw.get("iteration_rate", 0) or 0)
        yield GaugeMetricFamily("ptychostream_frames_per_second", "Frames/s received by running jobs", value=frames)
        yield GaugeMetricFamily("ptychostream_iterations_per_second", "Iterations/s of running jobs", value=iterations)


def registry_for(store: JobStore) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


@router.get("/api/health", response_model=Health)
async def health(store: StoreDep, replies: RepliesDep) -> Response:
    """Redis reachable, queue depth, live workers and their devices."""

    def compute() -> bytes:
        try:
            workers = [WorkerPublic.model_validate(w) for w in store.workers()]
            reply = Health(status="ok", redis=True, queue_depth=store.queue_depth(), workers=workers)
        except redis.RedisError:
            reply = Health(status="degraded", redis=False, queue_depth=0, workers=[])
        return reply.model_dump_json().encode()

    return Response(replies.get(("health",), compute), media_type="application/json")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(store: StoreDep) -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(registry_for(store)), media_type="text/plain; version=0.0.4")
