"""``BodyGuard``: a request body is read only from a writer, and only up to ``max_body_bytes``.

Plain ASGI, not ``BaseHTTPMiddleware``: that wraps every request and costs more than the cached
status reply itself. A request that declares a body (a Content-Length above 0, or chunked) without
the API token is answered 401 before any of it is read; a declared length over the limit 413 at
once; and the bytes actually received are counted as they arrive, so a chunked (or lying) body is
cut off with 413 as soon as it passes the limit. Either reply closes the connection, so the rest
of the body is never read.
"""

from __future__ import annotations

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import Access, access, bearer
from service.deps import refuse
from service.settings import Settings

CLOSE = {"Connection": "close"}


class BodyGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def too_large(self) -> HTTPException:
        detail = f"request body larger than {self.settings.max_body_bytes} bytes or unreadable length"
        return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail, headers=CLOSE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        refusal = None
        if length is not None and (not length.isdigit() or int(length) > self.settings.max_body_bytes):
            refusal = self.too_large()
        elif (chunked or int(length or 0) > 0) and access(
            self.settings, bearer(headers.get("authorization")), None
        ) < Access.WRITE:
            refusal = refuse()
        if refusal is not None:
            reply = JSONResponse({"detail": refusal.detail}, refusal.status_code, {**(refusal.headers or {}), **CLOSE})
            await reply(scope, receive, send)
            return

        received = 0

        async def counted() -> Message:
            nonlocal received
            if received > self.settings.max_body_bytes:
                raise self.too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.settings.max_body_bytes:
                    raise self.too_large()
            return message

        await self.app(scope, counted, send)
