"""The FastAPI app factory: routers, error bodies, body-size limit, the lease reaper. Never imports torch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from service.cache import TTLCache
from service.routes import dashboard, health, jobs
from service.settings import Settings
from service.store import JobNotFound, JobStore, TransitionError
from service.supervise import reap_forever


class BodyLimit:
    """Refuse (413, JSON) a request whose Content-Length is unreadable or above ``max_bytes``.

    Plain ASGI, not ``BaseHTTPMiddleware``: that wraps every request and costs more than the
    cached status reply itself."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.max_bytes:
                detail = f"request body larger than {self.max_bytes} bytes or unreadable length"
                await JSONResponse({"detail": detail}, status.HTTP_413_CONTENT_TOO_LARGE)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API with its dashboard; ``settings`` default to the environment (read here, not at import)."""
    settings = settings or Settings()
    store = JobStore.connect(settings.redis_url, settings.key_prefix)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.aredis = redis.asyncio.Redis.from_url(settings.redis_url)
        reaper = asyncio.create_task(
            reap_forever(store, interval_s=settings.reaper_interval_s, lease_s=settings.lease_s)
        )
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

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": f"no job {exc.args[0]}"}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(TransitionError)
    async def conflict(request: Request, exc: TransitionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

    return app
