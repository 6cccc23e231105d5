"""Health and Prometheus metrics (store reachable, jobs by state, queue depth, rates, workers, loops).

Health fails (503, ``degraded``) whenever the service cannot run jobs: the store is unreachable, no worker is
alive, or a supervised loop of this process is failing; Docker's HEALTHCHECK and Kubernetes probes read it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import redis
from fastapi import APIRouter, Response, status
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.deps import RepliesDep, StoreDep
from service.schemas import Health, LoopPublic, WorkerPublic
from service.store import JobState, JobStore
from service.supervise import LOOPS

router = APIRouter(tags=["health"])


class StoreCollector(Collector):
    """Reads the store at every scrape, so any API process reports the same numbers; a scrape during a store
    outage reports ``ptychostream_store_up 0`` and this process's loops."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("ptychostream_loop_healthy", "1 if the loop's last step worked", labels=["loop"])
        failures = CounterMetricFamily("ptychostream_loop_failures", "Failed steps of the loop", labels=["loop"])
        for loop in LOOPS.all():
            healthy.add_metric([loop.name], float(loop.healthy))
            failures.add_metric([loop.name], loop.total_failures)
        yield healthy
        yield failures
        try:
            metrics = list(self._store_metrics())
        except redis.RedisError:
            yield GaugeMetricFamily("ptychostream_store_up", "1 if the job store answers", value=0)
            return
        yield GaugeMetricFamily("ptychostream_store_up", "1 if the job store answers", value=1)
        yield from metrics

    def _store_metrics(self) -> Iterator[Metric]:
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


def check_health(store: JobStore) -> Health:
    """The service's health now: the store, the live workers and this process's supervised loops."""
    loops = [LoopPublic(healthy=h.healthy, **vars(h)) for h in LOOPS.all()]
    problems = [f"loop {h.name} failing ({h.failures} in a row): {h.last_error}" for h in loops if not h.healthy]
    try:
        workers = [WorkerPublic.model_validate(w) for w in store.workers()]
        depth, reachable = store.queue_depth(), True
    except redis.RedisError as exc:
        workers, depth, reachable = [], 0, False
        problems.insert(0, f"job store unreachable: {type(exc).__name__}: {exc}")
    if reachable and not workers:
        problems.append("no live worker: queued jobs will not run")
    return Health(
        status="degraded" if problems else "ok",
        redis=reachable,
        queue_depth=depth,
        workers=workers,
        loops=loops,
        problems=problems,
    )


@router.get("/api/health", response_model=Health, responses={503: {"model": Health, "description": "Degraded"}})
async def health(store: StoreDep, replies: RepliesDep) -> Response:
    """200 when jobs can run; 503 (same body) while the store is unreachable, no worker is alive or a loop fails."""
    body = await asyncio.to_thread(replies.get, ("health",), lambda: check_health(store).model_dump_json().encode())
    ok = body is not None and body.startswith(b'{"status":"ok"')  # ``status`` is the model's first field
    code = status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE
    return Response(body, status_code=code, media_type="application/json")


@router.get("/api/health/live", responses={200: {"content": {"text/plain": {}}}})
async def live() -> Response:
    """Liveness (for an orchestrator's restart decision): 200 while this process answers. Restarting the API
    cannot bring back a store or a worker, so their absence does not fail this probe."""
    return Response("alive", media_type="text/plain")


@router.get("/api/health/ready", responses={200: {"content": {"text/plain": {}}}, 503: {"content": {"text/plain": {}}}})
async def ready(store: StoreDep) -> Response:
    """Readiness (whether to route requests here): 200 when the job store answers, else 503."""
    try:
        await asyncio.to_thread(store.r.ping)
    except redis.RedisError as exc:
        return Response(f"job store unreachable: {type(exc).__name__}", status_code=503, media_type="text/plain")
    return Response("ready", media_type="text/plain")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(store: StoreDep) -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(registry_for(store)), media_type="text/plain; version=0.0.4")
