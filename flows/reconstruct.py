"""The ``reconstruct`` flow: validate the input, run the worker's engine schedule, write the result, record the state.

The flow takes only the job id; its settings come with the job's heartbeat (``flows.heartbeat.job_heartbeat``).
A failure is an exception: the job is recorded failed and the exception propagates, so Prefect records it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.heartbeat import Heartbeat, job_heartbeat
from flows.reporter import JobReporter
from service.flow_api import JobState, JobStore, persist
from workers.concurrency import share_cores
from workers.errors import StoppedBeforeFrames
from workers.job import FileInput, JobSpec


class InputError(ValueError):
    """The job's input cannot be read."""


@task(cache_policy=NO_CACHE)
def claim(store: JobStore, job_id: str, worker: str, lease_s: float) -> None:
    """Claim the job if still queued (a deployment run); refuse (TransitionError) one that another worker runs
    or that has ended, leaving its state alone."""
    store.take(job_id, worker=worker, lease_s=lease_s)


@task(cache_policy=NO_CACHE)
def validate_input(store: JobStore, job_id: str) -> JobSpec:
    """The stored spec, with a file input that exists and an output folder."""
    spec = store.spec(job_id)
    if isinstance(spec.input, FileInput) and not Path(spec.input.file).is_file():
        raise InputError(f"input file not found: {spec.input.file}")
    Path(spec.output).parent.mkdir(parents=True, exist_ok=True)
    return spec


@task(cache_policy=NO_CACHE)
def reconstruct_job(beat: Heartbeat, spec: JobSpec) -> dict[str, Any]:
    """Run the engine schedule on the worker's device; the result file is written at the end (also when stopped).
    A live scan stopped before its first frame is no failure: ``no_result`` says so (there is no result file)."""
    try:
        return JobReporter(beat).run(spec)
    except StoppedBeforeFrames as exc:
        return {"stopped": True, "no_result": str(exc)}


RECORD_PATIENCE_S = 300.0  # how long a finished job's worker keeps trying to record it while the store is away


@task(cache_policy=NO_CACHE)
def record(store: JobStore, job_id: str, state: JobState, message: str) -> None:
    """Move the job to its final state (idempotent: a job already there is left alone), trying again while the
    store is unreachable (the heartbeat keeps the lease meanwhile, once the store is back)."""

    def once() -> None:
        if store.get(job_id)["state"] != state.value:
            store.transition(job_id, to=state, message=message)

    persist(once, what=f"job {job_id}: record {state.value}", patience_s=RECORD_PATIENCE_S)


@flow(flow_run_name="recon-{job_id}", log_prints=True)
def reconstruct(job_id: str) -> str:
    """Reconstruct job ``job_id`` (queued, or claimed by a queue worker); returns its final state."""
    share_cores()
    with job_heartbeat(job_id) as beat:
        store = beat.store
        claim(store, job_id, beat.worker, beat.settings.lease_s)
        try:
            spec = validate_input(store, job_id)
            attrs = reconstruct_job(beat, spec)
        except Exception as exc:
            record(store, job_id, JobState.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        if "no_result" in attrs:
            record(store, job_id, JobState.CANCELLED, f"{attrs['no_result']}; no result")
            return JobState.CANCELLED.value
        stopped = bool(attrs.get("stopped"))
        state = JobState.CANCELLED if stopped else JobState.SUCCEEDED
        summary = f"{attrs.get('iterations', 0)} iterations, {attrs.get('frames_used', 0)} frames; result {spec.output}"
        record(store, job_id, state, ("stopped on request; partial result " if stopped else "") + summary)
    return state.value
