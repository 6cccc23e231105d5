"""The FastAPI app factory: routers, error bodies, body-size limit, the lease reaper. Never imports torch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio
from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from service.cache import TTLCache
from service.routes import dashboard, health, jobs
from service.settings import Settings
from service.store import JobNotFound, JobStore, TransitionError


async def reap_forever(store: JobStore, interval_s: float) -> None:
    """Fail running jobs whose worker stopped renewing its lease."""
    while True:
        await asyncio.to_thread(store.reap)
        await asyncio.sleep(interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API with its dashboard; ``settings`` default to the environment (read here, not at import)."""
    settings = settings or Settings()
    store = JobStore.connect(settings.redis_url, settings.key_prefix)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.aredis = redis.asyncio.Redis.from_url(settings.redis_url)
        reaper = asyncio.create_task(reap_forever(store, settings.reaper_interval_s))
        yield
        reaper.cancel()
        await app.state.aredis.aclose()

    app = FastAPI(
        title="PtychoStream",
        version="0.1.0",
        description="Streaming ptychography reconstruction: jobs, live progress, previews, results.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.store = settings, store
    app.state.replies = TTLCache[bytes | None](settings.reply_cache_s)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.mount("/dashboard", StaticFiles(directory=dashboard.DASHBOARD), name="dashboard")

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > settings.max_body_bytes:
            return JSONResponse(
                {"detail": f"request body larger than {settings.max_body_bytes} bytes or unreadable length"},
                status.HTTP_413_CONTENT_TOO_LARGE,
            )
        return await call_next(request)

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": f"no job {exc.args[0]}"}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(TransitionError)
    async def conflict(request: Request, exc: TransitionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

    return app
