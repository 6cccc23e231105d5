"""Who may do what: the API token writes and reads, the read token and a dashboard session read.

The one place a credential is compared. A dashboard session is an HttpOnly, SameSite=Strict cookie
holding an expiry and its HMAC under a key derived from the configured tokens (changing a token ends
every session); it grants reads only, so a forged cross-site request can never write.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from enum import IntEnum

from service.settings import Settings

SESSION_COOKIE = "ptychostream_session"


class Access(IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _same(a: str, b: str | None) -> bool:
    return b is not None and secrets.compare_digest(a.encode(), b.encode())


def token_access(settings: Settings, token: str | None) -> Access:
    """What a bearer token grants."""
    if token is None:
        return Access.NONE
    if _same(token, settings.api_token):
        return Access.WRITE
    return Access.READ if _same(token, settings.read_token) else Access.NONE


def _session_key(settings: Settings) -> bytes:
    material = f"ptychostream-session\0{settings.api_token}\0{settings.read_token or ''}"
    return hashlib.sha256(material.encode()).digest()


def new_session(settings: Settings, now: float | None = None) -> str:
    """A session cookie value valid for ``settings.session_s``."""
    expiry = str(int((time.time() if now is None else now) + settings.session_s))
    return f"{expiry}.{hmac.new(_session_key(settings), expiry.encode(), hashlib.sha256).hexdigest()}"


def session_valid(settings: Settings, cookie: str | None, now: float | None = None) -> bool:
    expiry, _, mac = (cookie or "").partition(".")
    if not expiry.isdigit() or int(expiry) < (time.time() if now is None else now):
        return False
    return _same(mac, hmac.new(_session_key(settings), expiry.encode(), hashlib.sha256).hexdigest())


def access(settings: Settings, token: str | None, session: str | None) -> Access:
    """What a request with this bearer token and session cookie may do (reads are open when ``read_access``
    is open)."""
    granted = token_access(settings, token)
    if granted == Access.NONE and session_valid(settings, session):
        granted = Access.READ
    return max(granted, Access.READ) if settings.read_access == "open" else granted
