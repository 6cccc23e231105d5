"""FastAPI dependencies as named types: settings, store, caches, event hub, redactor, and the access checks.

All are ``async``: they only read ``app.state``, and a sync dependency would cost a thread hop per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from service.auth import SESSION_COOKIE, Access, access
from service.cache import BytesCache, TTLCache
from service.events import EventHub
from service.redact import Redactor
from service.settings import Settings
from service.store import JobStore

_bearer = HTTPBearer(
    auto_error=False, description="PTYCHOSTREAM_API_TOKEN (reads and writes) or PTYCHOSTREAM_READ_TOKEN (reads)"
)
_session = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="A dashboard session (reads only).")


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def get_replies(request: Request) -> TTLCache[bytes | None]:
    replies: TTLCache[bytes | None] = request.app.state.replies
    return replies


async def get_images(request: Request) -> BytesCache:
    images: BytesCache = request.app.state.images
    return images


async def get_hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


async def get_redactor(request: Request) -> Redactor:
    redactor: Redactor = request.app.state.redactor
    return redactor


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RepliesDep = Annotated[TTLCache[bytes | None], Depends(get_replies)]
ImagesDep = Annotated[BytesCache, Depends(get_images)]
HubDep = Annotated[EventHub, Depends(get_hub)]
RedactorDep = Annotated[Redactor, Depends(get_redactor)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
SessionCookie = Annotated[str | None, Depends(_session)]


def token_of(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def refuse() -> HTTPException:
    """The one 401 reply."""
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
    )


async def require_write(settings: SettingsDep, credentials: Credentials) -> None:
    """Mutating calls need ``Authorization: Bearer <PTYCHOSTREAM_API_TOKEN>``."""
    if access(settings, token_of(credentials), None) < Access.WRITE:
        raise refuse()


async def require_read(settings: SettingsDep, credentials: Credentials, session: SessionCookie) -> None:
    """Reads need the API token, the read token or a dashboard session, unless ``read_access`` is open."""
    if access(settings, token_of(credentials), session) < Access.READ:
        raise refuse()


Authorized = Depends(require_write)
Readable = Depends(require_read)
