"""Dashboard sessions: trade a bearer token for an HttpOnly cookie that grants reads (EventSource and
<img> cannot send an Authorization header; a cookie they send by themselves)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from service.auth import SESSION_COOKIE, Access, new_session, token_access
from service.deps import Credentials, SettingsDep, refuse, token_of
from service.errors import responses

router = APIRouter(prefix="/api/session", tags=["session"])


@router.post("", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=responses(401))
async def login(request: Request, settings: SettingsDep, credentials: Credentials) -> Response:
    """Set a session cookie (``session_s`` long, reads only) for a holder of the API or read token."""
    if token_access(settings, token_of(credentials)) < Access.READ:
        raise refuse()
    reply = Response(status_code=status.HTTP_204_NO_CONTENT)
    reply.set_cookie(
        SESSION_COOKIE,
        new_session(settings),
        max_age=int(settings.session_s),
        path="/api",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return reply
