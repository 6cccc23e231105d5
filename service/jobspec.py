"""``spec_for``: the one place a ``JobSpec`` is built from a request (the API's and the demo's)."""

from __future__ import annotations

from service.settings import Settings
from workers.job import JobRequest, JobSpec


def spec_for(request: JobRequest, settings: Settings, job_id: str) -> JobSpec:
    """The job ``job_id`` runs ``request``, writing its result and checkpoint under ``results_root/<job_id>``,
    with the settings' preview and save intervals. File paths are taken as given (the API resolves them first)."""
    out = settings.results_root.resolve() / job_id
    return JobSpec(
        **dict(request),
        output=str(out / "result.h5"),
        checkpoint=str(out / "checkpoint.npz"),
        preview_interval_s=settings.preview_interval_s,
        save_interval_s=settings.save_interval_s,
    )
