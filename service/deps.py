"""FastAPI dependencies as named types: the settings, the store, the reply cache, the bearer-token check.

All are ``async``: they only read ``app.state``, and a sync dependency would cost a thread hop per request.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.cache import TTLCache
from service.settings import Settings
from service.store import JobStore

_bearer = HTTPBearer(auto_error=False, description="PTYCHOSTREAM_API_TOKEN")


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def get_replies(request: Request) -> TTLCache[bytes | None]:
    replies: TTLCache[bytes | None] = request.app.state.replies
    return replies


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RepliesDep = Annotated[TTLCache[bytes | None], Depends(get_replies)]


async def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Mutating calls need ``Authorization: Bearer <PTYCHOSTREAM_API_TOKEN>``."""
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), settings.api_token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authorized = Depends(require_token)
