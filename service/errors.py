"""Error replies: every 4xx is ``{"detail": "<one line naming the field and the problem>"}``, validation
errors included, and the OpenAPI documents exactly that (``ErrorReply``) for every status an operation returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.schemas import ErrorReply

SHOWN_ERRORS = 5
DESCRIPTIONS = {
    400: "Bad request (e.g. a path that escapes the data root)",
    401: "Missing or wrong bearer token",
    404: "No such job",
    409: "Not possible in the job's state",
    413: "Request body too large",
    422: "Invalid input (the detail names the field)",
    503: "Too many event streams open; retry later",
}
_SOURCES = {"body", "path", "query", "header", "cookie"}


def describe(errors: Sequence[Any]) -> str:
    """Pydantic/FastAPI validation errors as one line: ``field.path: problem; ...``."""
    parts = []
    for error in errors[:SHOWN_ERRORS]:
        loc = [str(x) for x in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            parts.append(f"body: invalid JSON: {error.get('ctx', {}).get('error', error.get('msg'))}")
            continue
        field = ".".join(loc[1:] if loc and loc[0] in _SOURCES and len(loc) > 1 else loc) or "body"
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    more = len(errors) - SHOWN_ERRORS
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": describe(exc.errors())}, status.HTTP_422_UNPROCESSABLE_CONTENT)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each an ``ErrorReply``."""
    return {code: {"model": ErrorReply, "description": DESCRIPTIONS[code]} for code in codes}
