"""The FastAPI app factory: routers, error bodies, the body guard, the event hub, the lease reaper.
Never imports torch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.cache import BytesCache, TTLCache
from service.errors import validation_error
from service.events import EventHub
from service.guard import BodyGuard
from service.redact import Redactor
from service.routes import dashboard, files, health, jobs, session, view
from service.settings import Settings
from service.store import JobNotFound, JobStore, TransitionError
from service.supervise import reap_forever


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API with its dashboard; ``settings`` default to the environment (read here, not at import)."""
    settings = settings or Settings()
    store = JobStore.connect(settings.redis_url, settings.key_prefix)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.hub.start()
        reaper = asyncio.create_task(
            reap_forever(store, interval_s=settings.reaper_interval_s, lease_s=settings.lease_s)
        )
        yield
        reaper.cancel()
        await app.state.hub.stop()

    app = FastAPI(
        title="PtychoStream",
        version="0.1.0",
        description="Streaming ptychography reconstruction: jobs, live progress, previews, results.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.store = settings, store
    app.state.replies = TTLCache[bytes | None](settings.reply_cache_s)
    app.state.images = BytesCache(settings.result_image_cache_bytes)
    app.state.hub = EventHub(settings.redis_url, settings.key_prefix, settings.max_event_streams)
    app.state.redactor = Redactor(settings.data_root, settings.results_root)
    app.include_router(jobs.router)
    app.include_router(view.router)
    app.include_router(files.router)
    app.include_router(session.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.mount("/dashboard", dashboard.files(), name="dashboard")

    app.add_middleware(BodyGuard, settings=settings)
    app.add_exception_handler(RequestValidationError, validation_error)
    if settings.read_access == "open":
        app.openapi = lambda: reads_open(FastAPI.openapi(app))  # type: ignore[method-assign]

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": f"no job {exc.args[0]}"}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(TransitionError)
    async def conflict(request: Request, exc: TransitionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

    return app


def reads_open(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI of an app whose reads are open: a read's security becomes optional (``{}``)."""
    for operations in schema["paths"].values():
        read = operations.get("get", {})
        if "security" in read and {} not in read["security"]:
            read["security"].append({})
    return schema
